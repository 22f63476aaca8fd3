//! The `parley-notification` binary: configuration, telemetry, run until SIGTERM, drain.

use clap::Parser;
use parley_kit::config::ConfigArgs;

/// Parley's notification service: operator desk sessions and replies.
#[derive(Parser)]
#[command(name = "parley-notification", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    parley_kit::runtime::run_main("parley-notification", cli.config, |config, metrics, token| async move {
        parley_notification::start(config, metrics, token).await?.wait().await
    })
    .await
}
