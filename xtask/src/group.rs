//! Group services: several native server processes started together and
//! formed into one (a Redis Sentinel group, a Redis Cluster, a RabbitMQ
//! cluster). The members and their ports are rows of the service table
//! ([`Service::members`]); this module knows how to launch each role, how to
//! form each kind of group, and how to tell that one has formed.
//!
//! A group always starts clean: its folder `.services/<name>/` (data,
//! configuration, `nodes-*.conf`, Mnesia, logs) is emptied first. Every wait
//! has a deadline (the service's `ready_timeout` for the whole start); a
//! member that exits is a failure at once, naming it with its log's last
//! lines; and a group that fails to form is stopped, so no half group stays
//! behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::process::{self, Launch};
use crate::resp::{self, info_field, Reply};
use crate::services::{services_dir, Formation, Member, Role, Service};
use crate::state::Proc;

/// RabbitMQ's start script that runs a node in the foreground as the
/// calling user (`/usr/sbin/rabbitmq-server` switches to the `rabbitmq`
/// user and its `/var/lib/rabbitmq`, which a private node must not use).
pub const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// RabbitMQ's control tool, run as the calling user with the group's cookie.
pub const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
/// How long one `rabbitmqctl` or `redis-cli --cluster` call may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// Log lines quoted when a member fails.
const TAIL_LINES: usize = 20;

/// The group's folder: `.services/<name>/`. Its members' logs are
/// `<member>.log` in it, their data in `<member>/`.
pub fn dir(root: &Path, service: &Service) -> PathBuf {
    services_dir(root).join(service.name)
}

fn member_dir(root: &Path, service: &Service, member: &Member) -> PathBuf {
    dir(root, service).join(member.name)
}

/// A member's log file.
pub fn member_log(root: &Path, service: &Service, member: &Member) -> PathBuf {
    dir(root, service).join(format!("{}.log", member.name))
}

/// The Erlang cookie the RabbitMQ nodes share, and `rabbitmqctl` reads: in
/// `$HOME/.erlang.cookie` with `HOME` the group's folder.
fn new_cookie() -> String {
    format!(
        "KOMBUXTASK{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

/// How to start one member (in the foreground: its PID is the server's,
/// or for RabbitMQ the start script's, whose process group holds the node).
pub fn launch(root: &Path, service: &Service, member: &Member) -> Launch {
    let data = member_dir(root, service, member);
    let data_str = data.display().to_string();
    let port = member.port.to_string();
    let redis = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            // A replica's first sync at once, not after the default 5 s.
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
            &data_str,
            "--daemonize",
            "no",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let (program, args, env) = match member.role {
        Role::RedisMaster => ("redis-server".into(), redis(&[]), Vec::new()),
        Role::RedisReplica { master } => (
            "redis-server".into(),
            redis(&["--replicaof", "127.0.0.1", &master.to_string()]),
            Vec::new(),
        ),
        Role::Sentinel { .. } => (
            "redis-server".into(),
            vec![
                data.join("sentinel.conf").display().to_string(),
                "--sentinel".into(),
            ],
            Vec::new(),
        ),
        Role::ClusterNode => {
            let conf = dir(root, service).join(format!("nodes-{}.conf", member.port));
            (
                "redis-server".into(),
                redis(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf.display().to_string(),
                ]),
                Vec::new(),
            )
        }
        Role::RedisTls { server } => (
            "redis-server".into(),
            crate::tls::redis_args(root, server, member.port, &data),
            Vec::new(),
        ),
        Role::RabbitNode { node, dist_port }
        | Role::RabbitTls {
            node, dist_port, ..
        } => {
            let var = |k: &str, v: String| (k.to_owned(), v);
            let path = |p: &str| data.join(p).display().to_string();
            let mut env = vec![
                // The shared cookie is `$HOME/.erlang.cookie`.
                var("HOME", dir(root, service).display().to_string()),
                var("RABBITMQ_NODENAME", node.into()),
                var("RABBITMQ_DIST_PORT", dist_port.to_string()),
                var(
                    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                    "-kernel inet_dist_use_interface {127,0,0,1}".into(),
                ),
                var("RABBITMQ_MNESIA_BASE", path("mnesia")),
                var("RABBITMQ_LOG_BASE", path("log")),
                var("RABBITMQ_PID_FILE", path("pid")),
                // `[].`: no plugins, so no management listener.
                var("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins")),
                // No configuration files (absent paths are fine), and not
                // the machine's env file (it names the machine's node).
                var("RABBITMQ_CONFIG_FILE", path("rabbitmq")),
                var("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config")),
                var("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf")),
            ];
            // A TLS node's listeners are in its rabbitmq.conf.
            if matches!(member.role, Role::RabbitNode { .. }) {
                env.push(var("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()));
                env.push(var("RABBITMQ_NODE_PORT", port.clone()));
            }
            (RABBITMQ_SERVER.into(), Vec::new(), env)
        }
    };
    Launch {
        program,
        args,
        cwd: data,
        log: member_log(root, service, member),
        daemonizes: false,
        env,
    }
}

/// Whether a group whose members all answer has formed, by quick checks
/// (no process started): the sentinel on the service's port names a
/// master; every Redis Cluster node says `cluster_state:ok` with all slots
/// assigned. A RabbitMQ cluster counts as formed when its nodes answer
/// (`rabbitmqctl` takes seconds; `services up` checks membership with it
/// before it records the group).
pub fn formed(service: &Service) -> bool {
    match service.formation() {
        Some(Formation::Sentinel { master_name, .. }) => resp::command(
            service.port,
            &["SENTINEL", "get-master-addr-by-name", master_name],
        )
        .is_ok_and(|reply| reply.items().len() == 2),
        Some(Formation::RedisCluster { .. }) => service
            .members
            .iter()
            .all(|m| cluster_ok(m.port, service.members.len())),
        // The servers read their certificates at start: with the files
        // gone (made again by the next start) they are not up.
        Some(Formation::TlsServers) => crate::tls::certificates_present(&crate::workspace_root()),
        Some(Formation::RabbitCluster) | None => true,
    }
}

/// `CLUSTER INFO` on `port`: state ok, every slot assigned, `nodes` known.
fn cluster_ok(port: u16, nodes: usize) -> bool {
    let Ok(reply) = resp::command(port, &["CLUSTER", "INFO"]) else {
        return false;
    };
    let info = reply.text().unwrap_or_default();
    info_field(info, "cluster_state") == Some("ok")
        && info_field(info, "cluster_slots_assigned") == Some("16384")
        && info_field(info, "cluster_known_nodes") == Some(nodes.to_string().as_str())
}

/// How many entries (replicas, sentinels) a `SENTINEL <what> <master>` lists.
fn sentinel_count(port: u16, what: &str, master: &str) -> Option<usize> {
    match resp::command(port, &["SENTINEL", what, master]).ok()? {
        Reply::Array(Some(items)) => Some(items.len()),
        _ => None,
    }
}

/// A group being started: the members spawned so far, and the deadline.
struct Starting<'a> {
    root: &'a Path,
    service: &'static Service,
    started: Instant,
    deadline: Instant,
    spawned: Vec<(&'static Member, Launch, Child)>,
}

/// An error naming the group and what failed.
type Failure = String;

impl Starting<'_> {
    /// Spawn `members` (detached, each in its own session).
    fn spawn(&mut self, members: &[&'static Member]) -> Result<(), Failure> {
        for &member in members {
            let launch = launch(self.root, self.service, member);
            std::fs::create_dir_all(&launch.cwd).map_err(|e| e.to_string())?;
            let child = process::spawn_detached(&launch)
                .map_err(|e| format!("{}: could not start: {e}", member.name))?;
            self.spawned.push((member, launch, child));
        }
        Ok(())
    }

    /// A spawned member that has exited, named, with its log's last lines.
    fn check_alive(&mut self) -> Result<(), Failure> {
        for (member, launch, child) in &mut self.spawned {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "member {} (port {}) exited ({status}; log {})\n{}",
                    member.name,
                    member.port,
                    launch.log.display(),
                    process::tail(&launch.log, TAIL_LINES)
                ));
            }
        }
        Ok(())
    }

    /// Poll `ready` every 100 ms until it holds; fail at once when a member
    /// exits, or at the deadline.
    fn wait(&mut self, what: &str, mut ready: impl FnMut() -> bool) -> Result<(), Failure> {
        loop {
            self.check_alive()?;
            if ready() {
                return Ok(());
            }
            if Instant::now() >= self.deadline {
                return Err(format!(
                    "{what}: not within {} s of the start",
                    self.service.ready_timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until every member spawned so far answers on its port.
    fn wait_ports(&mut self) -> Result<(), Failure> {
        let ports: Vec<(&str, u16)> = self
            .spawned
            .iter()
            .map(|(m, ..)| (m.name, m.port))
            .collect();
        for (name, port) in ports {
            self.wait(&format!("member {name} answering on port {port}"), || {
                process::port_answers(port)
            })?;
        }
        Ok(())
    }

    /// The time left before the deadline, for a bounded command.
    fn left(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .min(COMMAND_LIMIT)
    }

    /// Stop every member spawned: SIGTERM to its session (we made each
    /// child a session leader), then SIGKILL. By the child's PID, never by
    /// whoever listens on the member's port.
    fn abort(self) {
        let procs: Vec<Proc> = self
            .spawned
            .iter()
            .filter_map(|(member, launch, child)| {
                let start = process::start_time(child.id())?;
                Some(Proc {
                    name: member.name.to_owned(),
                    port: 0,
                    pid: child.id(),
                    start_time: start,
                    group: Some((child.id(), start)),
                    command: launch.command_line(),
                    log: launch.log.clone(),
                })
            })
            .collect();
        let _ = process::stop_all(&procs);
        for (_, _, mut child) in self.spawned {
            let _ = child.wait();
        }
    }
}

/// Start `service`'s group from a clean folder and wait until it has
/// formed; the processes to record. On failure every member started is
/// stopped again and the error names the member or step that failed.
pub fn start(root: &Path, service: &'static Service) -> Result<Vec<Proc>, Failure> {
    let started = Instant::now();
    let mut group = Starting {
        root,
        service,
        started,
        deadline: started + service.ready_timeout,
        spawned: Vec::new(),
    };
    let dir = dir(root, service);
    let prepared = (|| {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)
    })()
    .map_err(|e| format!("could not empty {}: {e}", dir.display()));
    let outcome = prepared.and_then(|()| match service.formation() {
        Some(Formation::Sentinel {
            master_name,
            quorum,
        }) => form_sentinel(&mut group, master_name, quorum),
        Some(Formation::RedisCluster { replicas }) => form_redis_cluster(&mut group, replicas),
        Some(Formation::RabbitCluster) => form_rabbit_cluster(&mut group),
        Some(Formation::TlsServers) => start_tls_servers(&mut group),
        None => Err("not a group service".into()),
    });
    match outcome {
        Ok(()) => Ok(group
            .spawned
            .iter()
            .map(|(member, launch, child)| {
                Proc::record(member.name, member.port, launch, child.id())
            })
            .collect()),
        Err(why) => {
            // The first line says what failed; any more are its details.
            let at = group.started.elapsed().as_secs_f64();
            group.abort();
            let (what, details) = why.split_once('\n').unwrap_or((&why, ""));
            Err(
                format!("{what} ({at:.1} s into the start; the group was stopped)\n{details}")
                    .trim_end()
                    .to_owned(),
            )
        }
    }
}

fn members_where(service: &'static Service, pick: fn(&Role) -> bool) -> Vec<&'static Member> {
    service.members.iter().filter(|m| pick(&m.role)).collect()
}

/// Master and replica first; once the replica is in sync, the sentinels
/// (so the sentinels' first look at the master lists the replica), then
/// until each sentinel knows every replica and every other sentinel.
fn form_sentinel(group: &mut Starting, master_name: &str, quorum: u8) -> Result<(), Failure> {
    let service = group.service;
    let redis = members_where(service, |r| !matches!(r, Role::Sentinel { .. }));
    let sentinels = members_where(service, |r| matches!(r, Role::Sentinel { .. }));
    group.spawn(&redis)?;
    group.wait_ports()?;
    for replica in members_where(service, |r| matches!(r, Role::RedisReplica { .. })) {
        group.wait(&format!("replica {} in sync", replica.name), || {
            resp::command(replica.port, &["INFO", "replication"]).is_ok_and(|reply| {
                info_field(reply.text().unwrap_or_default(), "master_link_status") == Some("up")
            })
        })?;
    }
    for sentinel in &sentinels {
        let Role::Sentinel { master } = sentinel.role else {
            unreachable!()
        };
        let dir = member_dir(group.root, service, sentinel);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        // A sentinel rewrites its configuration file: one each.
        let conf = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {master_name} 127.0.0.1 {master} {quorum}\n\
             sentinel down-after-milliseconds {master_name} 5000\n\
             sentinel failover-timeout {master_name} 10000\n",
            port = sentinel.port,
            dir = dir.display(),
        );
        std::fs::write(dir.join("sentinel.conf"), conf).map_err(|e| e.to_string())?;
    }
    group.spawn(&sentinels)?;
    group.wait_ports()?;
    let replicas = service.members.len() - sentinels.len() - 1;
    for sentinel in &sentinels {
        group.wait(
            &format!(
                "sentinel {} knowing {replicas} replica(s) and {} other sentinel(s)",
                sentinel.name,
                sentinels.len() - 1
            ),
            || {
                sentinel_count(sentinel.port, "replicas", master_name) == Some(replicas)
                    && sentinel_count(sentinel.port, "sentinels", master_name)
                        == Some(sentinels.len() - 1)
            },
        )?;
    }
    Ok(())
}

/// Every node, then `redis-cli --cluster create`, then until every node
/// says `cluster_state:ok`, all 16384 slots assigned, all nodes known.
fn form_redis_cluster(group: &mut Starting, replicas: u8) -> Result<(), Failure> {
    let service = group.service;
    let nodes: Vec<&'static Member> = service.members.iter().collect();
    group.spawn(&nodes)?;
    group.wait_ports()?;
    let mut create = Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for node in &nodes {
        create.arg(format!("127.0.0.1:{}", node.port));
    }
    create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
    let out = dir(group.root, service).join("cluster-create.log");
    process::run_bounded(&mut create, &out, group.left()).map_err(|e| e.to_string())?;
    let count = nodes.len();
    for node in &nodes {
        group.wait(
            &format!(
                "node {} reporting cluster_state:ok, 16384 slots assigned and {count} nodes known",
                node.name
            ),
            || cluster_ok(node.port, count),
        )?;
    }
    Ok(())
}

/// `rabbitmqctl -n <node> <args>` with the group's cookie (`HOME`), output
/// to `<group>/rabbitmqctl-<member>.log`.
fn rabbitmqctl(
    root: &Path,
    service: &Service,
    member: &Member,
    args: &[&str],
    limit: Duration,
) -> Result<String, Failure> {
    let Role::RabbitNode { node, .. } = member.role else {
        return Err(format!("{} is not a RabbitMQ node", member.name));
    };
    let dir = dir(root, service);
    let out = dir.join(format!("rabbitmqctl-{}.log", member.name));
    process::run_bounded(
        Command::new(RABBITMQCTL)
            .env("HOME", &dir)
            .args(["-n", node])
            .args(args),
        &out,
        limit,
    )
    .map_err(|e| e.to_string())
}

/// Every node at once (sharing a fresh cookie, no plugins); once each
/// answers, every node but the first joins the first (`stop_app`,
/// `join_cluster`, `start_app`, the nodes in parallel); then until the
/// first node's `cluster_status` lists every node as running.
fn form_rabbit_cluster(group: &mut Starting) -> Result<(), Failure> {
    let service = group.service;
    let root = group.root;
    let dir = dir(root, service);
    let cookie = dir.join(".erlang.cookie");
    (|| -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(&cookie, new_cookie())?;
        // Erlang wants the cookie readable by its owner only.
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))?;
        for member in service.members {
            let data = member_dir(root, service, member);
            std::fs::create_dir_all(&data)?;
            std::fs::write(data.join("enabled_plugins"), "[].\n")?;
        }
        Ok(())
    })()
    .map_err(|e| format!("could not prepare {}: {e}", dir.display()))?;
    let nodes: Vec<&'static Member> = service.members.iter().collect();
    group.spawn(&nodes)?;
    group.wait_ports()?;
    let Some((first, rest)) = nodes.split_first() else {
        return Ok(());
    };
    let Role::RabbitNode {
        node: first_node, ..
    } = first.role
    else {
        return Err(format!("{} is not a RabbitMQ node", first.name));
    };
    let limit = group.left();
    let joins: Vec<Result<(), Failure>> = std::thread::scope(|scope| {
        let handles: Vec<_> = rest
            .iter()
            .map(|member| {
                scope.spawn(move || {
                    for args in [
                        &["stop_app"][..],
                        &["join_cluster", first_node],
                        &["start_app"],
                    ] {
                        rabbitmqctl(root, service, member, args, limit).map_err(|e| {
                            format!("member {} joining {first_node}: {e}", member.name)
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("join thread panicked".into()))
            })
            .collect()
    });
    joins.into_iter().collect::<Result<Vec<()>, Failure>>()?;
    group.wait_ports()?;
    let names: Vec<&str> = nodes
        .iter()
        .filter_map(|m| match m.role {
            Role::RabbitNode { node, .. } => Some(node),
            _ => None,
        })
        .collect();
    let mut last = String::new();
    let deadline = group.deadline;
    let formed = group.wait("every node running in one cluster", || {
        // Each look within what is left of the deadline.
        let limit = deadline
            .saturating_duration_since(Instant::now())
            .min(COMMAND_LIMIT);
        match rabbitmqctl(
            root,
            service,
            first,
            &["cluster_status", "--formatter", "json"],
            limit,
        ) {
            Ok(out) => {
                let running: Vec<String> = serde_json::from_str::<serde_json::Value>(&out)
                    .ok()
                    .and_then(|v| {
                        v["running_nodes"].as_array().map(|nodes| {
                            nodes
                                .iter()
                                .filter_map(|n| n.as_str().map(str::to_owned))
                                .collect()
                        })
                    })
                    .unwrap_or_default();
                last = format!("running_nodes: {running:?}");
                names.iter().all(|n| running.iter().any(|r| r == n))
            }
            Err(e) => {
                last = e;
                false
            }
        }
    });
    formed.map_err(|e| format!("{e}; last cluster_status: {last}"))
}

/// The certificates (made once, see [`crate::tls`]), then every member at
/// once (a RabbitMQ node with its `rabbitmq.conf`, a fresh cookie and no
/// plugins), until each answers on its port.
fn start_tls_servers(group: &mut Starting) -> Result<(), Failure> {
    let service = group.service;
    let root = group.root;
    crate::tls::ensure_certificates(root)?;
    let dir = dir(root, service);
    (|| -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        for member in service.members {
            let data = member_dir(root, service, member);
            std::fs::create_dir_all(&data)?;
            if let Role::RabbitTls { server, .. } = member.role {
                std::fs::write(data.join("enabled_plugins"), "[].\n")?;
                std::fs::write(
                    data.join("rabbitmq.conf"),
                    crate::tls::rabbitmq_conf(root, server, member.port),
                )?;
                let cookie = dir.join(".erlang.cookie");
                if !cookie.exists() {
                    std::fs::write(&cookie, new_cookie())?;
                    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))?;
                }
            }
        }
        Ok(())
    })()
    .map_err(|e| format!("could not prepare {}: {e}", dir.display()))?;
    let members: Vec<&'static Member> = service.members.iter().collect();
    group.spawn(&members)?;
    group.wait_ports()
}
