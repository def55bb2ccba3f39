//! The integration services: the single table of names, ports and URLs, and
//! the `services up|down|status|env` commands built on it.
//!
//! A service is one server process, or a group of them (its `members`: a
//! Sentinel group, a Redis Cluster, a RabbitMQ cluster; see [`group`]),
//! started together, recorded together and stopped together.
//!
//! `docker-compose.yml` must use the same service names and host ports, and
//! list the services it has no container for under `x-native-only` (a unit
//! test below checks it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::install::{self, Install};
use crate::process::{self, Launch};
use crate::state::{Mode, Proc, State};
use crate::tls::{self, TlsServer};
use crate::{docker, group, Result};

/// How to tell that a started service accepts work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// A TCP connection to the port succeeds.
    Tcp,
    /// A plain HTTP `GET` of this path answers `200`.
    HttpOk(&'static str),
    /// A group of processes (the service's [`members`](Service::members)):
    /// every member answers on its port and the group has formed.
    Group(Formation),
}

/// How the members of a group service become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formation {
    /// Redis Sentinel: the sentinels watch the master as `master_name`,
    /// `quorum` of them agreeing that it is down.
    Sentinel {
        /// The name the sentinels know the master by.
        master_name: &'static str,
        /// How many sentinels must agree the master is down.
        quorum: u8,
    },
    /// Redis Cluster, made with `redis-cli --cluster create` and `replicas`
    /// replicas per master.
    RedisCluster {
        /// `--cluster-replicas`.
        replicas: u8,
    },
    /// RabbitMQ: every node joins the first (`rabbitmqctl join_cluster`).
    RabbitCluster,
    /// Independent TLS servers (see [`tls`](crate::tls)): the certificates
    /// are made first; up when every member answers.
    TlsServers,
}

/// One process of a group service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its name in the group: its log is `.services/<service>/<name>.log`.
    pub name: &'static str,
    /// The port it serves clients on, on 127.0.0.1.
    pub port: u16,
    /// What it is.
    pub role: Role,
}

/// What a group member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A Redis master (no persistence).
    RedisMaster,
    /// A Redis replica of the master on port `master`.
    RedisReplica {
        /// The master's port.
        master: u16,
    },
    /// A Redis sentinel watching the master on port `master`.
    Sentinel {
        /// The master's port.
        master: u16,
    },
    /// A Redis Cluster node (its cluster bus is on port + 10000).
    ClusterNode,
    /// A RabbitMQ node of its own (`RABBITMQ_NODENAME`, Mnesia, logs).
    RabbitNode {
        /// The Erlang node name.
        node: &'static str,
        /// The Erlang distribution port (`RABBITMQ_DIST_PORT`).
        dist_port: u16,
    },
    /// A RabbitMQ node of its own with TLS listeners only.
    RabbitTls {
        /// The Erlang node name.
        node: &'static str,
        /// The Erlang distribution port (`RABBITMQ_DIST_PORT`).
        dist_port: u16,
        /// What it presents and asks for.
        server: TlsServer,
    },
    /// A Redis server with a TLS port only.
    RedisTls {
        /// What it presents and asks for.
        server: TlsServer,
    },
}

impl Member {
    /// Every port it binds: the client port, and a cluster bus or Erlang
    /// distribution port.
    pub fn ports(&self) -> Vec<u16> {
        match self.role {
            Role::ClusterNode => vec![self.port, self.port + 10000],
            Role::RabbitNode { dist_port, .. } | Role::RabbitTls { dist_port, .. } => {
                vec![self.port, dist_port]
            }
            _ => vec![self.port],
        }
    }
}

/// One integration service: everything the xtask knows about it.
#[derive(Debug)]
pub struct Service {
    /// The name used on the command line and in `docker-compose.yml`.
    pub name: &'static str,
    /// The standard port, on 127.0.0.1 (a group's: the member clients
    /// reach first).
    pub port: u16,
    /// The variable the tests read the broker URL from.
    pub env_var: &'static str,
    /// The URL exported for the native stand-in.
    pub url: &'static str,
    /// The URL exported when the service runs from `docker-compose.yml`;
    /// `None`: native only (listed under `x-native-only` there), started
    /// natively even when a Docker engine answers.
    pub docker_url: Option<&'static str>,
    /// How to install the native stand-in.
    pub install: Install,
    /// How to tell it is ready.
    pub readiness: Readiness,
    /// How long to wait for it to become ready after starting it (a
    /// group: for all of its start, formation included).
    pub ready_timeout: Duration,
    /// A group service's processes (see [`group`]); empty for a service
    /// of one process.
    pub members: &'static [Member],
}

/// `redis-server` from Debian (also provides `redis-cli`, via redis-tools).
const REDIS_APT: Install = Install::Apt {
    package: "redis-server",
    binary: "/usr/bin/redis-server",
};

/// Every integration service, in start order. The single source of truth for
/// names, ports and URLs.
pub const SERVICES: &[Service] = &[
    Service {
        name: "rabbitmq",
        port: 5672,
        env_var: "KOMBU_TEST_AMQP_URL",
        url: "amqp://guest:guest@127.0.0.1:5672//",
        docker_url: Some("amqp://guest:guest@127.0.0.1:5672//"),
        install: Install::Apt {
            package: "rabbitmq-server",
            binary: "/usr/sbin/rabbitmq-server",
        },
        readiness: Readiness::Tcp,
        ready_timeout: Duration::from_secs(60),
        members: &[],
    },
    Service {
        name: "redis",
        port: 6379,
        env_var: "KOMBU_TEST_REDIS_URL",
        url: "redis://127.0.0.1:6379/0",
        docker_url: Some("redis://127.0.0.1:6379/0"),
        install: REDIS_APT,
        readiness: Readiness::Tcp,
        ready_timeout: Duration::from_secs(30),
        members: &[],
    },
    Service {
        // A Sentinel group of its own: a master, a replica and three
        // sentinels (quorum 2) watching the master as `kombu`. The URL is
        // the failover list of the three sentinels; the core applies the
        // first URL's query to the whole list, so `master_name` is there.
        name: "redis-sentinel",
        port: 26379,
        env_var: "KOMBU_TEST_REDIS_SENTINEL_URL",
        url: "sentinel://127.0.0.1:26379/0?master_name=kombu;\
              sentinel://127.0.0.1:26380/0;sentinel://127.0.0.1:26381/0",
        docker_url: Some(
            "sentinel://127.0.0.1:26379/0?master_name=kombu;\
             sentinel://127.0.0.1:26380/0;sentinel://127.0.0.1:26381/0",
        ),
        install: REDIS_APT,
        readiness: Readiness::Group(Formation::Sentinel {
            master_name: "kombu",
            quorum: 2,
        }),
        ready_timeout: Duration::from_secs(30),
        members: &[
            Member {
                name: "master",
                port: 6380,
                role: Role::RedisMaster,
            },
            Member {
                name: "replica",
                port: 6381,
                role: Role::RedisReplica { master: 6380 },
            },
            Member {
                name: "sentinel-26379",
                port: 26379,
                role: Role::Sentinel { master: 6380 },
            },
            Member {
                name: "sentinel-26380",
                port: 26380,
                role: Role::Sentinel { master: 6380 },
            },
            Member {
                name: "sentinel-26381",
                port: 26381,
                role: Role::Sentinel { master: 6380 },
            },
        ],
    },
    Service {
        // Redis Cluster: three masters and three replicas, no persistence.
        // The URL lists the three nodes that are masters when it is made.
        name: "redis-cluster",
        port: 7000,
        env_var: "KOMBU_TEST_REDIS_CLUSTER_URL",
        url: "rediscluster://127.0.0.1:7000;rediscluster://127.0.0.1:7001;\
              rediscluster://127.0.0.1:7002",
        docker_url: Some(
            "rediscluster://127.0.0.1:7000;rediscluster://127.0.0.1:7001;\
             rediscluster://127.0.0.1:7002",
        ),
        install: REDIS_APT,
        readiness: Readiness::Group(Formation::RedisCluster { replicas: 1 }),
        ready_timeout: Duration::from_secs(60),
        members: &[
            Member {
                name: "node-7000",
                port: 7000,
                role: Role::ClusterNode,
            },
            Member {
                name: "node-7001",
                port: 7001,
                role: Role::ClusterNode,
            },
            Member {
                name: "node-7002",
                port: 7002,
                role: Role::ClusterNode,
            },
            Member {
                name: "node-7003",
                port: 7003,
                role: Role::ClusterNode,
            },
            Member {
                name: "node-7004",
                port: 7004,
                role: Role::ClusterNode,
            },
            Member {
                name: "node-7005",
                port: 7005,
                role: Role::ClusterNode,
            },
        ],
    },
    Service {
        // Three private RabbitMQ nodes, the second and third joined to the
        // first. Native only (see docker-compose.yml's x-native-only).
        name: "rabbitmq-cluster",
        port: 5682,
        env_var: "KOMBU_TEST_RABBITMQ_CLUSTER_URL",
        url: "amqp://guest:guest@127.0.0.1:5682//;amqp://guest:guest@127.0.0.1:5683//;\
              amqp://guest:guest@127.0.0.1:5684//",
        docker_url: None,
        install: Install::Apt {
            package: "rabbitmq-server",
            binary: group::RABBITMQ_SERVER,
        },
        readiness: Readiness::Group(Formation::RabbitCluster),
        ready_timeout: Duration::from_secs(90),
        members: &[
            Member {
                name: "node-1",
                port: 5682,
                role: Role::RabbitNode {
                    node: "kombu-cluster-1@localhost",
                    dist_port: 25682,
                },
            },
            Member {
                name: "node-2",
                port: 5683,
                role: Role::RabbitNode {
                    node: "kombu-cluster-2@localhost",
                    dist_port: 25683,
                },
            },
            Member {
                name: "node-3",
                port: 5684,
                role: Role::RabbitNode {
                    node: "kombu-cluster-3@localhost",
                    dist_port: 25684,
                },
            },
        ],
    },
    Service {
        // Three private RabbitMQ nodes with TLS listeners only (see
        // tls.rs): the good certificate (also on 127.0.0.2, which it does
        // not name), mutual TLS, the expired certificate. Native only.
        name: "rabbitmq-tls",
        port: 5691,
        env_var: "KOMBU_TEST_AMQPS_URL",
        url: "amqps://kombu:kombu-tls-pw-7f3a@127.0.0.1:5691//?ssl_ca_certs={tls}/ca.pem",
        docker_url: None,
        install: Install::Apt {
            package: "rabbitmq-server",
            binary: group::RABBITMQ_SERVER,
        },
        readiness: Readiness::Group(Formation::TlsServers),
        ready_timeout: Duration::from_secs(60),
        members: &[
            Member {
                name: "good",
                port: 5691,
                role: Role::RabbitTls {
                    node: "kombu-tls-good@localhost",
                    dist_port: 25691,
                    server: TlsServer::Good,
                },
            },
            Member {
                name: "mutual",
                port: 5692,
                role: Role::RabbitTls {
                    node: "kombu-tls-mutual@localhost",
                    dist_port: 25692,
                    server: TlsServer::Mutual,
                },
            },
            Member {
                name: "expired",
                port: 5693,
                role: Role::RabbitTls {
                    node: "kombu-tls-expired@localhost",
                    dist_port: 25693,
                    server: TlsServer::Expired,
                },
            },
        ],
    },
    Service {
        // Three redis-servers with a TLS port only (see tls.rs), as for
        // rabbitmq-tls. Native only.
        name: "redis-tls",
        port: 6390,
        env_var: "KOMBU_TEST_REDISS_URL",
        url: "rediss://:kombu-tls-pw-7f3a@127.0.0.1:6390/0?ssl_ca_certs={tls}/ca.pem",
        docker_url: None,
        install: REDIS_APT,
        readiness: Readiness::Group(Formation::TlsServers),
        ready_timeout: Duration::from_secs(30),
        members: &[
            Member {
                name: "good",
                port: 6390,
                role: Role::RedisTls {
                    server: TlsServer::Good,
                },
            },
            Member {
                name: "mutual",
                port: 6391,
                role: Role::RedisTls {
                    server: TlsServer::Mutual,
                },
            },
            Member {
                name: "expired",
                port: 6392,
                role: Role::RedisTls {
                    server: TlsServer::Expired,
                },
            },
        ],
    },
    Service {
        // NATS with JetStream (the machine image starts one on 4222 with
        // its own store; when it is down we start ours, storing under
        // .services/nats-store).
        name: "nats",
        port: 4222,
        env_var: "KOMBU_TEST_NATS_URL",
        url: "nats://127.0.0.1:4222",
        docker_url: Some("nats://127.0.0.1:4222"),
        install: Install::Apt {
            package: "nats-server",
            binary: "/usr/sbin/nats-server",
        },
        readiness: Readiness::Tcp,
        ready_timeout: Duration::from_secs(30),
        members: &[],
    },
    Service {
        name: "beanstalkd",
        port: 11300,
        env_var: "KOMBU_TEST_BEANSTALK_URL",
        url: "beanstalk://127.0.0.1:11300",
        docker_url: Some("beanstalk://127.0.0.1:11300"),
        install: Install::Apt {
            package: "beanstalkd",
            binary: "/usr/bin/beanstalkd",
        },
        readiness: Readiness::Tcp,
        ready_timeout: Duration::from_secs(30),
        members: &[],
    },
    Service {
        name: "sqs",
        port: 4566,
        env_var: "KOMBU_TEST_SQS_URL",
        url: "sqs://test:test@127.0.0.1:4566",
        docker_url: Some("sqs://test:test@127.0.0.1:4566"),
        install: Install::PythonVenv {
            dir: "moto",
            requirement: "moto[server]==5.2.5",
        },
        readiness: Readiness::HttpOk("/moto-api/"),
        ready_timeout: Duration::from_secs(30),
        members: &[],
    },
    Service {
        name: "mongodb",
        port: 27017,
        env_var: "KOMBU_TEST_MONGODB_URL",
        url: "mongodb://127.0.0.1:27017/kombu_test?retryWrites=false",
        docker_url: Some("mongodb://127.0.0.1:27017/kombu_test?retryWrites=false"),
        install: Install::PythonVenv {
            dir: "secantus",
            requirement: "secantusdb==0.7.0b3",
        },
        readiness: Readiness::Tcp,
        ready_timeout: Duration::from_secs(30),
        members: &[],
    },
    Service {
        name: "couchdb",
        port: 5984,
        env_var: "KOMBU_TEST_COUCHDB_URL",
        url: "couchdb://127.0.0.1:5984/kombu_test",
        docker_url: Some("couchdb://admin:admin@127.0.0.1:5984/kombu_test"),
        install: Install::Npm {
            dir: "pouch",
            package: "pouchdb-server@4.2.0",
        },
        readiness: Readiness::HttpOk("/"),
        ready_timeout: Duration::from_secs(30),
        members: &[],
    },
];

/// The git-ignored folder holding installs, logs and state: `<root>/.services`.
pub fn services_dir(root: &Path) -> PathBuf {
    root.join(".services")
}

/// The log file a natively started service writes to.
pub fn log_path(root: &Path, service: &Service) -> PathBuf {
    services_dir(root).join(format!("{}.log", service.name))
}

/// Look up services by name; no names means all of them.
pub fn select(names: &[String]) -> Result<Vec<&'static Service>> {
    if names.is_empty() {
        return Ok(SERVICES.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            SERVICES.iter().find(|s| s.name == name).ok_or_else(|| {
                let known: Vec<_> = SERVICES.iter().map(|s| s.name).collect();
                format!(
                    "unknown service `{name}`; known services: {}",
                    known.join(", ")
                )
                .into()
            })
        })
        .collect()
}

impl Service {
    /// Whether it accepts work: something answers on its port (for HTTP
    /// services: `200` on the readiness path; for a group: every member
    /// answers and the group has formed, see [`group::formed`]).
    pub fn is_up(&self) -> bool {
        match self.readiness {
            Readiness::Tcp => process::port_answers(self.port),
            Readiness::HttpOk(path) => process::http_ok(self.port, path),
            Readiness::Group(_) => {
                self.members.iter().all(|m| process::port_answers(m.port)) && group::formed(self)
            }
        }
    }

    /// How a group service's members form one; `None` for one process.
    pub fn formation(&self) -> Option<Formation> {
        match self.readiness {
            Readiness::Group(formation) => Some(formation),
            _ => None,
        }
    }

    /// Every port it binds (a group: each member's, cluster bus and Erlang
    /// distribution ports included).
    pub fn ports(&self) -> Vec<u16> {
        if self.members.is_empty() {
            vec![self.port]
        } else {
            self.members.iter().flat_map(Member::ports).collect()
        }
    }

    /// The native start command, exactly as in `SERVICES.md` (logs and data
    /// go under `.services/`).
    fn launch(&self, root: &Path) -> Launch {
        let dir = services_dir(root);
        let log = log_path(root, self);
        let port = self.port.to_string();
        let (program, args, cwd, daemonizes): (PathBuf, Vec<String>, PathBuf, bool) =
            match self.name {
                "rabbitmq" => (
                    "rabbitmq-server".into(),
                    vec!["-detached".into()],
                    "/".into(),
                    true,
                ),
                "redis" => (
                    "redis-server".into(),
                    [
                        "--daemonize",
                        "yes",
                        "--bind",
                        "127.0.0.1",
                        "-::1",
                        "--port",
                        &port,
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        &dir.display().to_string(),
                        "--logfile",
                        &log.display().to_string(),
                    ]
                    .map(String::from)
                    .to_vec(),
                    "/".into(),
                    true,
                ),
                "nats" => (
                    "nats-server".into(),
                    [
                        "-a",
                        "127.0.0.1",
                        "-p",
                        &port,
                        "-js",
                        "-sd",
                        &dir.join("nats-store").display().to_string(),
                    ]
                    .map(String::from)
                    .to_vec(),
                    "/".into(),
                    false,
                ),
                "beanstalkd" => (
                    "beanstalkd".into(),
                    ["-l", "127.0.0.1", "-p", &port].map(String::from).to_vec(),
                    "/".into(),
                    false,
                ),
                "sqs" => (
                    dir.join("moto/bin/moto_server"),
                    ["-H", "127.0.0.1", "-p", &port].map(String::from).to_vec(),
                    dir.clone(),
                    false,
                ),
                "mongodb" => (
                    dir.join("secantus/bin/secantusd-py"),
                    [
                        "--host",
                        "127.0.0.1",
                        "--port",
                        &port,
                        "--storage-path",
                        &dir.join("secantus-data").display().to_string(),
                        "--log-level",
                        "WARNING",
                    ]
                    .map(String::from)
                    .to_vec(),
                    dir.clone(),
                    false,
                ),
                "couchdb" => (
                    dir.join("pouch/node_modules/.bin/pouchdb-server"),
                    [
                        "--host",
                        "127.0.0.1",
                        "--port",
                        &port,
                        "--in-memory",
                        "--no-color",
                    ]
                    .map(String::from)
                    .to_vec(),
                    dir.join("pouch"),
                    false,
                ),
                other => unreachable!("no launch recipe for service `{other}`"),
            };
        Launch {
            program,
            args,
            cwd,
            log,
            daemonizes,
            env: Vec::new(),
        }
    }
}

/// Timings of one `services up`, for the test runner's summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct UpTimings {
    /// Time spent installing missing services.
    pub install: Duration,
    /// Time spent starting services and waiting for them to answer.
    pub start: Duration,
}

/// `services up`: start every named service that is not up (a group: not
/// formed with every member answering).
pub fn up(root: &Path, names: &[String], force_native: bool) -> Result<UpTimings> {
    let selected = select(names)?;
    let dir = services_dir(root);
    std::fs::create_dir_all(&dir)?;
    let mut timings = UpTimings::default();

    let mut to_start = Vec::new();
    let mut failures = Vec::new();
    for service in selected {
        if service.is_up() {
            let by = State::load(root, service)
                .filter(State::is_live)
                .map_or("external", |s| s.mode.started_by());
            println!(
                "{:<16} already up on 127.0.0.1:{} ({by})",
                service.name, service.port
            );
        } else if service.members.is_empty() {
            to_start.push(service);
        } else {
            match clear_partial_group(root, service) {
                Ok(()) => to_start.push(service),
                Err(why) => failures.push(format!("{}: {why}", service.name)),
            }
        }
    }
    if to_start.is_empty() {
        return finish(timings, failures);
    }

    // Groups without a compose entry start natively even with Docker.
    let (to_start, native_only): (Vec<_>, Vec<_>) = if force_native {
        (to_start, Vec::new())
    } else {
        to_start.into_iter().partition(|s| s.docker_url.is_some())
    };
    if !to_start.is_empty() && !force_native && docker::engine_answers() {
        let start = Instant::now();
        if let Err(err) = docker::compose_up(root, &to_start) {
            failures.push(err.to_string());
        }
        timings.start = start.elapsed();
        if native_only.is_empty() {
            return finish(timings, failures);
        }
        return up_native(root, native_only, timings, failures);
    }
    let mut all = to_start;
    all.extend(native_only);
    up_native(root, all, timings, failures)
}

/// Install what the services lack, then start them natively.
fn up_native(
    root: &Path,
    to_start: Vec<&'static Service>,
    mut timings: UpTimings,
    mut failures: Vec<String>,
) -> Result<UpTimings> {
    let start = Instant::now();
    install::ensure_installed(root, &to_start)?;
    timings.install = start.elapsed();

    // A package's install script may have started its server already.
    let (external, to_start): (Vec<_>, Vec<_>) = to_start.into_iter().partition(|s| s.is_up());
    for service in external {
        println!(
            "{:<16} up on 127.0.0.1:{} after install (started by its package; external)",
            service.name, service.port
        );
    }

    let start = Instant::now();
    failures.extend(start_native(root, &to_start));
    timings.start += start.elapsed();
    finish(timings, failures)
}

fn finish(timings: UpTimings, failures: Vec<String>) -> Result<UpTimings> {
    if failures.is_empty() {
        Ok(timings)
    } else {
        Err(format!("services failed to start:\n  {}", failures.join("\n  ")).into())
    }
}

/// Before a group that is not up starts: stop what is left of an earlier
/// start of ours (a member died, or it never formed), then make sure no
/// port of the group is taken. A port held by something we did not start
/// is a failure naming the port and its process: we never stop that.
fn clear_partial_group(root: &Path, service: &'static Service) -> Result<(), String> {
    if let Some(state) = State::load(root, service).filter(|s| s.mode == Mode::Native) {
        if state.processes.iter().any(Proc::is_live) {
            let dead: Vec<&str> = state
                .processes
                .iter()
                .filter(|p| !p.is_live())
                .map(|p| p.name.as_str())
                .collect();
            println!(
                "{:<16} is ours but not up ({}); stopping what is left (pids {}) to start it again",
                service.name,
                if dead.is_empty() {
                    "not formed".to_owned()
                } else {
                    format!("{} exited", dead.join(", "))
                },
                state.pids()
            );
            process::stop_all(&state.processes).map_err(|e| e.to_string())?;
        }
        State::remove(root, service.name);
    }
    let taken: Vec<String> = service
        .ports()
        .into_iter()
        .filter(|&port| process::port_answers(port))
        .map(|port| match process::listener_pid(port) {
            Some(pid) => format!("{port} (pid {pid})"),
            None => port.to_string(),
        })
        .collect();
    if taken.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not up, and these of its ports are taken by processes `services up` did not \
             start: {}; stop them or free the ports",
            taken.join(", ")
        ))
    }
}

/// What one service's start came to.
type Started = std::result::Result<State, String>;

/// Start every service at once, each in a thread of its own: spawn it
/// detached and wait until it answers (a group: until it has formed).
/// Records each started service; the failures, one line each.
fn start_native(root: &Path, services: &[&'static Service]) -> Vec<String> {
    let results: Vec<(&'static Service, Started)> = std::thread::scope(|scope| {
        let handles: Vec<_> = services
            .iter()
            .map(|&service| {
                scope.spawn(move || {
                    let started = Instant::now();
                    let result = if service.members.is_empty() {
                        start_one(root, service)
                    } else {
                        group::start(root, service)
                            .map(|procs| State::native(procs, group::dir(root, service)))
                    };
                    if let Ok(state) = &result {
                        report_started(service, state, started.elapsed());
                        if let Err(err) = state.save_as(root, service.name) {
                            return (service, Err(format!("could not record it: {err}")));
                        }
                    }
                    (service, result)
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(services)
            .map(|(h, &service)| {
                h.join()
                    .unwrap_or_else(|_| (service, Err("its start panicked".into())))
            })
            .collect()
    });
    results
        .into_iter()
        .filter_map(|(service, result)| {
            let why = result.err()?;
            eprintln!("{}: {why}", service.name);
            Some(format!(
                "{}: {}",
                service.name,
                why.lines().next().unwrap_or_default()
            ))
        })
        .collect()
}

fn report_started(service: &Service, state: &State, took: Duration) {
    if service.members.is_empty() {
        println!(
            "{:<16} started on 127.0.0.1:{} in {:.1} s (pid {}, log {})",
            service.name,
            service.port,
            took.as_secs_f64(),
            state.pids(),
            state.log.display()
        );
    } else {
        let ports: Vec<String> = service.members.iter().map(|m| m.port.to_string()).collect();
        println!(
            "{:<16} started on 127.0.0.1:{} in {:.1} s ({} processes: pids {}; logs {}/)",
            service.name,
            ports.join(","),
            took.as_secs_f64(),
            state.processes.len(),
            state.pids(),
            state.log.display()
        );
    }
}

/// Start a one-process service and wait for it to answer.
fn start_one(root: &Path, service: &'static Service) -> Started {
    let launch = service.launch(root);
    if service.name == "mongodb" {
        // A fresh, empty store on every start (SERVICES.md uses mktemp -d).
        let data = services_dir(root).join("secantus-data");
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    }
    let spawned_at = Instant::now();
    let mut child =
        process::spawn_detached(&launch).map_err(|err| format!("could not start: {err}"))?;
    let deadline = spawned_at + service.ready_timeout;
    let outcome = loop {
        if service.is_up() {
            break Ok(());
        }
        // A launcher that daemonizes exits 0 on success; anything else
        // that exits has failed.
        if let Ok(Some(status)) = child.try_wait() {
            if !launch.daemonizes || !status.success() {
                break Err(format!("exited early ({status})"));
            }
        }
        if Instant::now() >= deadline {
            break Err(format!(
                "did not answer on port {} within {} s",
                service.port,
                service.ready_timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    match outcome {
        Ok(()) => Ok(State::native(
            vec![Proc::record(
                service.name,
                service.port,
                &launch,
                child.id(),
            )],
            launch.log.clone(),
        )),
        Err(why) => Err(format!(
            "{why} (log: {}); last lines:\n{}",
            launch.log.display(),
            process::tail(&launch.log, 20)
        )),
    }
}

/// `services down`: stop the named services (default: all), but only those
/// `services up` started; anything else is left alone.
pub fn down(root: &Path, names: &[String]) -> Result<()> {
    let selected = select(names)?;
    let mut docker_services = Vec::new();
    let mut failures = Vec::new();
    for service in selected {
        let Some(state) = State::load(root, service) else {
            if service.is_up() && !names.is_empty() {
                println!(
                    "{:<16} not started by xtask; leaving it alone",
                    service.name
                );
            }
            continue;
        };
        match state.mode {
            Mode::Docker => docker_services.push(service),
            Mode::Native => {
                let live: Vec<Proc> = state
                    .processes
                    .iter()
                    .filter(|p| p.is_live())
                    .cloned()
                    .collect();
                if live.is_empty() {
                    println!("{:<16} was not running (stale state removed)", service.name);
                } else if let Err(err) = process::stop_all(&live) {
                    failures.push(format!("{}: {err}", service.name));
                    continue;
                } else {
                    let pids: Vec<String> = live.iter().map(|p| p.pid.to_string()).collect();
                    println!("{:<16} stopped (pid {})", service.name, pids.join(", "));
                }
                State::remove(root, service.name);
            }
        }
    }
    if !docker_services.is_empty() {
        docker::compose_down(root, &docker_services)?;
        for service in docker_services {
            State::remove(root, service.name);
            println!("{:<16} stopped (docker compose)", service.name);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n").into())
    }
}

/// Who runs a service that is up: us (native), docker (compose), or external.
fn started_by(state: Option<&State>, up: bool) -> &'static str {
    match state {
        Some(state) if state.mode == Mode::Docker => "docker",
        Some(state) if state.is_live() => "us",
        _ if up => "external",
        _ => "-",
    }
}

/// `services status`: a table of every service; a group's members on
/// indented lines below it.
pub fn status(root: &Path) {
    println!(
        "{:<18} {:>5}  {:<4}  {:<10}  LOG",
        "NAME", "PORT", "UP", "STARTED BY"
    );
    let shown = |log: PathBuf| {
        if log.exists() {
            log.display().to_string()
        } else {
            "-".into()
        }
    };
    for service in SERVICES {
        let up = service.is_up();
        let state = State::load(root, service);
        let by = started_by(state.as_ref(), up);
        let log = state.as_ref().map_or_else(
            || {
                if service.members.is_empty() {
                    log_path(root, service)
                } else {
                    group::dir(root, service)
                }
            },
            |s| s.log.clone(),
        );
        println!(
            "{:<18} {:>5}  {:<4}  {:<10}  {}",
            service.name,
            service.port,
            if up { "up" } else { "down" },
            by,
            shown(log)
        );
        for member in service.members {
            let recorded = state
                .as_ref()
                .and_then(|s| s.processes.iter().find(|p| p.name == member.name));
            let answers = process::port_answers(member.port);
            let by = match recorded {
                Some(p) if p.is_live() => format!("pid {}", p.pid),
                Some(_) => "exited".into(),
                None if answers => "external".into(),
                None => "-".into(),
            };
            println!(
                "  {:<16} {:>5}  {:<4}  {:<10}  {}",
                member.name,
                member.port,
                if answers { "up" } else { "down" },
                by,
                shown(group::member_log(root, service, member))
            );
        }
    }
}

/// The `(variable, url)` pairs for the services that are up (a TLS
/// service also exports its certificate files and its other servers' URLs,
/// see [`tls::extra_env`]).
pub fn env_pairs(root: &Path) -> Vec<(&'static str, String)> {
    let mut pairs: Vec<(&'static str, String)> = Vec::new();
    for s in SERVICES.iter().filter(|s| s.is_up()) {
        let docker = State::load(root, s).is_some_and(|st| st.mode == Mode::Docker);
        let url = match s.docker_url {
            Some(docker_url) if docker => docker_url,
            _ => s.url,
        };
        pairs.push((s.env_var, tls::expand(root, url)));
        if s.formation() == Some(Formation::TlsServers) {
            for pair in tls::extra_env(root, s) {
                if !pairs.iter().any(|(var, _)| *var == pair.0) {
                    pairs.push(pair);
                }
            }
        }
    }
    pairs
}

/// `services env`: `export VAR='url'` lines, for `eval "$(cargo xtask services env)"`.
pub fn print_env(root: &Path) {
    for (var, url) in env_pairs(root) {
        println!("export {var}='{url}'");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compose file, parsed.
    fn compose() -> serde_norway::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
        let text = std::fs::read_to_string(&path).expect("read docker-compose.yml");
        serde_norway::from_str(&text).expect("docker-compose.yml is valid YAML")
    }

    fn keys(mapping: &serde_norway::Value) -> Vec<&str> {
        let mut keys: Vec<&str> = mapping
            .as_mapping()
            .map(|m| m.keys().filter_map(|k| k.as_str()).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn compose_services_match_the_native_table() {
        let compose = compose();
        let services = &compose["services"];
        assert!(services.is_mapping(), "`services` is a mapping");
        let (in_docker, native_only): (Vec<&Service>, Vec<&Service>) =
            SERVICES.iter().partition(|s| s.docker_url.is_some());
        let mut expected: Vec<&str> = in_docker.iter().map(|s| s.name).collect();
        expected.sort_unstable();
        assert_eq!(
            keys(services),
            expected,
            "compose services == xtask services with a docker_url"
        );
        let mut expected: Vec<&str> = native_only.iter().map(|s| s.name).collect();
        expected.sort_unstable();
        let listed = &compose["x-native-only"];
        assert_eq!(
            keys(listed),
            expected,
            "x-native-only == xtask services without a docker_url"
        );
        for service in &native_only {
            let why = listed[service.name].as_str().unwrap_or_default();
            assert!(!why.is_empty(), "{}: x-native-only says why", service.name);
        }

        for service in in_docker {
            let def = &services[service.name];
            let image = def["image"].as_str().unwrap_or_default();
            assert!(!image.is_empty(), "{}: has an image", service.name);
            assert!(
                def["healthcheck"]["test"].is_sequence() || def["healthcheck"]["test"].is_string(),
                "{}: has a healthcheck test",
                service.name
            );
            let ports: Vec<&str> = def["ports"]
                .as_sequence()
                .unwrap_or_else(|| panic!("{}: has ports", service.name))
                .iter()
                .filter_map(|p| p.as_str())
                .collect();
            // A group publishes every member's client port, on the same port.
            let wanted: Vec<u16> = if service.members.is_empty() {
                vec![service.port]
            } else {
                service.members.iter().map(|m| m.port).collect()
            };
            for port in wanted {
                let host = format!("127.0.0.1:{port}:");
                let same = format!("127.0.0.1:{port}:{port}");
                assert!(
                    ports.iter().any(|p| p.starts_with(&host))
                        && (service.members.is_empty() || ports.contains(&same.as_str())),
                    "{}: publishes {host}... (got {ports:?})",
                    service.name
                );
            }
        }
    }

    #[test]
    fn names_ports_and_variables_are_unique() {
        let mut all_ports: Vec<u16> = SERVICES.iter().flat_map(Service::ports).collect();
        let count = all_ports.len();
        all_ports.sort_unstable();
        all_ports.dedup();
        assert_eq!(
            all_ports.len(),
            count,
            "every port is bound by one service only"
        );
        for (i, a) in SERVICES.iter().enumerate() {
            for b in &SERVICES[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.env_var, b.env_var);
            }
            assert!(a.env_var.starts_with("KOMBU_TEST_") && a.env_var.ends_with("_URL"));
            assert!(a.url.contains(&format!("127.0.0.1:{}", a.port)));
            if let Some(docker_url) = a.docker_url {
                assert!(docker_url.contains(&format!("127.0.0.1:{}", a.port)));
            }
        }
    }

    #[test]
    fn groups_are_consistent() {
        for service in SERVICES {
            assert_eq!(
                service.members.is_empty(),
                service.formation().is_none(),
                "{}: members iff a group readiness",
                service.name
            );
            if service.members.is_empty() {
                continue;
            }
            assert!(
                service.members.iter().any(|m| m.port == service.port),
                "{}: its port is a member's",
                service.name
            );
            let mut names: Vec<&str> = service.members.iter().map(|m| m.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(
                names.len(),
                service.members.len(),
                "{}: member names",
                service.name
            );
            for member in service.members {
                if let Role::RedisReplica { master } | Role::Sentinel { master } = member.role {
                    assert!(
                        service
                            .members
                            .iter()
                            .any(|m| m.port == master && m.role == Role::RedisMaster),
                        "{}: {} follows a master of the group",
                        service.name,
                        member.name
                    );
                }
            }
            // A failover list: `;`-separated URLs of members; a query (the
            // core reads the first URL's) only on the first.
            for (n, item) in service.url.split(';').enumerate() {
                assert!(item.contains("127.0.0.1:"), "{}: {item}", service.name);
                assert!(
                    n == 0 || !item.contains('?'),
                    "{}: query on URL {n}",
                    service.name
                );
                let port: u16 = item
                    .split("127.0.0.1:")
                    .nth(1)
                    .and_then(|rest| rest.split(['/', '?']).next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("{}: port in {item}", service.name));
                assert!(
                    service.members.iter().any(|m| m.port == port),
                    "{}: URL {item} names a member",
                    service.name
                );
            }
        }
        let sentinel = select(&["redis-sentinel".into()]).unwrap()[0];
        assert_eq!(
            sentinel.url,
            "sentinel://127.0.0.1:26379/0?master_name=kombu;\
             sentinel://127.0.0.1:26380/0;sentinel://127.0.0.1:26381/0"
        );
    }

    #[test]
    fn select_rejects_unknown_names() {
        assert_eq!(select(&[]).unwrap().len(), SERVICES.len());
        assert_eq!(select(&["redis".into()]).unwrap()[0].port, 6379);
        let err = select(&["kafka".into()]).unwrap_err().to_string();
        assert!(err.contains("kafka") && err.contains("rabbitmq"), "{err}");
    }

    #[test]
    fn every_service_has_a_launch_recipe() {
        let root = Path::new("/nonexistent");
        for service in SERVICES {
            if service.members.is_empty() {
                let launch = service.launch(root);
                assert!(
                    launch.args.contains(&service.port.to_string()) || service.name == "rabbitmq"
                );
                continue;
            }
            for member in service.members {
                let launch = group::launch(root, service, member);
                let port = member.port.to_string();
                let named = launch.args.contains(&port)
                    || launch.env.iter().any(|(k, v)| k == "RABBITMQ_NODE_PORT" && *v == port)
                    // A TLS node's listeners are in its rabbitmq.conf.
                    || matches!(member.role, Role::RabbitTls { .. })
                    // A sentinel's port is in the configuration it is given.
                    || matches!(member.role, Role::Sentinel { .. });
                assert!(named, "{}: {}", service.name, launch.command_line());
                assert!(!launch.daemonizes, "group members run in the foreground");
                assert!(
                    launch.log.starts_with("/nonexistent/.services")
                        && launch.cwd.starts_with("/nonexistent/.services"),
                    "{}: under .services/",
                    member.name
                );
            }
        }
    }
}
