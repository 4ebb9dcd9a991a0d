//! Flags of the client subcommands.

use clap::{Args, Subcommand};
use std::path::PathBuf;

/// How to reach the service (every client subcommand takes these).
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The service's address.
    #[arg(
        long,
        global = true,
        env = "MESHROOM_SVC_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub server: String,
    /// An API key (msk_...) or a bearer token (a JWT), if the service needs one.
    #[arg(
        long,
        global = true,
        env = "MESHROOM_SVC_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// How to reach the service.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Photos: files, folders (their images, recursively, in name order) or http(s) URLs.
    #[arg(required = true, value_name = "PHOTOS")]
    pub photos: Vec<String>,
    /// The preset (see GET /api/v1/pipelines) [default: the service's].
    #[arg(long)]
    pub pipeline: Option<String>,
    /// A parameter of the preset, as NAME=VALUE (repeatable), e.g. Texturing:textureSide=4096.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// `high` jobs are taken first.
    #[arg(long, value_parser = ["normal", "high"])]
    pub priority: Option<String>,
    /// JSON returned as is with the job and its webhook.
    #[arg(long, value_name = "JSON")]
    pub metadata: Option<String>,
    /// Where the service sends the signed webhook when the job ends.
    #[arg(long, value_name = "URL")]
    pub callback_url: Option<String>,
    /// Follow the job to its end, then download its results.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: the folder for the results [default: ./<job id>/].
    #[arg(long, value_name = "DIR", requires = "wait")]
    pub out: Option<PathBuf>,
}

/// `jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// How to reach the service.
    #[command(flatten)]
    pub server: ServerArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: JobsAction,
}

/// `jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsAction {
    /// The newest jobs first.
    List {
        /// Only jobs in this status (enqueued, processing, succeeded, failed, canceled).
        #[arg(long)]
        status: Option<String>,
        /// How many (1 to 100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One job, in full.
    Show {
        /// The job's id.
        id: String,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// The job's id.
        id: String,
    },
    /// Put a failed or canceled job back in the queue.
    Retry {
        /// The job's id.
        id: String,
    },
    /// Delete a job and its files.
    Delete {
        /// The job's id.
        id: String,
    },
    /// The engine log; with --follow, its new lines as they come, until the job ends.
    Logs {
        /// The job's id.
        id: String,
        /// Keep printing new lines until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Download a job's result files (all, or those named) and check their sizes.
    Download {
        /// The job's id.
        id: String,
        /// The folder [default: ./<job id>/].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Only these files.
        files: Vec<String>,
    },
    /// Follow a job to its end (exit code as for `submit --wait`), without downloading.
    Wait {
        /// The job's id.
        id: String,
    },
}
