//! The `parley-history` binary: run the service, or apply migrations and exit.

use clap::{Parser, Subcommand};
use parley_kit::config::ConfigArgs;

/// Parley's history service: the record in PostgreSQL and the history API.
#[derive(Parser)]
#[command(name = "parley-history", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending database migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Migrate) => {
            parley_kit::runtime::run_main("parley-history", cli.config, |config, _, _| async move {
                let applied = parley_history::migrate(&config).await?;
                println!("applied migrations: {applied:?}");
                Ok(())
            })
            .await
        }
        None => {
            parley_kit::runtime::run_main("parley-history", cli.config, |config, metrics, token| async move {
                parley_history::start(config, metrics, token).await?.wait().await
            })
            .await
        }
    }
}
