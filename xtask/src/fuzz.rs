//! `cargo xtask fuzz`: build the cargo-fuzz targets in `fuzz/` once, run
//! each in turn for some seconds, print the executions per target, and
//! fail on a crash naming the target and the input that crashed it.
//!
//! * cargo-fuzz [`CARGO_FUZZ_VERSION`] is taken from `PATH` when it is that
//!   version, else from `target/tools/bin`, else installed there from
//!   crates.io (`cargo install --locked`): kept with the target dir.
//! * The toolchain is the stable one, without a sanitizer (`--sanitizer
//!   none`): the code under test is safe Rust, libFuzzer's coverage
//!   guidance and its `-rss_limit_mb` work without one, and stable builds
//!   it (no `-Z` flag is needed).
//! * Targets build into `target/fuzz`; each run reads the committed seeds
//!   in `fuzz/corpus/<target>` and grows a working corpus in
//!   `target/fuzz/corpus/<target>` (the seeds stay as committed). A crash
//!   leaves its input in `fuzz/artifacts/<target>/` and libFuzzer's log in
//!   `target/fuzz/logs/<target>.log`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use crate::process::tail;
use crate::Result;

/// The cargo-fuzz release the targets are built with (it speaks to
/// `libfuzzer-sys` 0.4, pinned in `fuzz/Cargo.lock`).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// libFuzzer's memory limit per target: a decompression bomb or a length
/// taken on trust shows up as a crash, not as a machine out of memory.
const RSS_LIMIT_MB: u32 = 2048;

/// One input taking longer than this is a hang (a crash).
const INPUT_TIMEOUT_SECS: u32 = 10;

/// Arguments of `cargo xtask fuzz`.
#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds to run each target.
    #[arg(long, default_value_t = 30, value_name = "N")]
    seconds: u64,
    /// Run only this target (repeatable; default: every target in
    /// fuzz/Cargo.toml).
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
    /// Build with the dev profile: much quicker to build, slower to run
    /// (for a short smoke run such as CI's).
    #[arg(long)]
    dev: bool,
}

/// What one target's run did.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    executions: u64,
    seconds: u64,
}

/// Run `cargo xtask fuzz`.
pub fn run(root: &Path, args: &FuzzArgs) -> Result<ExitCode> {
    let fuzz_dir = root.join("fuzz");
    let all = target_names(&std::fs::read_to_string(fuzz_dir.join("Cargo.toml"))?);
    let targets = if args.targets.is_empty() {
        all.clone()
    } else {
        for name in &args.targets {
            if !all.contains(name) {
                return Err(
                    format!("no fuzz target {name:?}; there are: {}", all.join(", ")).into(),
                );
            }
        }
        args.targets.clone()
    };

    let started = Instant::now();
    let cargo_fuzz = ensure_cargo_fuzz(root)?;
    let target_dir = root.join("target").join("fuzz");
    let built = Instant::now();
    let mut build = Command::new(&cargo_fuzz);
    build
        .current_dir(&fuzz_dir)
        .args(["fuzz", "build", "--sanitizer", "none", "--target-dir"])
        .arg(&target_dir);
    if args.dev {
        build.arg("--dev");
    }
    // One build: the one target asked for, or all of them.
    if let [only] = targets.as_slice() {
        build.arg(only);
    }
    println!("xtask: building fuzz targets: {build:?}");
    let status = build
        .status()
        .map_err(|e| format!("could not run {build:?}: {e}"))?;
    if !status.success() {
        return Err(format!("building the fuzz targets failed ({status})").into());
    }
    println!(
        "xtask: fuzz targets built in {:.0} s",
        built.elapsed().as_secs_f64()
    );

    let profile = if args.dev { "debug" } else { "release" };
    let bin_dir = target_dir.join(host_triple()?).join(profile);
    let logs = target_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut outcomes = Vec::new();
    for name in &targets {
        let outcome = run_target(root, &bin_dir.join(name), name, &logs, args.seconds)?;
        println!(
            "xtask: fuzz {name:<18} {:>11} executions in {:>4} s ({}/s)",
            outcome.executions,
            outcome.seconds,
            outcome.executions / outcome.seconds.max(1)
        );
        outcomes.push((name, outcome));
    }
    let total: u64 = outcomes.iter().map(|(_, o)| o.executions).sum();
    println!("xtask: fuzz summary ({} targets, no crash)", outcomes.len());
    for (name, outcome) in &outcomes {
        println!("  {name:<18} {:>11}", outcome.executions);
    }
    println!(
        "  {:<18} {total:>11} executions, {:.0} s in all (install + build + runs)",
        "total",
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Run one target for `seconds`; an error names the target, the crashing
/// input and the log.
fn run_target(
    root: &Path,
    binary: &Path,
    name: &str,
    logs: &Path,
    seconds: u64,
) -> Result<Outcome> {
    let seeds = root.join("fuzz").join("corpus").join(name);
    let work = root.join("target").join("fuzz").join("corpus").join(name);
    let artifacts = root.join("fuzz").join("artifacts").join(name);
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&artifacts)?;
    let log = logs.join(format!("{name}.log"));
    let file = File::create(&log)?;
    let mut command = Command::new(binary);
    command
        .arg(&work)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    let started = Instant::now();
    let mut child = command.spawn().map_err(|e| {
        format!(
            "could not run fuzz target {name} ({}): {e}",
            binary.display()
        )
    })?;
    // libFuzzer stops itself after -max_total_time; the margin covers
    // loading the corpus and one slow input (-timeout).
    let deadline = started + Duration::from_secs(seconds + 60 + u64::from(INPUT_TIMEOUT_SECS));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "fuzz target {name} did not stop within {} s of its {seconds} s; log: {}\n{}",
                (deadline - started).as_secs() - seconds,
                log.display(),
                tail(&log, 20)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        let artifact = crash_artifact(&output)
            .map_or_else(|| "no input saved".to_owned(), |path| path.to_owned());
        return Err(format!(
            "fuzz target {name} crashed ({status}); input: {artifact}; log: {}\n\
             reproduce: {} {artifact}\n{}",
            log.display(),
            binary.display(),
            tail(&log, 30)
        )
        .into());
    }
    Ok(Outcome {
        executions: executions(&output).unwrap_or(0),
        seconds: started.elapsed().as_secs(),
    })
}

/// The cargo-fuzz to run: on `PATH` if it is [`CARGO_FUZZ_VERSION`], else
/// in `target/tools/bin`, installed there when missing.
fn ensure_cargo_fuzz(root: &Path) -> Result<PathBuf> {
    let tools = root.join("target").join("tools");
    let local = tools.join("bin").join("cargo-fuzz");
    for candidate in [PathBuf::from("cargo-fuzz"), local.clone()] {
        if version_of(&candidate).is_some_and(|v| v == CARGO_FUZZ_VERSION) {
            return Ok(candidate);
        }
    }
    let started = Instant::now();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut install = Command::new(cargo);
    install
        .args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
            "--root",
        ])
        .arg(&tools)
        // Its own build dir, not the workspace's shared one.
        .env_remove("CARGO_TARGET_DIR");
    println!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}: {install:?}");
    let status = install
        .status()
        .map_err(|e| format!("could not run {install:?}: {e}"))?;
    if !status.success() {
        return Err(format!("installing cargo-fuzz {CARGO_FUZZ_VERSION} failed ({status})").into());
    }
    println!(
        "xtask: cargo-fuzz installed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(local)
}

/// `cargo-fuzz --version` of `program` (`0.13.2`), `None` when it does not run.
fn version_of(program: &Path) -> Option<String> {
    let output = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    text.split_whitespace().nth(1).map(str::to_owned)
}

/// The host's target triple (`x86_64-unknown-linux-gnu`): cargo-fuzz
/// builds for it, into `<target-dir>/<triple>/<profile>`.
fn host_triple() -> Result<String> {
    let output = Command::new("rustc").arg("-vV").output()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| "`rustc -vV` names no host triple".into())
}

/// The `[[bin]]` names of fuzz/Cargo.toml, in order.
fn target_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(value) = line.strip_prefix("name") {
                let value = value.trim_start().trim_start_matches('=').trim();
                names.push(value.trim_matches('"').to_owned());
            }
        }
    }
    names
}

/// libFuzzer's `stat::number_of_executed_units` (from `-print_final_stats`).
fn executions(log: &str) -> Option<u64> {
    log.lines()
        .find_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
}

/// The path of the input libFuzzer saved on a crash.
fn crash_artifact(log: &str) -> Option<&str> {
    log.lines()
        .rev()
        .find_map(|line| line.split_once("Test unit written to "))
        .map(|(_, path)| path.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_bins_of_the_manifest() {
        let manifest = "[package]\nname = \"kombu-fuzz\"\n\n[[bin]]\nname = \"url\"\npath = \"u.rs\"\n\n[[bin]]\nname=\"envelope\"\n";
        assert_eq!(target_names(manifest), ["url", "envelope"]);
    }

    #[test]
    fn the_committed_manifest_names_every_target_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let names = target_names(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap());
        for name in &names {
            assert!(
                root.join("fuzz_targets")
                    .join(format!("{name}.rs"))
                    .is_file(),
                "{name}"
            );
            assert!(root.join("corpus").join(name).is_dir(), "seeds of {name}");
        }
        assert!(names.len() >= 6, "{names:?}");
    }

    #[test]
    fn reads_libfuzzer_output() {
        let log = "#2\tINITED cov: 10\nDone 651323 runs in 9 second(s)\n\
                   stat::number_of_executed_units: 651323\nstat::peak_rss_mb: 41\n";
        assert_eq!(executions(log), Some(651323));
        let crash = "==1== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='/x/'; Test unit written to /x/crash-d756\nBase64: KCw=\n";
        assert_eq!(crash_artifact(crash), Some("/x/crash-d756"));
        assert_eq!(crash_artifact(log), None);
    }

    /// A target that crashes: the error names it, the saved input and the
    /// log (a script stands in for the libFuzzer binary).
    #[test]
    fn a_crash_names_the_target_and_the_input() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("xtask-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let binary = dir.join("fake_target");
        std::fs::write(
            &binary,
            "#!/bin/sh\necho 'ERROR: libFuzzer: deadly signal' >&2\n\
             echo 'Test unit written to /x/crash-d756' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = run_target(&dir, &binary, "fake_target", &dir, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fuzz target fake_target crashed"), "{err}");
        assert!(err.contains("input: /x/crash-d756"), "{err}");
        assert!(err.contains("fake_target.log"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
