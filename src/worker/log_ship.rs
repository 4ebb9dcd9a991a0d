//! Ships a running engine's log to the database, line by line about once a second, so that any
//! `serve` replica can follow it live (`GET /jobs/{id}/events?log=true`, `GET /jobs/{id}/log`).

use crate::jobs::Store;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A line longer than this is cut: a runaway engine line must not fill the database.
const MAX_LINE: usize = 2000;
/// Bytes read per pass: a burst of output catches up over a few seconds.
const MAX_PASS: u64 = 1 << 20;

/// Starts shipping the lines appended to `path` from now on; cancel the token when the engine
/// has ended, then await the task: it ships what is left first.
pub(super) fn start(store: Arc<Store>, id: Uuid, path: PathBuf) -> (CancellationToken, JoinHandle<()>) {
    let done = CancellationToken::new();
    let stop = done.clone();
    let task = tokio::spawn(async move {
        let mut next = match store.log_end(id).await {
            Ok(n) => n + 1,
            Err(e) => return log::warn!("job {id}: the live log is off: {e}"),
        };
        // A resumed job appends to the log of its earlier attempt: those lines were shipped then.
        let mut offset = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
        let mut partial = Vec::new();
        loop {
            let last = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            loop {
                let read = read_from(&path, offset).await;
                offset += read.len() as u64;
                partial.extend_from_slice(&read);
                let mut lines = take_lines(&mut partial);
                let more = read.len() as u64 == MAX_PASS;
                if last && !more && !partial.is_empty() {
                    lines.push(line_of(&std::mem::take(&mut partial)));
                }
                if !lines.is_empty() {
                    match store.log_append(id, next, &lines).await {
                        Ok(()) => next += lines.len() as i64,
                        Err(e) => log::warn!("job {id}: {} log lines not shipped: {e}", lines.len()),
                    }
                }
                if !(last && more) {
                    break;
                }
            }
            if last {
                break;
            }
        }
    });
    (done, task)
}

async fn read_from(path: &PathBuf, offset: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(mut f) = tokio::fs::File::open(path).await {
        if f.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
            let _ = f.take(MAX_PASS).read_to_end(&mut buf).await;
        }
    }
    buf
}

/// The complete lines at the front of `buf`, which keeps the incomplete rest.
fn take_lines(buf: &mut Vec<u8>) -> Vec<String> {
    let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
        return Vec::new();
    };
    let rest = buf.split_off(end + 1);
    let whole = std::mem::replace(buf, rest);
    whole[..end].split(|b| *b == b'\n').map(line_of).collect()
}

fn line_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches('\r');
    match text.char_indices().nth(MAX_LINE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_incomplete_line_for_later() {
        let mut buf = b"one\r\ntwo\nthr".to_vec();
        assert_eq!(take_lines(&mut buf), vec!["one", "two"]);
        assert_eq!(buf, b"thr");
        assert!(take_lines(&mut buf).is_empty());
        assert_eq!(line_of(&[b'x'; 3000]).chars().count(), MAX_LINE + 1);
    }

    #[tokio::test]
    async fn ships_new_lines_and_the_last_partial_one() {
        let store = Arc::new(Store::new(crate::jobs::Db::open("sqlite::memory:", 1).await.unwrap()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.log");
        std::fs::write(&path, "from an earlier attempt\n").unwrap();
        let id = Uuid::now_v7();
        let (done, task) = start(store.clone(), id, path.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::write(&path, "from an earlier attempt\n[1/3] CameraInit\nlast without newline").unwrap();
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let shipped = store.log_after(id, 0, 10).await.unwrap();
        assert_eq!(shipped, vec![(1, "[1/3] CameraInit".to_string())]);
        done.cancel();
        task.await.unwrap();
        let shipped = store.log_after(id, 1, 10).await.unwrap();
        assert_eq!(shipped, vec![(2, "last without newline".to_string())]);
    }
}
