//! Processes and ports: starting a server detached, probing ports, finding
//! the process that listens on a port, and stopping a process we started.
//!
//! Linux only (it reads `/proc`), like the CI machines.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::state::Proc;
use crate::Result;

/// How to start one native server.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The program (a name on `PATH` or a path).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The folder it runs in.
    pub cwd: PathBuf,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// Whether the program forks the server and exits (`--daemonize`, `-detached`).
    pub daemonizes: bool,
    /// Environment variables set for it (on top of ours).
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// The command line (environment first), for state files and messages.
    pub fn command_line(&self) -> String {
        let mut line = String::new();
        for (key, value) in &self.env {
            line.push_str(&format!("{key}={} ", quoted(value)));
        }
        line.push_str(&self.program.display().to_string());
        for arg in &self.args {
            line.push(' ');
            line.push_str(&quoted(arg));
        }
        line
    }
}

/// `arg`, in single quotes when a shell would split or expand it.
fn quoted(arg: &str) -> String {
    if arg.is_empty() || arg.contains([' ', '{', '}', '$', '*', '\'', '"']) {
        format!("'{}'", arg.replace('\'', r"'\''"))
    } else {
        arg.to_owned()
    }
}

/// Closes every inherited fd above 2, then `exec setsid "$@"`. Rust opens its
/// own files close-on-exec, but fds our caller leaked to us (a CI runner's
/// pipe, say) would otherwise live on in the daemon and keep that pipe open.
const CLOSE_FDS_AND_EXEC: &str = r#"for fd in /proc/$$/fd/*; do
  fd=${fd##*/}
  case $fd in 0|1|2) ;; *) eval "exec $fd>&-" 2>/dev/null ;; esac
done
exec setsid "$@""#;

/// Start `launch` in a new session (`setsid`), stdin null, stdout and stderr
/// to its log file and no other inherited fds, so it holds none of the
/// caller's pipes or its terminal.
///
/// `bash` (not a process group leader) execs `setsid`, which calls
/// setsid(2) and execs the program, so the child's PID is the server's PID.
/// The child is not waited for; the caller polls it with `try_wait`.
pub fn spawn_detached(launch: &Launch) -> Result<Child> {
    let log = File::create(&launch.log)?;
    let child = Command::new("bash")
        .args(["-c", CLOSE_FDS_AND_EXEC, "xtask-launch"])
        .arg(&launch.program)
        .args(&launch.args)
        .current_dir(&launch.cwd)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("could not run `{}`: {e}", launch.command_line()))?;
    Ok(child)
}

/// Whether a TCP connection to 127.0.0.1:`port` succeeds.
pub fn port_answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Whether `GET path` on 127.0.0.1:`port` answers with status 200.
pub fn http_ok(port: u16, path: &str) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 32];
    let mut len = 0;
    while len < head.len() {
        match stream.read(&mut head[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    let head = String::from_utf8_lossy(&head[..len]);
    head.starts_with("HTTP/1.") && head.get(9..12) == Some("200")
}

/// The last `lines` lines of a log file (or a note that it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let out = all[start..].join("\n");
            if out.is_empty() {
                "    (log is empty)".into()
            } else {
                out.lines().map(|l| format!("    {l}\n")).collect()
            }
        }
        Err(err) => format!("    (cannot read {}: {err})", path.display()),
    }
}

/// The PID of the process listening on TCP `port` (IPv4 or IPv6), from `/proc`.
pub fn listener_pid(port: u16) -> Option<u32> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit(':').next()?;
                    let listening = *fields.get(3)? == "0A";
                    let inode = fields.get(9)?;
                    (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                        .then(|| format!("socket:[{inode}]"))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
                .then_some(pid)
        })
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`, in clock
/// ticks since boot): with the PID, it identifies one process for good.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` is alive, not a zombie, and still the one that
/// started at `start`.
pub fn is_same_process(pid: u32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let zombie = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        == Some("Z");
    !zombie && start_time(pid) == Some(start)
}

/// Send `signal` to `target` (a PID, or `-PGID` for a process group).
fn kill(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", target])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stop the processes a state file records, all at once: SIGTERM to each
/// (and to its process group when we made it a session leader), wait up to
/// 30 s for every one of them and its port to go, then SIGKILL what is left.
/// A process that is no longer the one we started is never signalled.
pub fn stop_all(processes: &[Proc]) -> Result<()> {
    let alive = |p: &Proc| is_same_process(p.pid, p.start_time);
    let group_alive = |p: &Proc| {
        p.group
            .filter(|&(pgid, start)| is_same_process(pgid, start))
    };
    let running: Vec<&Proc> = processes.iter().filter(|p| alive(p)).collect();
    for p in &running {
        if let Some((pgid, _)) = group_alive(p) {
            kill("-TERM", &format!("-{pgid}"));
        }
        kill("-TERM", &p.pid.to_string());
    }
    let gone = |p: &Proc| !alive(p) && (p.port == 0 || !port_answers(p.port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !running.iter().all(|p| gone(p)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for p in running.iter().filter(|p| alive(p)) {
        kill("-KILL", &p.pid.to_string());
        if let Some((pgid, _)) = group_alive(p) {
            kill("-KILL", &format!("-{pgid}"));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let left: Vec<String> = running
        .iter()
        .filter(|p| alive(p))
        .map(|p| format!("{} (pid {})", p.name, p.pid))
        .collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("did not stop: {}", left.join(", ")).into())
    }
}

/// Run `command` with stdin null and stdout+stderr to `out` (a file, so a
/// chatty command cannot fill a pipe and stall), killing it after `limit`.
/// Its output on success; on failure or timeout, an error quoting it.
pub fn run_bounded(command: &mut Command, out: &Path, limit: Duration) -> Result<String> {
    let file = File::create(out)?;
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .map_err(|e| format!("could not run {shown}: {e}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(out).unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(output),
        Some(status) => Err(format!("{shown} failed ({status}):\n{}", output.trim_end()).into()),
        None => Err(format!(
            "{shown} did not finish within {} s:\n{}",
            limit.as_secs(),
            output.trim_end()
        )
        .into()),
    }
}
