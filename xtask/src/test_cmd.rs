//! `cargo xtask test`: bring the services up, export their URLs, run the
//! workspace's tests once (one build, doctests included) and report timings.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Args;

use crate::{services, Result};

/// Arguments of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Do not start services; use whatever already answers.
    #[arg(long)]
    no_services: bool,
    /// Test only these packages (default: the whole workspace).
    #[arg(short = 'p', long = "package", value_name = "NAME")]
    packages: Vec<String>,
    /// Extra arguments for `cargo test` (after `--`).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

/// Whether we run under CI (`CI` set to anything but `false`/`0`/empty).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Run `cargo xtask test`; the exit code is `cargo test`'s.
pub fn run(root: &Path, args: &TestArgs) -> Result<ExitCode> {
    let ci = in_ci();
    let mut up = services::UpTimings::default();
    let services_started = Instant::now();
    if !args.no_services {
        match services::up(root, &[], false) {
            Ok(timings) => up = timings,
            // In CI a missing service is a failure; locally the tests that
            // need it print a skip line instead.
            Err(err) if ci => return Err(err),
            Err(err) => eprintln!(
                "xtask: warning: {err}\nxtask: continuing; tests needing those services will skip"
            ),
        }
    }
    match crate::python::ensure(root) {
        Ok(python) => {
            eprintln!("xtask: {}={}", crate::python::ENV_VAR, python.display());
            std::env::set_var(crate::python::ENV_VAR, python);
        }
        Err(err) if ci => return Err(err),
        Err(err) => eprintln!("xtask: warning: Python peer not installed: {err}"),
    }
    let services_time = services_started.elapsed();

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root).arg("test");
    if args.packages.is_empty() {
        command.arg("--workspace");
    } else {
        for package in &args.packages {
            command.args(["--package", package]);
        }
    }
    command.arg("--all-features").args(&args.cargo_args);
    for (var, url) in services::env_pairs(root) {
        eprintln!("xtask: {var}={url}");
        command.env(var, url);
    }
    if ci {
        eprintln!("xtask: CI is set: KOMBU_TEST_REQUIRE=1 (a missing server fails its tests)");
        command.env("KOMBU_TEST_REQUIRE", "1");
    }

    let limit = crate::watch::test_limit();
    eprintln!(
        "xtask: watching the services that are up, and every test (limit {} s each, \
         KOMBU_TEST_LIMIT_SECS)",
        limit.as_secs()
    );
    let tests_started = Instant::now();
    let outcome = crate::watch::run(root, command, limit)?;
    let tests_time = tests_started.elapsed();

    eprintln!("xtask: timing");
    eprintln!("  services up  {}", secs(services_time));
    if up.install > Duration::ZERO {
        eprintln!("    install    {}", secs(up.install));
    }
    if up.start > Duration::ZERO {
        eprintln!("    start      {}", secs(up.start));
    }
    eprintln!("  cargo test   {} (build + run)", secs(tests_time));
    if let Some(build) = outcome.build_time {
        eprintln!("    build      {}", secs(build));
    }
    eprintln!("  total        {}", secs(services_started.elapsed()));
    print_slowest(&outcome.binary_times);

    for dead in &outcome.dead_services {
        eprintln!("xtask: FAILED: service died during the run: {dead}");
    }
    for killed in &outcome.killed_tests {
        eprintln!("xtask: FAILED: test killed at its limit: {killed}");
    }
    if !outcome.dead_services.is_empty() || !outcome.killed_tests.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(match outcome.status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// How many of the slowest test binaries the summary names.
const SLOWEST_SHOWN: usize = 15;

/// The slowest test binaries (where the run's time goes).
fn print_slowest(times: &[(String, Duration)]) {
    if times.is_empty() {
        return;
    }
    let mut sorted: Vec<&(String, Duration)> = times.iter().collect();
    sorted.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    let total: Duration = times.iter().map(|(_, d)| *d).sum();
    eprintln!(
        "xtask: {} test binaries ran for {}; the slowest:",
        times.len(),
        secs(total).trim_start()
    );
    for (name, took) in sorted.into_iter().take(SLOWEST_SHOWN) {
        eprintln!("  {}  {name}", secs(*took));
    }
}

/// A duration as seconds with one decimal.
fn secs(d: Duration) -> String {
    format!("{:>6.1} s", d.as_secs_f64())
}
