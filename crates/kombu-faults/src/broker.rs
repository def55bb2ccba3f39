//! Private broker processes on free ports, with persistence, that a test may
//! SIGKILL, restart, SIGSTOP and SIGCONT. Never the shared services: every
//! broker here is a process this module spawned, on a port it picked, with
//! its data in a directory of its own. Dropping a [`PrivateBroker`] kills it
//! (even when the test panicked) and removes its directory.

use std::fs;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The broker kinds the fault tests cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// `redis-server` with an fsync-always append-only file.
    Redis,
    /// A private RabbitMQ node of the installed server.
    Amqp,
    /// `beanstalkd` with a binlog fsynced on every write.
    Beanstalk,
    /// `nats-server` with JetStream and its file store.
    Nats,
}

/// The RabbitMQ start script that runs the node in the foreground as the
/// calling user (`/usr/sbin/rabbitmq-server` switches to the `rabbitmq`
/// user and to `/var/lib/rabbitmq`, which a private node must not use).
pub const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

impl BrokerKind {
    /// The transport name (`redis`, `amqp`, `beanstalk`, `nats`).
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Redis => "redis",
            BrokerKind::Amqp => "amqp",
            BrokerKind::Beanstalk => "beanstalk",
            BrokerKind::Nats => "nats",
        }
    }

    /// The server executable this kind runs.
    pub fn binary(self) -> &'static str {
        match self {
            BrokerKind::Redis => "/usr/bin/redis-server",
            BrokerKind::Amqp => RABBITMQ_SERVER,
            BrokerKind::Beanstalk => "/usr/bin/beanstalkd",
            BrokerKind::Nats => "/usr/sbin/nats-server",
        }
    }

    /// Whether the server executable is installed.
    pub fn installed(self) -> bool {
        Path::new(self.binary()).exists()
    }

    /// How long a (re)start may take before it is an error.
    pub fn start_timeout(self) -> Duration {
        match self {
            BrokerKind::Amqp => Duration::from_secs(90),
            _ => Duration::from_secs(15),
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Send `signal` (`KILL`, `STOP`, `CONT`, ...) to process `pid`.
pub fn signal(pid: u32, signal: &str) -> io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("kill -{signal} {pid} failed")))
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system temp dir for this process.
pub fn scratch_dir(prefix: &str) -> io::Result<PathBuf> {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("kombu-faults-{prefix}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A broker process of our own.
#[derive(Debug)]
pub struct PrivateBroker {
    kind: BrokerKind,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    node: String,
    child: Option<Child>,
    server_pid: Option<u32>,
    stopped: bool,
    /// More server arguments (a redis replica's `--replicaof`).
    extra_args: Vec<String>,
    /// The Erlang cookie of a RabbitMQ node that joins a cluster (nodes of
    /// one cluster share it).
    cookie: Option<String>,
}

impl PrivateBroker {
    /// Start a broker of `kind` on a free port and wait until it accepts
    /// TCP connections.
    pub fn start(kind: BrokerKind) -> io::Result<Self> {
        Self::start_with(kind, Vec::new())
    }

    /// A RabbitMQ node with Erlang cookie `cookie` (for a cluster).
    pub fn start_amqp_node(cookie: &str) -> io::Result<Self> {
        Self::launched(BrokerKind::Amqp, Vec::new(), Some(cookie.to_owned()))
    }

    /// The Erlang node name (RabbitMQ).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// [`start`](Self::start) with more server arguments, e.g. a redis
    /// replica's `--replicaof 127.0.0.1 <port>`.
    pub fn start_with(kind: BrokerKind, extra_args: Vec<String>) -> io::Result<Self> {
        Self::launched(kind, extra_args, None)
    }

    /// A broker of `kind` in a fresh directory on free ports, started.
    fn launched(
        kind: BrokerKind,
        extra_args: Vec<String>,
        cookie: Option<String>,
    ) -> io::Result<Self> {
        let dir = scratch_dir(kind.name())?;
        let mut broker = PrivateBroker {
            kind,
            port: free_port()?,
            dist_port: free_port()?,
            node: format!(
                "kombu-fault-{}-{}@localhost",
                std::process::id(),
                dir_seq(&dir)
            ),
            dir,
            child: None,
            server_pid: None,
            stopped: false,
            extra_args,
            cookie,
        };
        broker.launch()?;
        Ok(broker)
    }

    /// The transport kind.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data and log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pid of the server process itself (beam.smp for RabbitMQ, not
    /// its start script).
    pub fn server_pid(&self) -> Option<u32> {
        self.server_pid
    }

    /// The URL to reach it (no query string).
    pub fn url(&self) -> String {
        match self.kind {
            BrokerKind::Redis => format!("redis://127.0.0.1:{}/0", self.port),
            BrokerKind::Amqp => format!("amqp://guest:guest@127.0.0.1:{}//", self.port),
            BrokerKind::Beanstalk => format!("beanstalk://127.0.0.1:{}", self.port),
            BrokerKind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    fn command(&self) -> io::Result<Command> {
        let dir = self.dir.to_str().expect("utf-8 temp dir");
        let port = self.port.to_string();
        let mut cmd = Command::new(self.kind.binary());
        match self.kind {
            BrokerKind::Redis => {
                cmd.args(["--port", &port, "--bind", "127.0.0.1", "--dir", dir])
                    .args(["--appendonly", "yes", "--appendfsync", "always"])
                    .args(["--save", "", "--daemonize", "no"])
                    .args(&self.extra_args);
            }
            BrokerKind::Beanstalk => {
                cmd.args(["-l", "127.0.0.1", "-p", &port, "-b", dir, "-f", "0"]);
            }
            BrokerKind::Nats => {
                // JetStream's file store in the broker's directory: a
                // restart on the same directory finds the streams again.
                cmd.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd", dir]);
            }
            BrokerKind::Amqp => {
                let plugins = self.dir.join("enabled_plugins");
                fs::write(&plugins, "[].\n")?;
                if let Some(cookie) = &self.cookie {
                    // Erlang wants the cookie readable by its owner only.
                    use std::os::unix::fs::PermissionsExt as _;
                    let path = self.dir.join(".erlang.cookie");
                    let _ = fs::remove_file(&path);
                    fs::write(&path, cookie)?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o400))?;
                }
                // No config files: absent paths are fine; the env file
                // must not be the system one (it may set another node name).
                cmd.env("HOME", &self.dir)
                    .env("RABBITMQ_NODENAME", &self.node)
                    .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                    .env("RABBITMQ_NODE_PORT", &port)
                    .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
                    .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
                    .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
                    .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
                    .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
                    .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq"))
                    .env(
                        "RABBITMQ_ADVANCED_CONFIG_FILE",
                        self.dir.join("advanced.config"),
                    )
                    .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"));
            }
        }
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.out"))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        Ok(cmd)
    }

    fn launch(&mut self) -> io::Result<Duration> {
        let started = Instant::now();
        let _ = fs::remove_file(self.dir.join("pid"));
        let child = self.command()?.spawn()?;
        if self.kind != BrokerKind::Amqp {
            self.server_pid = Some(child.id());
        }
        self.child = Some(child);
        let deadline = started + self.kind.start_timeout();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Err(io::Error::other(format!(
                        "{} exited during start ({status}); see {}",
                        self.kind.name(),
                        self.dir.join("server.out").display()
                    )));
                }
            }
            if self.kind == BrokerKind::Amqp && self.server_pid.is_none() {
                self.server_pid = fs::read_to_string(self.dir.join("pid"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
            }
            let listening = TcpStream::connect_timeout(
                &([127, 0, 0, 1], self.port).into(),
                Duration::from_millis(200),
            )
            .is_ok();
            if listening && self.server_pid.is_some() {
                return Ok(started.elapsed());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(io::Error::other(format!(
                    "{} did not listen on port {} within {:?}; see {}",
                    self.kind.name(),
                    self.port,
                    self.kind.start_timeout(),
                    self.dir.join("server.out").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL the server process and reap it.
    pub fn kill(&mut self) {
        let mut pids: Vec<u32> = self.server_pid.take().into_iter().collect();
        if let (BrokerKind::Amqp, Some(child)) = (self.kind, self.child.as_ref()) {
            // The pid file may not be written yet: take the script's children too.
            pids.extend(child_pids(child.id()));
            pids.extend(
                fs::read_to_string(self.dir.join("pid"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok()),
            );
        }
        for pid in pids {
            let _ = signal(pid, "KILL");
        }
        self.stopped = false;
        if let Some(mut child) = self.child.take() {
            // RabbitMQ's start script exits once beam.smp is gone; the
            // others are the child itself.
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port with the same data; returns how long
    /// it took to listen.
    pub fn restart(&mut self) -> io::Result<Duration> {
        self.kill();
        self.launch()
    }

    /// SIGSTOP the server: connections stay open, nothing answers.
    pub fn stop(&mut self) -> io::Result<()> {
        let pid = self
            .server_pid
            .ok_or_else(|| io::Error::other("not running"))?;
        signal(pid, "STOP")?;
        self.stopped = true;
        Ok(())
    }

    /// SIGCONT the server.
    pub fn cont(&mut self) -> io::Result<()> {
        let pid = self
            .server_pid
            .ok_or_else(|| io::Error::other("not running"))?;
        signal(pid, "CONT")?;
        self.stopped = false;
        Ok(())
    }
}

/// The direct children of process `pid` (Linux `/proc`).
fn child_pids(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn dir_seq(dir: &Path) -> String {
    dir.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit('-').next())
        .unwrap_or("0")
        .to_string()
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if self.stopped {
            if let Some(pid) = self.server_pid {
                let _ = signal(pid, "CONT");
            }
        }
        self.kill();
        if std::env::var_os("KOMBU_FAULTS_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
