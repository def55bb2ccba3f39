//! Watching a test run: `cargo test`'s output passes through unchanged
//! while two guards look on.
//!
//! * **Services.** Every service that answered when the run began is
//!   checked every 2 s: one `services up` started must keep its process
//!   (a crash is seen at once); any service must answer on its port (a
//!   port that stays shut for 30 s counts as dead; the grace covers the
//!   RabbitMQ restart test). A dead service is reported at once, with the
//!   tail of its log, and again in the summary; the run then fails even if
//!   the tests passed.
//! * **Tests.** libtest says when a test has run over 60 s. One that is
//!   still running after the per-test limit (`KOMBU_TEST_LIMIT_SECS`,
//!   default [`DEFAULT_TEST_LIMIT`]) has its test binary killed, so the run
//!   fails naming it instead of hanging until CI's own limit.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::process;
use crate::services::{Service, SERVICES};
use crate::state::{Mode, Proc, State};
use crate::Result;

/// How long one test may run before its binary is killed.
pub const DEFAULT_TEST_LIMIT: Duration = Duration::from_secs(240);
/// How often the services are checked.
const SERVICE_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long a port may stay shut before its service counts as dead.
const PORT_GRACE: Duration = Duration::from_secs(30);
/// Log lines shown for a dead service.
const TAIL_LINES: usize = 25;

/// What happened during a watched run.
#[derive(Debug)]
pub struct Outcome {
    /// `cargo test`'s exit status.
    pub status: ExitStatus,
    /// Services that died, each with what was seen.
    pub dead_services: Vec<String>,
    /// Tests whose binary was killed for running past the limit.
    pub killed_tests: Vec<String>,
    /// How long the build took (until cargo's `Finished` line).
    pub build_time: Option<Duration>,
    /// How long each test binary (or crate's doctests) ran, in run order
    /// (cargo test).
    pub binary_times: Vec<(String, Duration)>,
    /// How long each test ran, as cargo nextest reported it.
    pub test_times: Vec<(String, Duration)>,
}

impl Outcome {
    /// The outcomes of runs one after another, as one: it fails if one
    /// did (the status is the first failure's); the build time is the
    /// first run's.
    pub fn merge(outcomes: Vec<Outcome>) -> Outcome {
        let mut outcomes = outcomes.into_iter();
        let mut merged = outcomes.next().expect("at least one run");
        for next in outcomes {
            if merged.status.success() {
                merged.status = next.status;
            }
            merged.dead_services.extend(next.dead_services);
            merged.killed_tests.extend(next.killed_tests);
            merged.binary_times.extend(next.binary_times);
            merged.test_times.extend(next.test_times);
        }
        merged
    }
}

/// The per-test limit: `KOMBU_TEST_LIMIT_SECS` or [`DEFAULT_TEST_LIMIT`].
pub fn test_limit() -> Duration {
    std::env::var("KOMBU_TEST_LIMIT_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(DEFAULT_TEST_LIMIT, Duration::from_secs)
}

/// One line of the child's output.
enum Event {
    Out(String),
    Err(String),
}

/// Run `command` (a `cargo test`), pass its output through, and watch the
/// services that are up now and the tests it runs.
pub fn run(root: &Path, mut command: Command, limit: Duration) -> Result<Outcome> {
    let mut services = ServiceWatch::new(root);
    let mut tests = TestWatch::new(root, limit);
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run cargo test: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
            {
                let _ = tx.send(Event::Out(line));
            }
        }));
    }
    if let Some(stderr) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stderr)
                .lines()
                .map_while(std::result::Result::ok)
            {
                let _ = tx.send(Event::Err(line));
            }
        }));
    }
    drop(tx);

    let mut last_service_check = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(Event::Out(line)) => {
                println!("{line}");
                tests.saw(&line);
            }
            Ok(Event::Err(line)) => {
                eprintln!("{line}");
                tests.saw(&line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Both pipes closed: cargo is done (or about to be).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if last_service_check.elapsed() >= SERVICE_CHECK_EVERY {
            last_service_check = Instant::now();
            services.check();
        }
        tests.enforce();
    }
    for reader in readers {
        let _ = reader.join();
    }
    let _ = std::io::stdout().flush();
    let status = child
        .wait()
        .map_err(|e| format!("could not wait for cargo test: {e}"))?;
    services.check();
    tests.timings.finish();
    Ok(Outcome {
        status,
        dead_services: services.dead,
        killed_tests: tests.killed,
        build_time: tests.timings.build_done.map(|at| at - started),
        binary_times: tests.timings.binaries,
        test_times: tests.timings.tests,
    })
}

/// How a service is known to be alive.
struct Watched {
    service: &'static Service,
    /// The processes `services up` started, if it did (a group: every member).
    processes: Vec<Proc>,
    log: PathBuf,
    /// Since when the port has not answered.
    shut_since: Option<Instant>,
    reported: bool,
}

struct ServiceWatch {
    watched: Vec<Watched>,
    started: Instant,
    dead: Vec<String>,
}

impl ServiceWatch {
    /// Every service that answers now.
    fn new(root: &Path) -> Self {
        let watched = SERVICES
            .iter()
            .filter(|s| process::port_answers(s.port))
            .map(|service| {
                let state =
                    State::load(root, service).filter(|st| st.mode == Mode::Native && st.is_live());
                Watched {
                    service,
                    processes: state
                        .as_ref()
                        .map(|st| st.processes.clone())
                        .unwrap_or_default(),
                    log: state
                        .map(|st| st.processes.first().map_or(st.log, |p| p.log.clone()))
                        .unwrap_or_else(|| crate::services::log_path(root, service)),
                    shut_since: None,
                    reported: false,
                }
            })
            .collect();
        ServiceWatch {
            watched,
            started: Instant::now(),
            dead: Vec::new(),
        }
    }

    fn check(&mut self) {
        let now = Instant::now();
        for w in self.watched.iter_mut().filter(|w| !w.reported) {
            let exited = w.processes.iter().find(|p| !p.is_live());
            let why = match exited {
                Some(p) if w.service.members.is_empty() => {
                    Some(format!("its process (pid {}) exited", p.pid))
                }
                Some(p) => {
                    w.log = p.log.clone();
                    Some(format!("its member {} (pid {}) exited", p.name, p.pid))
                }
                _ if process::port_answers(w.service.port) => {
                    w.shut_since = None;
                    None
                }
                _ => {
                    let since = *w.shut_since.get_or_insert(now);
                    (now.duration_since(since) >= PORT_GRACE).then(|| {
                        format!(
                            "port {} has not answered for {} s",
                            w.service.port,
                            PORT_GRACE.as_secs()
                        )
                    })
                }
            };
            let Some(why) = why else { continue };
            w.reported = true;
            let at = self.started.elapsed().as_secs();
            eprintln!(
                "\nxtask: SERVICE DIED: {} ({why}, {at} s into the test run); its tests fail \
                 from here on. Last lines of {}:\n{}",
                w.service.name,
                w.log.display(),
                process::tail(&w.log, TAIL_LINES)
            );
            self.dead.push(format!(
                "{}: {why}, {at} s into the run (log: {})",
                w.service.name,
                w.log.display()
            ));
        }
    }
}

/// The tests libtest said were slow, and the binary running them.
struct TestWatch {
    root: PathBuf,
    limit: Duration,
    /// The test binary cargo runs now (from its `Running ...` line).
    binary: Option<PathBuf>,
    /// Slow tests: name -> (binary, when it started).
    slow: HashMap<String, (Option<PathBuf>, Instant)>,
    killed: Vec<String>,
    timings: Timings,
}

/// When the build ended and how long each test binary ran.
#[derive(Default)]
struct Timings {
    build_done: Option<Instant>,
    /// The binary running now: its name and start.
    current: Option<(String, Instant)>,
    binaries: Vec<(String, Duration)>,
    /// Tests cargo nextest reported done, with their durations.
    tests: Vec<(String, Duration)>,
}

impl Timings {
    /// `name` starts (the one before it, if any, has ended).
    fn start(&mut self, name: String) {
        self.finish();
        self.current = Some((name, Instant::now()));
    }

    fn finish(&mut self) {
        if let Some((name, since)) = self.current.take() {
            self.binaries.push((name, since.elapsed()));
        }
    }
}

impl TestWatch {
    fn new(root: &Path, limit: Duration) -> Self {
        TestWatch {
            root: root.to_path_buf(),
            limit,
            binary: None,
            slow: HashMap::new(),
            killed: Vec::new(),
            timings: Timings::default(),
        }
    }

    /// Follow one line of cargo's or libtest's output.
    fn saw(&mut self, line: &str) {
        let line = line.trim();
        if let Some((status, took, name)) = nextest_result(line) {
            if status == "TIMEOUT" {
                self.killed.push(format!(
                    "{name} (killed by cargo nextest at its slow-timeout)"
                ));
            }
            self.timings.tests.push((name, took));
        } else if line.starts_with("Finished ") && self.timings.build_done.is_none() {
            self.timings.build_done = Some(Instant::now());
        } else if let Some(rest) = line.strip_prefix("Running ") {
            // `Running tests/conformance.rs (target/debug/deps/conformance-0123)`
            self.binary = rest
                .rsplit_once('(')
                .and_then(|(_, path)| path.strip_suffix(')'))
                .map(|path| self.root.join(path));
            let name = self
                .binary
                .as_deref()
                .and_then(Path::file_name)
                .map_or_else(
                    || rest.to_owned(),
                    |file| {
                        format!(
                            "{} {}",
                            file.to_string_lossy(),
                            rest.split(' ').next().unwrap_or("")
                        )
                    },
                );
            self.timings.start(name);
            self.slow.clear();
        } else if line.starts_with("Doc-tests ") {
            self.binary = None;
            self.timings.start(line.to_owned());
            self.slow.clear();
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" has been running for over 60 seconds"))
        {
            let started = Instant::now()
                .checked_sub(Duration::from_secs(60))
                .unwrap_or_else(Instant::now);
            self.slow
                .insert(name.to_owned(), (self.binary.clone(), started));
        } else if let Some((name, _)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        {
            self.slow.remove(name);
        }
    }

    /// Kill the binary of a test that ran past the limit.
    fn enforce(&mut self) {
        let over: Vec<(String, Option<PathBuf>)> = self
            .slow
            .iter()
            .filter(|(_, (_, started))| started.elapsed() > self.limit)
            .map(|(name, (binary, _))| (name.clone(), binary.clone()))
            .collect();
        for (name, binary) in over {
            self.slow.remove(&name);
            let pids = binary.as_deref().map(processes_running).unwrap_or_default();
            let shown = binary
                .as_deref()
                .map_or("a doctest".into(), |b| b.display().to_string());
            eprintln!(
                "\nxtask: TEST OVER ITS LIMIT: `{name}` has run over {} s \
                 (KOMBU_TEST_LIMIT_SECS); killing its test binary {shown} (pids {pids:?})",
                self.limit.as_secs()
            );
            for pid in pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stdin(Stdio::null())
                    .status();
            }
            self.killed.push(format!(
                "{name} (over {} s, in {shown})",
                self.limit.as_secs()
            ));
        }
    }
}

/// A cargo nextest result line: `PASS [   1.244s] (764/903) crate::binary
/// test_name` (also FAIL, TIMEOUT, ...) as (status, duration, test).
fn nextest_result(line: &str) -> Option<(&str, Duration, String)> {
    let (status, rest) = line.split_once(" [")?;
    if !matches!(
        status,
        "PASS" | "FAIL" | "TIMEOUT" | "SIGKILL" | "SIGSEGV" | "ABORT"
    ) {
        return None;
    }
    let (took, rest) = rest.split_once("s]")?;
    let took = Duration::try_from_secs_f64(took.trim().parse().ok()?).ok()?;
    let name = match rest.trim_start().split_once(") ") {
        Some((counter, name)) if counter.starts_with('(') => name,
        _ => rest.trim_start(),
    };
    Some((status, took, name.to_owned()))
}

/// The PIDs of the processes running the executable `binary`.
fn processes_running(binary: &Path) -> Vec<u32> {
    let Ok(wanted) = binary.canonicalize() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let exe = std::fs::read_link(entry.path().join("exe")).ok()?;
            (exe == wanted).then_some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nextest_results() {
        let mut watch = TestWatch::new(Path::new("/w"), Duration::from_secs(1));
        watch.saw("        PASS [   1.244s] (764/903) kombu-redis::interop requeue_both_ways");
        watch.saw("     TIMEOUT [ 240.003s] (765/903) kombu-nats::faults stuck");
        watch.saw("        SLOW [> 60.000s] (766/903) kombu-nats::faults slow");
        assert_eq!(
            watch.timings.tests,
            [
                (
                    "kombu-redis::interop requeue_both_ways".to_owned(),
                    Duration::from_millis(1244)
                ),
                (
                    "kombu-nats::faults stuck".to_owned(),
                    Duration::from_millis(240_003)
                ),
            ]
        );
        assert_eq!(watch.killed.len(), 1, "{:?}", watch.killed);
        assert!(watch.killed[0].starts_with("kombu-nats::faults stuck "));
    }

    #[test]
    fn follows_binaries_and_slow_tests() {
        let mut watch = TestWatch::new(Path::new("/w"), Duration::from_secs(1));
        watch.saw("     Running tests/conformance.rs (target/debug/deps/conformance-0123)");
        assert_eq!(
            watch.binary.as_deref(),
            Some(Path::new("/w/target/debug/deps/conformance-0123"))
        );
        watch.saw("test many_producers has been running for over 60 seconds");
        watch.saw("test other ... ok");
        assert!(watch.slow.contains_key("many_producers"));
        watch.saw("test many_producers ... FAILED");
        assert!(watch.slow.is_empty());
        watch.saw("test stuck has been running for over 60 seconds");
        watch.enforce();
        assert_eq!(watch.killed.len(), 1, "{:?}", watch.killed);
        assert!(watch.killed[0].starts_with("stuck "), "{:?}", watch.killed);
        watch.saw("   Doc-tests kombu_core");
        assert!(watch.binary.is_none());
        watch.timings.finish();
        let names: Vec<&str> = watch
            .timings
            .binaries
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "conformance-0123 tests/conformance.rs",
                "Doc-tests kombu_core"
            ]
        );
    }
}
