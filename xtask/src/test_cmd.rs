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
    /// Run the tests with `cargo test` even where cargo-nextest is installed.
    #[arg(long)]
    cargo_test: bool,
    /// Extra arguments for `cargo test` (after `--`; they imply --cargo-test).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

/// Whether we run under CI (`CI` set to anything but `false`/`0`/empty).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Run `cargo xtask test`; it fails when a test run failed.
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

    let env = services::env_pairs(root);
    for (var, url) in &env {
        eprintln!("xtask: {var}={url}");
    }
    if ci {
        eprintln!("xtask: CI is set: KOMBU_TEST_REQUIRE=1 (a missing server fails its tests)");
    }
    let runner = Runner::choose(args);
    let limit = crate::watch::test_limit();
    eprintln!("xtask: running the tests with {}", runner.describe(limit));
    let tests_started = Instant::now();
    let mut outcomes = Vec::new();
    for command in runner.commands(args) {
        let mut command = command;
        command.current_dir(root);
        command.envs(env.iter().map(|(var, url)| (var, url)));
        if ci {
            command.env("KOMBU_TEST_REQUIRE", "1");
        }
        outcomes.push(crate::watch::run(root, command, limit)?);
    }
    let tests_time = tests_started.elapsed();
    let outcome = crate::watch::Outcome::merge(outcomes);

    eprintln!("xtask: timing");
    eprintln!("  services up  {}", secs(services_time));
    if up.install > Duration::ZERO {
        eprintln!("    install    {}", secs(up.install));
    }
    if up.start > Duration::ZERO {
        eprintln!("    start      {}", secs(up.start));
    }
    eprintln!("  tests        {} (build + run)", secs(tests_time));
    if let Some(build) = outcome.build_time {
        eprintln!("    build      {}", secs(build));
    }
    eprintln!("  total        {}", secs(services_started.elapsed()));
    print_slowest(&outcome.binary_times, "test binaries (and doctests)");
    print_slowest(&outcome.test_times, "tests");

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

/// The filter of the tests that must run alone (they restart the
/// machine's shared RabbitMQ), after the others.
const EXCLUSIVE: &str = "package(kombu-amqp) & binary(restart)";

/// What runs the tests.
enum Runner {
    /// cargo nextest (.config/nextest.toml): every test binary's tests in
    /// one pool, then the exclusive ones, then the doctests with cargo test.
    Nextest,
    /// cargo test: one test binary after another (libtest's threads within
    /// each); extra arguments after `--` go to it.
    CargoTest,
}

impl Runner {
    /// nextest when it is installed and no `cargo test` arguments were given.
    fn choose(args: &TestArgs) -> Runner {
        if args.cargo_test || !args.cargo_args.is_empty() {
            return Runner::CargoTest;
        }
        let nextest = Command::new(cargo())
            .args(["nextest", "--version"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if nextest {
            Runner::Nextest
        } else {
            eprintln!("xtask: cargo-nextest is not installed: running the tests with cargo test");
            Runner::CargoTest
        }
    }

    fn describe(&self, limit: Duration) -> String {
        match self {
            Runner::Nextest => "cargo nextest (.config/nextest.toml: 4 at a time, \
                                killed after 240 s), then the doctests"
                .into(),
            Runner::CargoTest => format!(
                "cargo test (each test killed after {} s, KOMBU_TEST_LIMIT_SECS)",
                limit.as_secs()
            ),
        }
    }

    /// The commands to run, in order (each is run even if one before failed).
    fn commands(&self, args: &TestArgs) -> Vec<Command> {
        let select = |command: &mut Command| {
            if args.packages.is_empty() {
                command.arg("--workspace");
            } else {
                for package in &args.packages {
                    command.args(["--package", package]);
                }
            }
            command.arg("--all-features");
        };
        match self {
            Runner::Nextest => {
                let mut pool = Command::new(cargo());
                pool.args(["nextest", "run"]);
                select(&mut pool);
                pool.args(["--no-tests", "pass", "-E", &format!("not ({EXCLUSIVE})")]);
                let mut alone = Command::new(cargo());
                alone.args(["nextest", "run"]);
                select(&mut alone);
                alone.args(["--no-tests", "pass", "--test-threads", "1", "-E", EXCLUSIVE]);
                let mut doc = Command::new(cargo());
                doc.arg("test");
                select(&mut doc);
                doc.arg("--doc");
                vec![pool, alone, doc]
            }
            Runner::CargoTest => {
                let mut command = Command::new(cargo());
                command.arg("test");
                select(&mut command);
                command.args(&args.cargo_args);
                vec![command]
            }
        }
    }
}

/// The cargo that runs xtask.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// How many of the slowest tests (or test binaries) the summary names.
const SLOWEST_SHOWN: usize = 15;

/// The slowest of `times` (where the run's time goes).
fn print_slowest(times: &[(String, Duration)], what: &str) {
    if times.is_empty() {
        return;
    }
    let mut sorted: Vec<&(String, Duration)> = times.iter().collect();
    sorted.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    let total: Duration = times.iter().map(|(_, d)| *d).sum();
    eprintln!(
        "xtask: {} {what} ran for {} in all; the slowest:",
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
