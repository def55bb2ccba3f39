//! `cargo xtask`: project automation for kombu-rs.
//!
//! * `cargo xtask services up|down|status|env [NAME...]` installs, starts,
//!   stops and describes the brokers the integration tests run against
//!   (natively, or with Docker Compose when a Docker engine answers).
//! * `cargo xtask test [--no-services] [-p NAME] [-- ARGS]` brings every
//!   service up, exports `KOMBU_TEST_<NAME>_URL` and runs the workspace tests.
//! * `cargo xtask python` installs the Python kombu 5.7 peer for interop tests.
//! * `cargo xtask bench [--quick] [--only NAMES] ...` runs the same workload
//!   through `kombu bench`, raw-client baselines and Python kombu, and writes
//!   `docs/benchmarks.md` (+ `.svg`, `.json`).
//! * `cargo xtask fuzz [--seconds N] [--target NAME]` builds the cargo-fuzz
//!   targets in `fuzz/` and runs each for N seconds (default 30).
//!
//! See `docs/development.md` for the full story.

mod bench;
mod docker;
mod fuzz;
mod group;
mod install;
mod process;
mod python;
mod resp;
mod services;
mod state;
mod test_cmd;
mod tls;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The error type of every xtask command: a message for a person.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// Result alias used throughout the xtask.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Project automation for kombu-rs.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Install, start, stop and describe the integration services.
    #[command(subcommand)]
    Services(ServicesCommand),
    /// Bring the services up, export their URLs and run the workspace tests.
    Test(test_cmd::TestArgs),
    /// Install (if missing) the Python kombu 5.7 venv used by interop tests
    /// and print its interpreter's path.
    Python,
    /// Benchmark kombu-rs against raw clients and Python kombu (interleaved
    /// rounds, medians) and write docs/benchmarks.md, .svg and .json.
    Bench(bench::BenchArgs),
    /// Build the fuzz targets in fuzz/ (installing cargo-fuzz if missing)
    /// and run each in turn; fails on a crash, naming the saved input.
    Fuzz(fuzz::FuzzArgs),
}

/// `cargo xtask services ...`
#[derive(Debug, Subcommand)]
enum ServicesCommand {
    /// Install (if missing) and start the named services (default: all).
    Up {
        /// Services to start: rabbitmq, redis, redis-sentinel, redis-cluster,
        /// rabbitmq-cluster, rabbitmq-tls, redis-tls, beanstalkd, sqs,
        /// mongodb, couchdb.
        names: Vec<String>,
        /// Use the native recipes even when a Docker engine answers.
        #[arg(long)]
        native: bool,
    },
    /// Stop the named services (default: all), but only those `up` started.
    Down {
        /// Services to stop (default: all that `up` started).
        names: Vec<String>,
    },
    /// Print a table: name, port, up/down, started by, log file.
    Status,
    /// Print shell-sourceable `export KOMBU_TEST_<NAME>_URL=...` lines for
    /// the services that are up.
    Env,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = match cli.command {
        Command::Services(ServicesCommand::Up { names, native }) => {
            services::up(&root, &names, native).map(|_| ExitCode::SUCCESS)
        }
        Command::Services(ServicesCommand::Down { names }) => {
            services::down(&root, &names).map(|()| ExitCode::SUCCESS)
        }
        Command::Services(ServicesCommand::Status) => {
            services::status(&root);
            Ok(ExitCode::SUCCESS)
        }
        Command::Services(ServicesCommand::Env) => {
            services::print_env(&root);
            Ok(ExitCode::SUCCESS)
        }
        Command::Test(args) => test_cmd::run(&root, &args),
        Command::Bench(args) => bench::run(&root, &args),
        Command::Fuzz(args) => fuzz::run(&root, &args),
        Command::Python => python::ensure(&root).map(|path| {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's folder.
///
/// `KOMBU_XTASK_ROOT` overrides it (useful when building the xtask from a
/// copy of the workspace).
fn workspace_root() -> PathBuf {
    if let Some(root) = std::env::var_os("KOMBU_XTASK_ROOT") {
        return PathBuf::from(root);
    }
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}
