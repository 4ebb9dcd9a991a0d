use anyhow::Context;
use clap::{CommandFactory, Parser};
use meshroom_svc::cli::{Cli, Command};
use meshroom_svc::config::Config;
use std::path::{Path, PathBuf};

#[actix_web::main]
async fn main() {
    let cli = Cli::parse();
    meshroom_svc::logging::init(cli.log_format);
    // Client commands read no config file: they talk to a service, wherever it runs.
    match cli.command {
        Command::Submit(args) => exit(meshroom_svc::client::submit(args).await),
        Command::Jobs(args) => exit(meshroom_svc::client::jobs(args).await),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "meshroom-svc", &mut std::io::stdout());
            return;
        }
        Command::Man => {
            if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
            return;
        }
        _ => {}
    }
    // The message and its causes, without a backtrace: these are operator errors, not bugs.
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Ends a client command with its exit code (its error on stderr).
fn exit(outcome: Result<meshroom_svc::client::Exit, meshroom_svc::client::ClientError>) -> ! {
    let code = match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit()
        }
    };
    std::process::exit(code as i32)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let path: Option<PathBuf> = cli.config.clone().or_else(|| {
        let default = Path::new("meshroom.toml");
        default.exists().then(|| default.to_path_buf())
    });
    let mut config = Config::load(path.as_deref())?;
    let tracing;
    let running = match cli.command {
        Command::Health { url } => return health(&url).await,
        Command::Submit(_) | Command::Jobs(_) | Command::Completions { .. } | Command::Man => {
            unreachable!("handled in main")
        }
        Command::Keys(args) => {
            apply(&mut config, None, args.data_dir);
            let out = meshroom_svc::tenants::command::run(&config, args.action).await?;
            print!("{out}");
            return Ok(());
        }
        Command::AllInOne(args) => {
            tracing = meshroom_svc::trace::init("all-in-one")?;
            apply(&mut config, args.listen, args.data_dir);
            let config = Config::checked(config)?;
            let gpus = gpus(&args.gpu).await;
            meshroom_svc::roles::start_all_in_one(config, gpus).await
        }
        Command::Serve(args) => {
            tracing = meshroom_svc::trace::init("serve")?;
            apply(&mut config, args.listen, args.data_dir);
            meshroom_svc::roles::start_serve(Config::checked(config)?).await
        }
        Command::Work(args) => {
            tracing = meshroom_svc::trace::init("work")?;
            let ops = args.listen.is_some();
            apply(&mut config, args.listen, args.data_dir);
            let config = Config::checked(config)?;
            let gpus = gpus(&args.gpu).await;
            meshroom_svc::roles::start_work(config, gpus, ops).await
        }
    };
    let stopped = running.context("cannot start")?.run_until_stopped().await;
    // The spans of the last moments go out before the process ends.
    tokio::task::spawn_blocking(move || tracing.shutdown()).await?;
    stopped?;
    Ok(())
}

/// Command-line flags win over the file and the environment.
fn apply(config: &mut Config, listen: Option<String>, data_dir: Option<PathBuf>) {
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    if let Some(dir) = data_dir {
        config.server.data_dir = dir;
    }
}

async fn gpus(choice: &meshroom_svc::cli::Gpus) -> Vec<u32> {
    let gpus = choice.resolve().await;
    log::info!(
        "GPUs: {}",
        if gpus.is_empty() {
            "none (CPU pipelines only)".into()
        } else {
            format!("{gpus:?}")
        }
    );
    gpus
}

async fn health(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    let status = client.get(url).send().await?.status();
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    Ok(())
}
