#![doc = include_str!("../README.md")]

mod bench;
mod cli;
mod connect;
mod consume;
mod failure;
mod prometheus;
mod publish;
mod queue;
mod render;
mod transports;

use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind as ClapErrorKind;
use clap::Parser;

use cli::{Cli, Command};
use failure::{Failure, Outcome};

/// Panics print one line, never a backtrace.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("kombu: internal error: {what}{place} (please report it)");
    }));
}

async fn run(cli: Cli) -> Outcome {
    match &cli.command {
        Command::Transports(args) => transports::run(args),
        Command::Publish(args) => publish::run(args).await,
        Command::Consume(args) => consume::run(args).await,
        Command::Queue(command) => queue::run(command).await,
        Command::Bench(args) => bench::run(args).await,
    }
}

fn main() -> ExitCode {
    quiet_panics();
    kombu::install_default_transports();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            return match err.kind() {
                ClapErrorKind::DisplayHelp | ClapErrorKind::DisplayVersion => {
                    let _ = err.print();
                    ExitCode::SUCCESS
                }
                ClapErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = err.print();
                    ExitCode::from(failure::USAGE)
                }
                _ => {
                    let line = failure::clap_one_line(&err.render().to_string());
                    eprintln!("kombu: {line}");
                    ExitCode::from(failure::USAGE)
                }
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("kombu: cannot start the async runtime: {err}");
            return ExitCode::from(failure::FAILED);
        }
    };
    let result = runtime.block_on(run(cli));
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            if !message.is_empty() {
                eprintln!("kombu: {message}");
            }
            ExitCode::from(code)
        }
    }
}
