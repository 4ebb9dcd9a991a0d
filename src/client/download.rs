//! Downloading a job's result files into a folder, with a progress bar, checking each size.

use super::{chain, Client, ClientError};
use crate::jobs::JobView;
use futures_util::StreamExt;
use reqwest::Method;
use std::path::{Component, Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// Attempts per file (a connection lost mid-file starts the file again).
const TRIES: u32 = 3;

/// Downloads the job's results (all, or those in `only`) into `out`; the paths written.
pub async fn results(client: &Client, job: &JobView, out: &Path, only: &[String]) -> Result<Vec<PathBuf>, ClientError> {
    let wanted: Vec<_> = job
        .results
        .iter()
        .filter(|r| only.is_empty() || only.contains(&r.name))
        .collect();
    if let Some(missing) = only.iter().find(|n| !job.results.iter().any(|r| &r.name == *n)) {
        return Err(ClientError::Usage(format!(
            "job {} has no result file '{missing}'",
            job.id
        )));
    }
    let total = wanted.iter().map(|r| r.size).sum();
    let bar = super::submit::bar(total, "downloading");
    let mut written = Vec::new();
    for r in wanted {
        let path = out.join(safe(&r.name)?);
        let url = client.url(&format!("jobs/{}/files/{}", job.id, encode(&r.name)));
        let start = bar.position();
        let mut attempt = 1;
        loop {
            bar.set_position(start);
            match fetch(client, &url, &path, &bar).await {
                Ok(n) if n == r.size => break,
                Ok(n) if attempt >= TRIES => {
                    return Err(ClientError::Unreachable(format!(
                        "{}: {n} of {} bytes arrived",
                        r.name, r.size
                    )));
                }
                Err(e @ (ClientError::Io(_) | ClientError::Api { .. })) => return Err(e),
                Err(e) if attempt >= TRIES => return Err(e),
                _ => attempt += 1,
            }
        }
        written.push(path);
    }
    bar.finish_and_clear();
    eprintln!("{} files in {}", written.len(), out.display());
    Ok(written)
}

/// One file to `path`; the bytes written.
async fn fetch(client: &Client, url: &str, path: &Path, bar: &indicatif::ProgressBar) -> Result<u64, ClientError> {
    let resp = client.send(|| client.request(Method::GET, url)).await?;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(|e| io(dir, e))?;
    }
    let mut file = tokio::fs::File::create(path).await.map_err(|e| io(path, e))?;
    let mut body = resp.bytes_stream();
    let mut n = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ClientError::Unreachable(chain(&e)))?;
        file.write_all(&chunk).await.map_err(|e| io(path, e))?;
        n += chunk.len() as u64;
        bar.inc(chunk.len() as u64);
    }
    file.flush().await.map_err(|e| io(path, e))?;
    Ok(n)
}

fn io(path: &Path, e: std::io::Error) -> ClientError {
    ClientError::Io(format!("{}: {e}", path.display()))
}

/// A result name as a relative path that stays inside the folder (names come from the server).
fn safe(name: &str) -> Result<PathBuf, ClientError> {
    let path = PathBuf::from(name);
    let inside = path.components().all(|c| matches!(c, Component::Normal(_)));
    match inside && !name.is_empty() {
        true => Ok(path),
        false => Err(ClientError::Unreachable(format!("the server named a result '{name}'"))),
    }
}

/// Each segment of a result name, percent-encoded for a URL path.
fn encode(name: &str) -> String {
    name.split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    #[test]
    fn result_names_stay_inside_the_folder() {
        assert!(super::safe("sparse/images.txt").is_ok());
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(super::safe(bad).is_err(), "{bad}");
        }
        assert_eq!(super::encode("sparse/a b.txt"), "sparse/a%20b%2Etxt");
    }
}
