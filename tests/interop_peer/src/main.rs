//! interop-peer: a stand-in for a reference Lloom node (rust-libp2p 0.56), used
//! by lloom-executor's tests to prove wire interoperability. Every event is one
//! JSON object per line on stdout; logs go to stderr (RUST_LOG).
//! Exit codes: 0 success; 1 some request failed or got an error/invalid answer;
//! 2 setup, discovery or overall timeout failure.

mod client;
mod executor;
mod net;
mod sign;
mod types;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "interop-peer", about = "Reference-style Lloom peer for interop tests")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Dial a node, discover its executor and send LLM requests to it
    Client(client::ClientArgs),
    /// Serve as a minimal echo executor
    Executor(executor::ExecutorArgs),
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let code = match Cli::parse().mode {
        Mode::Client(a) => client::run(a).await,
        Mode::Executor(a) => executor::run(a).await,
    };
    std::process::exit(code);
}
