//! What `services up` started, recorded under `.services/` so `down` stops
//! exactly that and nothing else.
//!
//! `.services/<name>.pid` holds the servers' PIDs, one a line;
//! `.services/<name>.state` holds `key=value` lines: mode, when it was
//! started, and one `process=` line per server process (a group service
//! such as `redis-cluster` has one per member): its name, port, PID, start
//! time, process group, log and command, tab-separated. The first process
//! is also written as the older single-process keys (`pid`, `start_time`,
//! `group`, `command`, `log`), which is also what a state file without
//! `process=` lines is read as.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::process::{self, Launch};
use crate::services::{services_dir, Service};
use crate::Result;

/// How a service was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Native processes started by `services up`.
    Native,
    /// Containers started with `docker compose up`.
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

/// One server process `services up` started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// The service's name, or the group member's (`node-7003`, `sentinel-26380`).
    pub name: String,
    /// The port it listens on.
    pub port: u16,
    /// The PID of the server (the process listening on the port).
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
}

impl Proc {
    /// A native server, named `name`, that just answered on `port`.
    pub fn record(name: &str, port: u16, launch: &Launch, child_pid: u32) -> Proc {
        let pid = process::listener_pid(port).unwrap_or(child_pid);
        let group = (!launch.daemonizes)
            .then(|| process::start_time(child_pid).map(|start| (child_pid, start)))
            .flatten();
        Proc {
            name: name.to_owned(),
            port,
            pid,
            start_time: process::start_time(pid).unwrap_or(0),
            group,
            command: launch.command_line(),
            log: launch.log.clone(),
        }
    }

    /// Whether it is still the process we started.
    pub fn is_live(&self) -> bool {
        process::is_same_process(self.pid, self.start_time)
    }

    fn group_text(&self) -> String {
        self.group
            .map_or(String::new(), |(pgid, start)| format!("{pgid} {start}"))
    }
}

/// One started service.
#[derive(Debug, Clone)]
pub struct State {
    /// Native or Docker.
    pub mode: Mode,
    /// Its server processes (none for Docker).
    pub processes: Vec<Proc>,
    /// Where it logs (Docker: where it would, natively).
    pub log: PathBuf,
    /// Seconds since the Unix epoch when it was started.
    pub started_at: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn parse_group(text: &str) -> Option<(u32, u64)> {
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(pgid)), Some(Ok(start))) => Some((u32::try_from(pgid).ok()?, start)),
        _ => None,
    }
}

impl State {
    /// The state of native servers that just answered on their ports; `log`
    /// is the service's log (a group's: its folder).
    pub fn native(processes: Vec<Proc>, log: PathBuf) -> State {
        State {
            mode: Mode::Native,
            processes,
            log,
            started_at: now(),
        }
    }

    /// The state of a service started with Docker Compose.
    pub fn docker(root: &Path, service: &Service) -> State {
        State {
            mode: Mode::Docker,
            processes: Vec::new(),
            log: crate::services::log_path(root, service),
            started_at: now(),
        }
    }

    /// Whether what this records is still running: every process
    /// (Docker: assumed so).
    pub fn is_live(&self) -> bool {
        match self.mode {
            Mode::Docker => true,
            Mode::Native => !self.processes.is_empty() && self.processes.iter().all(Proc::is_live),
        }
    }

    /// The PIDs, for messages.
    pub fn pids(&self) -> String {
        self.processes
            .iter()
            .map(|p| p.pid.to_string())
            .collect::<Vec<_>>()
            .join(", ")
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
        let mut text = format!(
            "mode={}\nstarted_at={}\nlog={}\n",
            match self.mode {
                Mode::Native => "native",
                Mode::Docker => "docker",
            },
            self.started_at,
            self.log.display(),
        );
        if let Some(first) = self.processes.first() {
            text.push_str(&format!(
                "pid={}\nstart_time={}\ngroup={}\ncommand={}\n",
                first.pid,
                first.start_time,
                first.group_text(),
                first.command,
            ));
        } else {
            text.push_str("pid=0\nstart_time=0\n");
        }
        for p in &self.processes {
            let fields = [
                p.name.clone(),
                p.port.to_string(),
                p.pid.to_string(),
                p.start_time.to_string(),
                p.group_text(),
                p.log.display().to_string(),
                p.command.clone(),
            ];
            let fields: Vec<String> = fields
                .iter()
                .map(|f| f.replace(['\t', '\n'], " "))
                .collect();
            text.push_str(&format!("process={}\n", fields.join("\t")));
        }
        std::fs::write(state_path, text)?;
        let pids: String = self
            .processes
            .iter()
            .map(|p| format!("{}\n", p.pid))
            .collect();
        std::fs::write(pid_path, pids)?;
        Ok(())
    }

    /// Read the state of `service`, if there is one and it parses.
    pub fn load(root: &Path, service: &Service) -> Option<State> {
        let text = std::fs::read_to_string(Self::paths(root, service.name).0).ok()?;
        let get = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or("")
        };
        let mode = match get("mode") {
            "native" => Mode::Native,
            "docker" => Mode::Docker,
            _ => return None,
        };
        let log = PathBuf::from(get("log"));
        let mut processes = text
            .lines()
            .filter_map(|line| line.strip_prefix("process="))
            .map(|line| {
                let f: Vec<&str> = line.splitn(7, '\t').collect();
                let [name, port, pid, start, group, log, command] = f[..] else {
                    return None;
                };
                Some(Proc {
                    name: name.to_owned(),
                    port: port.parse().ok()?,
                    pid: pid.parse().ok()?,
                    start_time: start.parse().ok()?,
                    group: parse_group(group),
                    command: command.to_owned(),
                    log: PathBuf::from(log),
                })
            })
            .collect::<Option<Vec<Proc>>>()?;
        let pid: u32 = get("pid").parse().ok()?;
        if processes.is_empty() && mode == Mode::Native && pid != 0 {
            // Written before group services: one process on the service's port.
            processes.push(Proc {
                name: service.name.to_owned(),
                port: service.port,
                pid,
                start_time: get("start_time").parse().ok()?,
                group: parse_group(get("group")),
                command: get("command").to_owned(),
                log: log.clone(),
            });
        }
        Some(State {
            mode,
            processes,
            log,
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
    use crate::services::select;

    fn scratch(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("xtask-state-{name}-{}", std::process::id()));
        std::fs::create_dir_all(services_dir(&root)).unwrap();
        root
    }

    #[test]
    fn state_round_trips_through_its_file() {
        let root = scratch("round-trip");
        let cluster = select(&["redis-cluster".into()]).unwrap()[0];
        let proc = |name: &str, port, pid| Proc {
            name: name.into(),
            port,
            pid,
            start_time: 1234,
            group: Some((pid - 1, 1200)),
            command: format!("redis-server --port {port} --save ''"),
            log: format!("/x y/.services/redis-cluster/{name}.log").into(),
        };
        let state = State::native(
            vec![proc("node-7000", 7000, 42), proc("node-7001", 7001, 52)],
            "/x y/.services/redis-cluster".into(),
        );
        state.save_as(&root, cluster.name).unwrap();
        let back = State::load(&root, cluster).unwrap();
        assert_eq!(back.mode, Mode::Native);
        assert_eq!(back.processes, state.processes);
        assert_eq!(back.log, state.log);
        assert_eq!(back.pids(), "42, 52");
        let pid_file = std::fs::read_to_string(services_dir(&root).join("redis-cluster.pid"));
        assert_eq!(pid_file.unwrap(), "42\n52\n");
        State::remove(&root, cluster.name);
        assert!(State::load(&root, cluster).is_none());
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn reads_single_process_state_files() {
        // As written before group services existed.
        let root = scratch("single");
        let redis = select(&["redis".into()]).unwrap()[0];
        std::fs::write(
            services_dir(&root).join("redis.state"),
            "mode=native\npid=42\nstart_time=1234\ngroup=41 1200\n\
             command=redis-server --save ''\nlog=/x/.services/redis.log\nstarted_at=7\n",
        )
        .unwrap();
        let back = State::load(&root, redis).unwrap();
        assert_eq!(back.processes.len(), 1);
        let p = &back.processes[0];
        assert_eq!(
            (p.name.as_str(), p.port, p.pid, p.start_time, p.group),
            ("redis", 6379, 42, 1234, Some((41, 1200)))
        );
        assert_eq!(p.command, "redis-server --save ''");
        assert_eq!(back.started_at, 7);
        let _ = std::fs::remove_dir_all(root);
    }
}
