//! What `services up` started, recorded under `.services/` so `down` stops
//! exactly that and nothing else.
//!
//! `.services/<name>.pid` holds the server's PID; `.services/<name>.state`
//! holds `key=value` lines: mode, pid, start time, process group, command,
//! log and when it was started.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::process::{self, Launch};
use crate::services::{services_dir, Service};
use crate::Result;

/// How a service was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A native process started by `services up`.
    Native,
    /// A container started with `docker compose up`.
    Docker,
}

impl Mode {
    /// The "started by" column of `services status`.
    pub fn started_by(self) -> &'static str {
        match self {
            Mode::Native => "us",
            Mode::Docker => "docker",
        }
    }
}

/// One started service.
#[derive(Debug, Clone)]
pub struct State {
    /// Native or Docker.
    pub mode: Mode,
    /// The PID of the server (the process listening on the port); 0 for Docker.
    pub pid: u32,
    /// The server's start time, to tell it from a later process with its PID.
    pub start_time: u64,
    /// The process group we created (`setsid`) and its leader's start time,
    /// when the server did not daemonize itself away from it.
    pub group: Option<(u32, u64)>,
    /// How it was started.
    pub command: String,
    /// Its log file.
    pub log: PathBuf,
    /// Seconds since the Unix epoch when it was started.
    pub started_at: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl State {
    /// The state of a native server that just answered on its port.
    pub fn record(service: &Service, launch: &Launch, child_pid: u32) -> State {
        let pid = process::listener_pid(service.port).unwrap_or(child_pid);
        let group = (!launch.daemonizes)
            .then(|| process::start_time(child_pid).map(|start| (child_pid, start)))
            .flatten();
        State {
            mode: Mode::Native,
            pid,
            start_time: process::start_time(pid).unwrap_or(0),
            group,
            command: launch.command_line(),
            log: launch.log.clone(),
            started_at: now(),
        }
    }

    /// The state of a service started with Docker Compose.
    pub fn docker(root: &Path, service: &Service) -> State {
        State {
            mode: Mode::Docker,
            pid: 0,
            start_time: 0,
            group: None,
            command: format!("docker compose up -d --wait {}", service.name),
            log: services_dir(root).join(format!("{}.log", service.name)),
            started_at: now(),
        }
    }

    /// Whether what this records is still running (Docker: assumed so).
    pub fn is_live(&self) -> bool {
        match self.mode {
            Mode::Docker => true,
            Mode::Native => process::is_same_process(self.pid, self.start_time),
        }
    }

    fn paths(root: &Path, name: &str) -> (PathBuf, PathBuf) {
        let dir = services_dir(root);
        (
            dir.join(format!("{name}.state")),
            dir.join(format!("{name}.pid")),
        )
    }

    /// Write `.services/<name>.state` and `.services/<name>.pid`.
    pub fn save_as(&self, root: &Path, name: &str) -> Result<()> {
        let (state_path, pid_path) = Self::paths(root, name);
        let group = self
            .group
            .map_or(String::new(), |(pgid, start)| format!("{pgid} {start}"));
        let text = format!(
            "mode={}\npid={}\nstart_time={}\ngroup={group}\ncommand={}\nlog={}\nstarted_at={}\n",
            match self.mode {
                Mode::Native => "native",
                Mode::Docker => "docker",
            },
            self.pid,
            self.start_time,
            self.command,
            self.log.display(),
            self.started_at,
        );
        std::fs::write(state_path, text)?;
        std::fs::write(pid_path, format!("{}\n", self.pid))?;
        Ok(())
    }

    /// Read `.services/<name>.state`, if there is one and it parses.
    pub fn load(root: &Path, name: &str) -> Option<State> {
        let text = std::fs::read_to_string(Self::paths(root, name).0).ok()?;
        let get = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or("")
        };
        let group = {
            let mut parts = get("group").split_whitespace().map(str::parse);
            match (parts.next(), parts.next()) {
                (Some(Ok(pgid)), Some(Ok(start))) => Some((pgid as u32, start)),
                _ => None,
            }
        };
        Some(State {
            mode: match get("mode") {
                "native" => Mode::Native,
                "docker" => Mode::Docker,
                _ => return None,
            },
            pid: get("pid").parse().ok()?,
            start_time: get("start_time").parse().ok()?,
            group,
            command: get("command").to_string(),
            log: PathBuf::from(get("log")),
            started_at: get("started_at").parse().unwrap_or(0),
        })
    }

    /// Delete the state and PID files of `name`.
    pub fn remove(root: &Path, name: &str) {
        let (state_path, pid_path) = Self::paths(root, name);
        let _ = std::fs::remove_file(state_path);
        let _ = std::fs::remove_file(pid_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_its_file() {
        let root = std::env::temp_dir().join(format!("xtask-state-{}", std::process::id()));
        std::fs::create_dir_all(services_dir(&root)).unwrap();
        let state = State {
            mode: Mode::Native,
            pid: 42,
            start_time: 1234,
            group: Some((41, 1200)),
            command: "redis-server --save ''".into(),
            log: "/x/.services/redis.log".into(),
            started_at: 7,
        };
        state.save_as(&root, "redis").unwrap();
        let back = State::load(&root, "redis").unwrap();
        assert_eq!(back.mode, Mode::Native);
        assert_eq!(
            (back.pid, back.start_time, back.group),
            (42, 1234, Some((41, 1200)))
        );
        assert_eq!(back.command, state.command);
        assert_eq!(back.log, state.log);
        assert!(!back.is_live() || back.pid == 42);
        State::remove(&root, "redis");
        assert!(State::load(&root, "redis").is_none());
        let _ = std::fs::remove_dir_all(root);
    }
}
