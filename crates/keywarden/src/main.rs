//! The `keywarden` command: run the service, or manage accounts and keys on the configured
//! store directly.

mod cli;
mod profiles;
mod scan;

use clap::Parser;

/// Every request allocates a little (headers, ids, the answer); mimalloc's per-thread
/// heaps make that cheaper than the system allocator under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    cli::init_logging(&args);
    match cli::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
