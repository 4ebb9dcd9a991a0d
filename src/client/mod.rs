//! The client subcommands (`submit`, `jobs ...`): any meshroom-svc over HTTP, from a terminal
//! or a script. Data goes to stdout, progress and messages to stderr; the exit code says how it
//! ended (see [`Exit`]).

pub mod args;
mod download;
mod follow;
mod jobs;
mod submit;

use crate::error::Code;
use crate::http::ErrorBody;
use crate::jobs::JobView;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use std::time::Duration;

pub use jobs::run as jobs;
pub use submit::run as submit;

/// How a client command ended: its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done; for a job, it succeeded (and its files arrived whole).
    Ok = 0,
    /// 1: the job failed (its code, message and log tail are on stderr).
    JobFailed = 1,
    /// 2: a usage error: bad flags, files that are not there, a request the server refused.
    Usage = 2,
    /// 3: the job was canceled.
    Canceled = 3,
    /// 4: the server could not be reached, or answered 5xx, after retries.
    Unreachable = 4,
    /// 5: authentication or a quota refused the request.
    Refused = 5,
    /// 130: interrupted (Ctrl-C); the job was left running.
    Interrupted = 130,
}

/// Why a client command stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A usage error on our side.
    #[error("{0}")]
    Usage(String),
    /// The server answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's code.
        code: Code,
        /// The API's message.
        message: String,
    },
    /// No answer, or 5xx, after retries.
    #[error("the server could not be reached: {0}")]
    Unreachable(String),
    /// A local file could not be read or written.
    #[error("{0}")]
    Io(String),
}

impl ClientError {
    /// The exit code that says what went wrong.
    pub fn exit(&self) -> Exit {
        match self {
            ClientError::Usage(_) | ClientError::Io(_) => Exit::Usage,
            ClientError::Unreachable(_) => Exit::Unreachable,
            ClientError::Api { status, .. } if [401, 403, 429].contains(status) => Exit::Refused,
            ClientError::Api { status, .. } if *status >= 500 => Exit::Unreachable,
            ClientError::Api { .. } => Exit::Usage,
        }
    }
}

/// Where the server is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Client {
    base: url::Url,
    http: reqwest::Client,
    key: Option<String>,
    /// Print JSON for scripts instead of tables.
    pub json: bool,
}

/// Attempts of a request that found no server or a 5xx, 1 s apart then doubling.
const TRIES: u32 = 4;

impl Client {
    /// A client of `server` (e.g. http://127.0.0.1:8080), with an API key or bearer token.
    pub fn new(server: &str, key: Option<String>, json: bool) -> Result<Client, ClientError> {
        let mut base = url::Url::parse(server).map_err(|e| ClientError::Usage(format!("--server {server}: {e}")))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        Ok(Client { base, http, key, json })
    }

    /// The address of an API path (`jobs/ID`).
    pub fn url(&self, path: &str) -> String {
        self.base
            .join(&format!("api/v1/{path}"))
            .map_or_else(|_| path.into(), String::from)
    }

    /// A request with the credential: a JWT as a bearer token, anything else as X-API-Key.
    pub fn request(&self, method: Method, url: &str) -> RequestBuilder {
        let req = self.http.request(method, url);
        match &self.key {
            Some(k) if k.split('.').count() == 3 && !k.starts_with("msk_") => req.bearer_auth(k),
            Some(k) => req.header("x-api-key", k),
            None => req,
        }
    }

    /// Sends what `make` builds, again after a network error or a 5xx (up to `TRIES` times);
    /// an error answer becomes `ClientError::Api`.
    pub async fn send(&self, make: impl Fn() -> RequestBuilder) -> Result<Response, ClientError> {
        let mut wait = Duration::from_secs(1);
        for attempt in 1..=TRIES {
            let last = attempt == TRIES;
            match make().send().await {
                Ok(r) if r.status().is_server_error() && !last => {}
                Ok(r) if r.status().is_success() || r.status().is_redirection() => return Ok(r),
                Ok(r) => return Err(api_error(r).await),
                Err(e) if last => return Err(ClientError::Unreachable(chain(&e))),
                Err(e) => eprintln!("{}; trying again in {} s", chain(&e), wait.as_secs()),
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        unreachable!("the last attempt returns")
    }

    /// GET a JSON answer.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        let resp = self.send(|| self.request(Method::GET, &url)).await?;
        resp.json().await.map_err(|e| ClientError::Unreachable(chain(&e)))
    }

    /// The job.
    pub async fn job(&self, id: &str) -> Result<JobView, ClientError> {
        self.get(&format!("jobs/{id}")).await
    }
}

/// The error an answer carries (the API's `{error: {message, code}}`, or its status).
async fn api_error(resp: Response) -> ClientError {
    let status = resp.status();
    match resp.json::<ErrorBody>().await {
        Ok(body) => ClientError::Api {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) if status.is_server_error() => ClientError::Unreachable(format!("HTTP {status}")),
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: if status == StatusCode::NOT_FOUND {
                Code::NotFound
            } else {
                Code::InvalidBody
            },
            message: format!("HTTP {status}"),
        },
    }
}

/// An error and its causes on one line (reqwest's own message says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

/// Whether messages may use colour and bars: stderr is a terminal and NO_COLOR is unset.
pub fn fancy() -> bool {
    console::Term::stderr().is_term() && std::env::var_os("NO_COLOR").is_none()
}

/// Prints a line on stdout; a reader that has gone (`| head`) is not an error.
fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Prints a value as JSON on stdout.
fn print_json(value: &impl serde::Serialize) {
    say(serde_json::to_string_pretty(value).unwrap_or_default());
}
