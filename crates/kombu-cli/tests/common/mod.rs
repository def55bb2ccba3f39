//! Running the built `kombu` binary from tests, bounded in time.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// No test run of the binary may take longer than this.
pub const LIMIT: Duration = Duration::from_secs(90);

/// What one run of `kombu` did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Assert the exit status, showing everything when it differs.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit status {code}; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self.assert_no_panic();
        self
    }

    /// No panic message and no backtrace, ever.
    pub fn assert_no_panic(&self) {
        for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "internal error"] {
            assert!(
                !self.stderr.contains(bad),
                "stderr has {bad:?}:\n{}",
                self.stderr
            );
        }
    }

    /// stderr is exactly one line, starting `kombu: `; returns it.
    pub fn one_error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr, got:\n{}",
            self.stderr
        );
        assert!(lines[0].starts_with("kombu: "), "{}", lines[0]);
        lines[0]
    }

    /// stdout's lines parsed as JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// A `kombu` command with `KOMBU_URL` cleared.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kombu"));
    cmd.args(args)
        .env_remove("KOMBU_URL")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Read a pipe to its end on a thread (nothing when it was taken already).
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut s);
        }
        s
    })
}

/// Wait for `child`, killing it (and failing) after [`LIMIT`]. Its stdout
/// and stderr are collected unless the caller took them.
pub fn wait(mut child: Child) -> Run {
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for kombu") {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kombu ran longer than {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Run `kombu args...`.
pub fn kombu(args: &[&str]) -> Run {
    wait(command(args).spawn().expect("run kombu"))
}

/// Run `kombu args...` with extra environment variables.
pub fn kombu_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = command(args);
    cmd.envs(env.iter().copied());
    wait(cmd.spawn().expect("run kombu"))
}

/// Run `kombu args...` with `input` on stdin.
pub fn kombu_stdin(args: &[&str], input: &[u8]) -> Run {
    let mut cmd = command(args);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("run kombu");
    let mut stdin = child.stdin.take().expect("stdin piped");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    wait(child)
}

/// The schemes compiled into the binary, from `kombu transports --json`.
pub fn compiled_schemes() -> Vec<String> {
    let run = kombu(&["transports", "--json"]);
    run.expect_code(0);
    let all: serde_json::Value = serde_json::from_str(&run.stdout).expect("transports JSON");
    all.as_array()
        .expect("an array")
        .iter()
        .flat_map(|t| t["schemes"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// A local TCP port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
