//! The raw limits: the same broker and the same S3 server driven directly with the same client
//! crates the service uses (amqprs, rust-s3, reqwest), at the same concurrency.

use crate::procs::Services;
use crate::report::Load;
use amqprs::callbacks::{ChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{
    BasicPublishArguments, Channel, ConfirmSelectArguments, QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::Connection;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, FieldTable, FieldValue, Nack, Return};
use futures_util::StreamExt;
use s3::creds::Credentials;
use s3::{Bucket, Region};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// The bucket of the test services.
pub fn bucket(s: &Services) -> Box<Bucket> {
    let region = Region::Custom {
        region: s.s3_region.clone(),
        endpoint: s.s3_endpoint.clone(),
    };
    let credentials = Credentials::new(Some(&s.access_key), Some(&s.secret_key), None, None, None).unwrap();
    let mut bucket = Bucket::new(&s.s3_bucket, region, credentials).unwrap();
    bucket.set_path_style();
    bucket
}

/// Runs `op(client, n)` in `clients` tasks for `secs`, timing each call.
pub async fn closed_loop<F, Fut>(clients: usize, secs: f64, op: F) -> Load
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let op = op.clone();
            tokio::spawn(async move {
                let (mut done, mut errors) = (Vec::new(), 0);
                let mut n = 0;
                while Instant::now() < end {
                    let t = Instant::now();
                    if op(c, n).await {
                        done.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                    n += 1;
                }
                (done, errors)
            })
        })
        .collect();
    let mut load = Load::default();
    for t in tasks {
        let (done, errors) = t.await.unwrap();
        load.latencies.extend(done);
        load.errors += errors;
    }
    load.elapsed = start.elapsed();
    load
}

/// Routes one channel's publisher confirms to its publisher.
struct Confirms(mpsc::UnboundedSender<bool>);

#[async_trait::async_trait]
impl ChannelCallback for Confirms {
    async fn close(&mut self, _: &Channel, _: CloseChannel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, _: Ack) {
        let _ = self.0.send(true);
    }
    async fn publish_nack(&mut self, _: &Channel, _: Nack) {
        let _ = self.0.send(false);
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

/// A job row to insert before each publish: a database URL (the service's schema) and the row's
/// JSON.
pub type AlsoInsert = Option<(String, String)>;

/// Persistent publishes to a durable queue on one connection, each client on a channel of its own
/// waiting for the broker's confirm of every message before the next, for `secs`; with `also`,
/// each publish follows the insert of a job row, as a submit does them.
pub async fn confirmed_publishes(
    s: &Services,
    queue: &str,
    body: &[u8],
    (clients, secs): (usize, f64),
    also: AlsoInsert,
) -> Load {
    let also = match also {
        Some((url, doc)) => {
            let _ = meshroom_svc::jobs::Db::open(&url, 1).await.unwrap(); // migrates
            Some((crate::db::raw_pool(&url, clients).await, doc))
        }
        None => None,
    };
    let args = meshroom_svc::queue::amqp::connection_args(&s.amqp_url).unwrap();
    let connection = Connection::open(&args).await.expect("RabbitMQ answers");
    connection.register_callback(DefaultConnectionCallback).await.unwrap();
    let mut channels = Vec::new();
    for _ in 0..clients {
        let channel = connection.open_channel(None).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        channel.register_callback(Confirms(tx)).await.unwrap();
        channel.confirm_select(ConfirmSelectArguments::default()).await.unwrap();
        channels.push((channel, tokio::sync::Mutex::new(rx)));
    }
    // The same kind of queue as the service's job queues: durable, classic, with priorities.
    let mut table = FieldTable::new();
    table.insert("x-max-priority".try_into().unwrap(), FieldValue::s(2));
    table.insert("x-queue-version".try_into().unwrap(), FieldValue::s(2));
    let declare = QueueDeclareArguments::durable_client_named(queue)
        .arguments(table)
        .finish();
    channels[0].0.queue_declare(declare).await.unwrap();
    let channels = std::sync::Arc::new(channels);
    let (queue_name, body) = (queue.to_string(), body.to_vec());
    let load = closed_loop(clients, secs, move |c, n| {
        let (channels, queue, body, also) = (channels.clone(), queue_name.clone(), body.clone(), also.clone());
        async move {
            if let Some((pool, doc)) = &also {
                let id = uuid::Uuid::now_v7().as_bytes().to_vec();
                let q = sqlx::query(crate::db::INSERT)
                    .bind(id)
                    .bind(n as i64)
                    .bind(doc.as_str());
                if q.execute(pool).await.is_err() {
                    return false;
                }
            }
            let (channel, confirms) = &channels[c];
            let mut props = BasicProperties::default();
            props.with_persistence(true).with_content_type("application/json");
            if channel
                .basic_publish(props, body, BasicPublishArguments::new("", &queue))
                .await
                .is_err()
            {
                return false;
            }
            confirms.lock().await.recv().await == Some(true)
        }
    })
    .await;
    let channel = connection.open_channel(None).await.unwrap();
    let _ = channel.queue_delete(QueueDeleteArguments::new(queue)).await;
    let _ = connection.close().await;
    load
}

/// A new empty folder under `dir` for one raw run: like the worker's job folder, every file it
/// writes is a new file, never an overwrite of an earlier run's.
fn fresh(dir: &Path) -> PathBuf {
    let path = dir.join(format!("run-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&path).unwrap();
    path
}

/// GETs every URL into fresh files under `dir` with one reqwest client, `concurrency` at a time,
/// streaming; returns the seconds taken.
pub async fn http_gets(urls: &[String], dir: &Path, concurrency: usize) -> f64 {
    let client = reqwest::Client::new();
    let dir = &fresh(dir);
    let start = Instant::now();
    futures_util::stream::iter(urls.iter().enumerate())
        .map(|(i, url)| {
            let client = client.clone();
            async move {
                let mut body = client
                    .get(url)
                    .send()
                    .await
                    .unwrap()
                    .error_for_status()
                    .unwrap()
                    .bytes_stream();
                let mut file = tokio::fs::File::create(dir.join(format!("{i:04}"))).await.unwrap();
                while let Some(chunk) = body.next().await {
                    file.write_all(&chunk.unwrap()).await.unwrap();
                }
                file.flush().await.unwrap();
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    start.elapsed().as_secs_f64()
}

/// GETs every key into fresh files under `dir` with rust-s3, `concurrency` at a time, streaming;
/// returns the seconds taken.
pub async fn s3_gets(bucket: &Bucket, keys: &[String], dir: &Path, concurrency: usize) -> f64 {
    let dir = &fresh(dir);
    let start = Instant::now();
    futures_util::stream::iter(keys.iter().enumerate())
        .map(|(i, key)| async move {
            let mut file = tokio::fs::File::create(dir.join(format!("{i:04}"))).await.unwrap();
            bucket.get_object_to_writer(key, &mut file).await.unwrap();
            file.flush().await.unwrap();
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    start.elapsed().as_secs_f64()
}

/// A multipart PUT of a file with rust-s3's defaults; returns the seconds taken.
pub async fn multipart_put(bucket: &Bucket, key: &str, file: &Path) -> f64 {
    let mut f = tokio::fs::File::open(file).await.unwrap();
    let start = Instant::now();
    bucket.put_object_stream(&mut f, key).await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    let _ = bucket.delete_object(key).await;
    secs
}

/// Writes a file of `mib` MiB with the fake engine's dense.ply pattern.
pub fn big_file(path: &Path, mib: u64) -> PathBuf {
    use std::io::Write;
    let chunk: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
    }
    f.flush().unwrap();
    path.to_path_buf()
}
