//! The `parley-ingest` binary: configuration, telemetry, run until SIGTERM, drain.

use clap::Parser;
use parley_kit::config::ConfigArgs;

/// Parley's ingest service: channel edges, customer messages in.
#[derive(Parser)]
#[command(name = "parley-ingest", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    parley_kit::runtime::run_main("parley-ingest", cli.config, |config, metrics, token| async move {
        parley_ingest::start(config, metrics, token).await?.wait().await
    })
    .await
}
