//! The `parley-routing` binary: configuration, telemetry, run until SIGTERM, drain.

use clap::Parser;
use parley_kit::config::ConfigArgs;

/// Parley's routing service: conversations, presence, assignment and the admin API.
#[derive(Parser)]
#[command(name = "parley-routing", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    parley_kit::runtime::run_main("parley-routing", cli.config, |config, metrics, token| async move {
        parley_routing::start(config, metrics, token).await?.wait().await
    })
    .await
}
