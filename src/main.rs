use anyhow::Context;
use clap::Parser;
use meshroom_svc::cli::{Cli, Command};
use meshroom_svc::config::Config;
use std::path::{Path, PathBuf};

#[actix_web::main]
async fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    // The message and its causes, without a backtrace: these are operator errors, not bugs.
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let path: Option<PathBuf> = cli.config.clone().or_else(|| {
        let default = Path::new("meshroom.toml");
        default.exists().then(|| default.to_path_buf())
    });
    let mut config = Config::load(path.as_deref())?;
    match cli.command {
        Command::AllInOne(args) => {
            if let Some(listen) = args.listen {
                config.server.listen = listen;
            }
            if let Some(dir) = args.data_dir {
                config.server.data_dir = dir;
            }
            let config = Config::checked(config)?;
            let gpus = args.gpu.resolve().await;
            log::info!(
                "GPUs: {}",
                if gpus.is_empty() {
                    "none (CPU pipelines only)".into()
                } else {
                    format!("{gpus:?}")
                }
            );
            let running = meshroom_svc::app::start_all_in_one(config, gpus)
                .await
                .context("cannot start")?;
            running.run_until_stopped().await?;
        }
        Command::Serve(_) | Command::Work(_) => anyhow::bail!(
            "distributed mode (serve and work over RabbitMQ and S3) is not in this version yet; \
             run `meshroom-svc all-in-one`"
        ),
    }
    Ok(())
}
