//! Command line: global options and one subcommand per role.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// meshroom-svc: photogrammetry jobs over HTTP. Photos in, 3D models out, with Meshroom.
///
/// Settings come from the config file, then MESHROOM_SVC_<SECTION>_<KEY> environment variables,
/// then these flags. Secrets come from the environment only: MESHROOM_SVC_API_KEYS
/// (comma-separated) and MESHROOM_SVC_WEBHOOK_SECRET (whsec_...). Logs: RUST_LOG=info|debug.
///
/// Traces (OpenTelemetry, OTLP over HTTP) are exported when OTEL_EXPORTER_OTLP_ENDPOINT is set
/// (e.g. http://127.0.0.1:4318), with OTEL_SERVICE_NAME and OTEL_TRACES_SAMPLER if given.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub struct Cli {
    /// Config file (TOML). Default: ./meshroom.toml if it exists, else built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log lines: human, or json (one object per line: time, level, target, message, job_id,
    /// request_id, trace_id) for log shippers.
    #[arg(long, global = true, value_enum, default_value_t, env = "MESHROOM_SVC_LOG_FORMAT")]
    pub log_format: crate::logging::LogFormat,
    /// The role to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Roles.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API only (distributed mode: needs RabbitMQ and S3).
    Serve(ServeArgs),
    /// Run jobs on this node's GPUs, taken from RabbitMQ (distributed mode).
    Work(WorkArgs),
    /// API and worker in one process, with an in-process queue and local storage: nothing else to run.
    AllInOne(AllInOneArgs),
    /// Manage API keys in the job database the config names (MESHROOM_SVC_DATABASE_URL, else
    /// all-in-one's meshroom.db in the data folder). Keys take effect on running services within
    /// 5 seconds.
    Keys(KeysArgs),
    /// Exit 0 if URL answers 2xx within 5 s (a container health check without curl).
    Health {
        /// e.g. http://127.0.0.1:8080/ready
        url: String,
    },
    /// Submit photos (files, folders, URLs) as a job; prints its id alone on stdout. With
    /// --wait, follows it and downloads the results. Exit codes: 0 succeeded, 1 the job failed,
    /// 2 usage error, 3 canceled, 4 server unreachable or 5xx after retries, 5 authentication or
    /// quota refused, 130 interrupted (the job left running).
    Submit(crate::client::args::SubmitArgs),
    /// List, show, cancel, retry, delete, follow and download jobs (exit codes as for submit).
    Jobs(crate::client::args::JobsArgs),
    /// Print a shell completion script: `meshroom-svc completions bash > /etc/bash_completion.d/meshroom-svc`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `meshroom-svc man | man -l -`.
    Man,
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: server.listen, 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Folder for job state, files and working folders [default: server.data_dir, ./data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Flags of `work`.
#[derive(Debug, Args)]
pub struct WorkArgs {
    /// GPUs to use, one job at a time on each: `0`, `0,1`, `none` (one CPU job at a time), or
    /// `auto` (those nvidia-smi lists). Each run is pinned with CUDA_VISIBLE_DEVICES.
    #[arg(long, value_name = "LIST", default_value = "auto", value_parser = parse_gpus)]
    pub gpu: Gpus,
    /// Folder for working folders [default: server.data_dir, ./data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Also serve /health, /ready and /metrics on this address (no job API); off by default.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
}

/// Flags of `all-in-one`.
#[derive(Debug, Args)]
pub struct AllInOneArgs {
    /// Address to listen on [default: server.listen, 127.0.0.1:8080]. Anything but loopback
    /// needs MESHROOM_SVC_API_KEYS.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Folder for job state, files and working folders [default: server.data_dir, ./data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// GPUs to use, as for `work`. Without any, the default pipeline is `draft` and pipelines
    /// that need a GPU are refused at submit.
    #[arg(long, value_name = "LIST", default_value = "auto", value_parser = parse_gpus)]
    pub gpu: Gpus,
}

/// Flags of `keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Folder whose meshroom.db holds the keys, without MESHROOM_SVC_DATABASE_URL [default:
    /// server.data_dir, ./data].
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub action: KeysAction,
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Make a key. Prints its record, then the key itself as the last line of stdout: it is
    /// shown once, and only its hash is stored.
    Create {
        /// The tenant it acts for (a-z, 0-9, '-', '_'; the jobs of a tenant are its own).
        #[arg(long)]
        tenant: String,
        /// read: its tenant's jobs; submit: also submit, cancel, retry, delete; admin: every tenant.
        #[arg(long, value_enum, default_value = "submit")]
        role: crate::tenants::Role,
        /// A label for people, e.g. who holds the key.
        #[arg(long, default_value = "")]
        name: String,
        /// Stops working after this long, e.g. 90d, 12h [default: never].
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// List every key (never the keys themselves).
    List {
        /// As JSON, one array.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id (the part after msk_, as `keys list` shows).
    Revoke {
        /// The key's id.
        id: String,
    },
}

/// A `--gpu` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gpus {
    /// Whatever nvidia-smi lists.
    Auto,
    /// These indices; empty means CPU only.
    List(Vec<u32>),
}

/// Parses `auto`, `none`, or a comma-separated list of GPU indices.
pub fn parse_gpus(s: &str) -> Result<Gpus, String> {
    match s.trim() {
        "auto" => Ok(Gpus::Auto),
        "none" => Ok(Gpus::List(Vec::new())),
        list => {
            let mut gpus: Vec<u32> = list
                .split(',')
                .map(|g| {
                    g.trim()
                        .parse()
                        .map_err(|_| format!("'{g}' is not a GPU index; use 0, 0,1, none or auto"))
                })
                .collect::<Result<_, _>>()?;
            gpus.sort_unstable();
            gpus.dedup();
            Ok(Gpus::List(gpus))
        }
    }
}

impl Gpus {
    /// The GPU indices, asking nvidia-smi for `auto`.
    pub async fn resolve(&self) -> Vec<u32> {
        match self {
            Gpus::Auto => crate::process::list_gpus().await,
            Gpus::List(l) => l.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn gpu_lists() {
        assert_eq!(parse_gpus("auto"), Ok(Gpus::Auto));
        assert_eq!(parse_gpus("none"), Ok(Gpus::List(vec![])));
        assert_eq!(parse_gpus("1,0,1"), Ok(Gpus::List(vec![0, 1])));
        assert!(parse_gpus("x").is_err());
        assert!(parse_gpus("").is_err());
    }
}
