//! The integration services: the single table of names, ports and URLs, and
//! the `services up|down|status|env` commands built on it.
//!
//! `docker-compose.yml` must use the same service names and host ports (a unit
//! test below checks it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::install::{self, Install};
use crate::process::{self, Launch};
use crate::state::{Mode, State};
use crate::{docker, Result};

/// How to tell that a started service accepts work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// A TCP connection to the port succeeds.
    Tcp,
    /// A plain HTTP `GET` of this path answers `200`.
    HttpOk(&'static str),
}

/// One integration service: everything the xtask knows about it.
#[derive(Debug)]
pub struct Service {
    /// The name used on the command line and in `docker-compose.yml`.
    pub name: &'static str,
    /// The standard port, on 127.0.0.1.
    pub port: u16,
    /// The variable the tests read the broker URL from.
    pub env_var: &'static str,
    /// The URL exported for the native stand-in.
    pub url: &'static str,
    /// The URL exported when the service runs from `docker-compose.yml`.
    pub docker_url: &'static str,
    /// How to install the native stand-in.
    pub install: Install,
    /// How to tell it is ready.
    pub readiness: Readiness,
    /// How long to wait for it to become ready after starting it.
    pub ready_timeout: Duration,
}

/// Every integration service, in start order. The single source of truth for
/// names, ports and URLs.
pub const SERVICES: &[Service] = &[
    Service {
        name: "rabbitmq",
        port: 5672,
        env_var: "KOMBU_TEST_AMQP_URL",
        url: "amqp://guest:guest@127.0.0.1:5672//",
        docker_url: "amqp://guest:guest@127.0.0.1:5672//",
        install: Install::Apt {
            package: "rabbitmq-server",
            binary: "/usr/sbin/rabbitmq-server",
        },
        readiness: Readiness::Tcp,
        ready_timeout: Duration::from_secs(60),
    },
    Service {
        name: "redis",
        port: 6379,
        env_var: "KOMBU_TEST_REDIS_URL",
        url: "redis://127.0.0.1:6379/0",
        docker_url: "redis://127.0.0.1:6379/0",
        install: Install::Apt {
            package: "redis-server",
            binary: "/usr/bin/redis-server",
        },
        readiness: Readiness::Tcp,
        ready_timeout: Duration::from_secs(30),
    },
    Service {
        // One sentinel watching the redis service as master `kombu`: what
        // `sentinel://` URLs connect through. (No replica: the failover
        // test starts a master, a replica and three sentinels of its own.)
        name: "redis-sentinel",
        port: 26379,
        env_var: "KOMBU_TEST_REDIS_SENTINEL_URL",
        url: "sentinel://127.0.0.1:26379/0?master_name=kombu",
        docker_url: "sentinel://127.0.0.1:26379/0?master_name=kombu",
        install: Install::Apt {
            package: "redis-server",
            binary: "/usr/bin/redis-server",
        },
        readiness: Readiness::Tcp,
        ready_timeout: Duration::from_secs(30),
    },
    Service {
        name: "beanstalkd",
        port: 11300,
        env_var: "KOMBU_TEST_BEANSTALK_URL",
        url: "beanstalk://127.0.0.1:11300",
        docker_url: "beanstalk://127.0.0.1:11300",
        install: Install::Apt {
            package: "beanstalkd",
            binary: "/usr/bin/beanstalkd",
        },
        readiness: Readiness::Tcp,
        ready_timeout: Duration::from_secs(30),
    },
    Service {
        name: "sqs",
        port: 4566,
        env_var: "KOMBU_TEST_SQS_URL",
        url: "sqs://test:test@127.0.0.1:4566",
        docker_url: "sqs://test:test@127.0.0.1:4566",
        install: Install::PythonVenv {
            dir: "moto",
            requirement: "moto[server]==5.2.5",
        },
        readiness: Readiness::HttpOk("/moto-api/"),
        ready_timeout: Duration::from_secs(30),
    },
    Service {
        name: "mongodb",
        port: 27017,
        env_var: "KOMBU_TEST_MONGODB_URL",
        url: "mongodb://127.0.0.1:27017/kombu_test?retryWrites=false",
        docker_url: "mongodb://127.0.0.1:27017/kombu_test?retryWrites=false",
        install: Install::PythonVenv {
            dir: "secantus",
            requirement: "secantusdb==0.7.0b3",
        },
        readiness: Readiness::Tcp,
        ready_timeout: Duration::from_secs(30),
    },
    Service {
        name: "couchdb",
        port: 5984,
        env_var: "KOMBU_TEST_COUCHDB_URL",
        url: "couchdb://127.0.0.1:5984/kombu_test",
        docker_url: "couchdb://admin:admin@127.0.0.1:5984/kombu_test",
        install: Install::Npm {
            dir: "pouch",
            package: "pouchdb-server@4.2.0",
        },
        readiness: Readiness::HttpOk("/"),
        ready_timeout: Duration::from_secs(30),
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

/// The redis-sentinel service's configuration file (a sentinel rewrites
/// its own): written fresh on every start.
fn sentinel_conf(root: &Path) -> PathBuf {
    services_dir(root).join("redis-sentinel.conf")
}

/// What the sentinel starts from: it watches the redis service as `kombu`.
const SENTINEL_CONF: &str = "bind 127.0.0.1\n\
    sentinel monitor kombu 127.0.0.1 6379 1\n\
    sentinel down-after-milliseconds kombu 5000\n";

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
    /// Whether something answers on this service's port (and, for HTTP
    /// services, answers `200` on the readiness path).
    pub fn is_up(&self) -> bool {
        match self.readiness {
            Readiness::Tcp => process::port_answers(self.port),
            Readiness::HttpOk(path) => process::http_ok(self.port, path),
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
                "redis-sentinel" => (
                    "redis-server".into(),
                    [
                        &sentinel_conf(root).display().to_string(),
                        "--sentinel",
                        "--port",
                        &port,
                        "--daemonize",
                        "yes",
                        "--logfile",
                        &log.display().to_string(),
                    ]
                    .map(String::from)
                    .to_vec(),
                    "/".into(),
                    true,
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

/// `services up`: start every named service whose port does not answer.
pub fn up(root: &Path, names: &[String], force_native: bool) -> Result<UpTimings> {
    let selected = select(names)?;
    let dir = services_dir(root);
    std::fs::create_dir_all(&dir)?;
    let mut timings = UpTimings::default();

    let mut to_start = Vec::new();
    for service in selected {
        if service.is_up() {
            let by = State::load(root, service.name)
                .filter(State::is_live)
                .map_or("external", |s| s.mode.started_by());
            println!(
                "{:<10} already up on 127.0.0.1:{} ({by})",
                service.name, service.port
            );
        } else {
            to_start.push(service);
        }
    }
    if to_start.is_empty() {
        return Ok(timings);
    }

    if !force_native && docker::engine_answers() {
        let start = Instant::now();
        docker::compose_up(root, &to_start)?;
        timings.start = start.elapsed();
        return Ok(timings);
    }

    let start = Instant::now();
    install::ensure_installed(root, &to_start)?;
    timings.install = start.elapsed();

    // A package's install script may have started its server already.
    let (external, to_start): (Vec<_>, Vec<_>) = to_start.into_iter().partition(|s| s.is_up());
    for service in external {
        println!(
            "{:<10} up on 127.0.0.1:{} after install (started by its package; external)",
            service.name, service.port
        );
    }

    let start = Instant::now();
    let result = start_native(root, &to_start);
    timings.start = start.elapsed();
    result.map(|()| timings)
}

/// Spawn every service detached, then wait for each to answer.
fn start_native(root: &Path, services: &[&'static Service]) -> Result<()> {
    let mut started = Vec::new();
    let mut failures = Vec::new();
    for &service in services {
        let launch = service.launch(root);
        if service.name == "redis-sentinel" {
            std::fs::write(sentinel_conf(root), SENTINEL_CONF)?;
        }
        if service.name == "mongodb" {
            // A fresh, empty store on every start (SERVICES.md uses mktemp -d).
            let data = services_dir(root).join("secantus-data");
            let _ = std::fs::remove_dir_all(&data);
            std::fs::create_dir_all(&data)?;
        }
        match process::spawn_detached(&launch) {
            Ok(child) => started.push((service, launch, child, Instant::now())),
            Err(err) => failures.push(format!("{}: could not start: {err}", service.name)),
        }
    }

    for (service, launch, mut child, spawned_at) in started {
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
            Ok(()) => {
                let state = State::record(service, &launch, child.id());
                let pid = state.pid;
                state.save_as(root, service.name)?;
                println!(
                    "{:<10} started on 127.0.0.1:{} in {:.1} s (pid {pid}, log {})",
                    service.name,
                    service.port,
                    spawned_at.elapsed().as_secs_f64(),
                    launch.log.display()
                );
            }
            Err(why) => {
                let tail = process::tail(&launch.log, 20);
                eprintln!(
                    "{}: {why}; last lines of {}:\n{tail}",
                    service.name,
                    launch.log.display()
                );
                failures.push(format!(
                    "{}: {why} (log: {})",
                    service.name,
                    launch.log.display()
                ));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("services failed to start:\n  {}", failures.join("\n  ")).into())
    }
}

/// `services down`: stop the named services (default: all), but only those
/// `services up` started; anything else is left alone.
pub fn down(root: &Path, names: &[String]) -> Result<()> {
    let selected = select(names)?;
    let mut docker_services = Vec::new();
    for service in selected {
        let Some(state) = State::load(root, service.name) else {
            if service.is_up() && !names.is_empty() {
                println!(
                    "{:<10} not started by xtask; leaving it alone",
                    service.name
                );
            }
            continue;
        };
        match state.mode {
            Mode::Docker => docker_services.push(service),
            Mode::Native => {
                if state.is_live() {
                    process::stop(&state, service.port)?;
                    println!("{:<10} stopped (pid {})", service.name, state.pid);
                } else {
                    println!("{:<10} was not running (stale state removed)", service.name);
                }
                State::remove(root, service.name);
            }
        }
    }
    if !docker_services.is_empty() {
        docker::compose_down(root, &docker_services)?;
        for service in docker_services {
            State::remove(root, service.name);
            println!("{:<10} stopped (docker compose)", service.name);
        }
    }
    Ok(())
}

/// Who runs a service that is up: us (native), docker (compose), or external.
fn started_by(root: &Path, service: &Service, up: bool) -> &'static str {
    match State::load(root, service.name) {
        Some(state) if state.mode == Mode::Docker => "docker",
        Some(state) if state.is_live() => "us",
        _ if up => "external",
        _ => "-",
    }
}

/// `services status`: a table of every service.
pub fn status(root: &Path) {
    println!(
        "{:<10} {:>5}  {:<4}  {:<10}  LOG",
        "NAME", "PORT", "UP", "STARTED BY"
    );
    for service in SERVICES {
        let up = service.is_up();
        let by = started_by(root, service, up);
        let log = State::load(root, service.name)
            .map(|s| s.log)
            .unwrap_or_else(|| log_path(root, service));
        let log = if log.exists() {
            log.display().to_string()
        } else {
            "-".into()
        };
        println!(
            "{:<10} {:>5}  {:<4}  {:<10}  {log}",
            service.name,
            service.port,
            if up { "up" } else { "down" },
            by
        );
    }
}

/// The `(variable, url)` pairs for the services that are up.
pub fn env_pairs(root: &Path) -> Vec<(&'static str, &'static str)> {
    SERVICES
        .iter()
        .filter(|s| s.is_up())
        .map(|s| {
            let docker = State::load(root, s.name).is_some_and(|st| st.mode == Mode::Docker);
            (s.env_var, if docker { s.docker_url } else { s.url })
        })
        .collect()
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

    #[test]
    fn compose_services_match_the_native_table() {
        let compose = compose();
        let services = compose["services"]
            .as_mapping()
            .expect("`services` is a mapping");
        let names: Vec<&str> = services.keys().filter_map(|k| k.as_str()).collect();
        let mut expected: Vec<&str> = SERVICES.iter().map(|s| s.name).collect();
        let mut found = names.clone();
        expected.sort_unstable();
        found.sort_unstable();
        assert_eq!(found, expected, "compose services == xtask services");

        for service in SERVICES {
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
            let host = format!("127.0.0.1:{}:", service.port);
            assert!(
                ports.iter().any(|p| p.starts_with(&host)),
                "{}: publishes {host}... (got {ports:?})",
                service.name
            );
        }
    }

    #[test]
    fn names_ports_and_variables_are_unique() {
        for (i, a) in SERVICES.iter().enumerate() {
            for b in &SERVICES[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.port, b.port);
                assert_ne!(a.env_var, b.env_var);
            }
            assert!(a.env_var.starts_with("KOMBU_TEST_") && a.env_var.ends_with("_URL"));
            assert!(a.url.contains(&format!("127.0.0.1:{}", a.port)));
            assert!(a.docker_url.contains(&format!("127.0.0.1:{}", a.port)));
        }
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
            let launch = service.launch(root);
            assert!(launch.args.contains(&service.port.to_string()) || service.name == "rabbitmq");
        }
    }
}
