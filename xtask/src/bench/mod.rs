//! `cargo xtask bench`: the same workload through `kombu bench` on every
//! transport whose service is up, through raw-client baselines (the redis
//! crate and lapin used directly) and through Python kombu 5.7, interleaved
//! over several rounds; medians per metric go to `docs/benchmarks.md` (a
//! generated section between markers), `docs/benchmarks.svg` and
//! `docs/benchmarks.json`.
//!
//! The workload (the one `kombu bench` runs): N messages of B bytes to one
//! queue, one producer publishing one message after another, then one
//! consumer with prefetch 100 consuming and acking them all, then single
//! round trips (publish one message, time until the consumer has it).

mod chart;
mod report;
mod stats;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use crate::Result;
use stats::Sample;

/// Arguments of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Messages per run on the fast transports (memory, redis, amqp,
    /// beanstalk).
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    messages: u64,
    /// Messages per run on the slow stand-ins (sqs on moto, mongodb on
    /// SecantusDB, couchdb on pouchdb-server).
    #[arg(long, value_name = "N", default_value_t = 200)]
    slow_messages: u64,
    /// Body size in bytes (kombu bench's default).
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    size: usize,
    /// Single round trips timed per run (fast transports; the slow ones
    /// time a tenth, at least 20).
    #[arg(long, value_name = "N", default_value_t = 500)]
    rtt_samples: u32,
    /// Rounds: each round runs every contestant once; medians over rounds.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Run only these contestants (comma-separated or repeated): a name
    /// such as `kombu-redis` or `raw-amqp`, a transport (`redis`), or a
    /// client (`kombu`, `raw`, `python`).
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    only: Vec<String>,
    /// A smoke run: 1,000 messages (50 on slow stand-ins), 50 round trips,
    /// one round, written under the target dir unless --out is given.
    #[arg(long)]
    quick: bool,
    /// Where the Markdown goes (the SVG and JSON files go beside it, same
    /// stem). Default: docs/benchmarks.md (a --quick run: the target dir).
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Build and measure this commit (`git archive` into the target dir)
    /// instead of the working tree, e.g. `--rev HEAD`.
    #[arg(long, value_name = "REV")]
    rev: Option<String>,
    /// Give up on one run after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    timeout: u64,
}

/// Which program does the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// `kombu bench` (kombu-cli).
    Kombu,
    /// A raw-client example program (the ceiling).
    Raw,
    /// Python kombu 5.7 (`xtask/python/kombu_bench.py`).
    Python,
}

impl Client {
    /// The name prefix used by `--only`.
    pub fn prefix(self) -> &'static str {
        match self {
            Client::Kombu => "kombu",
            Client::Raw => "raw",
            Client::Python => "python",
        }
    }
}

/// A raw-client baseline: an example program of a transport crate.
#[derive(Debug)]
pub struct RawClient {
    /// The package holding the example.
    pub package: &'static str,
    /// The example's name.
    pub example: &'static str,
    /// What the table calls it.
    pub label: &'static str,
    /// Extra arguments (e.g. to turn on publisher confirms).
    pub extra_args: &'static [&'static str],
}

/// One column of the comparison: a broker (or a broker setting).
#[derive(Debug)]
pub struct Transport {
    /// Short name (`--only`, contestant names).
    pub name: &'static str,
    /// Heading in the Markdown.
    pub title: &'static str,
    /// The variable holding its URL (`None`: memory://, always there).
    pub env_var: Option<&'static str>,
    /// The `cargo xtask services` name whose URL it uses.
    pub service: Option<&'static str>,
    /// A slow stand-in: `--slow-messages`, fewer round trips.
    pub slow: bool,
    /// Transport options for both `kombu bench` and Python kombu.
    pub options: &'static [(&'static str, &'static str)],
    /// Extra `kombu bench` arguments (e.g. `--in-flight 64`).
    pub kombu_args: &'static [&'static str],
    /// Why Python kombu cannot run it, if it cannot.
    pub python_unavailable: Option<&'static str>,
    /// The raw-client baseline, if there is one.
    pub raw: Option<RawClient>,
}

/// Every transport the bench knows, in table order.
pub static TRANSPORTS: &[Transport] = &[
    Transport {
        name: "memory",
        title: "memory://",
        env_var: None,
        service: None,
        slow: false,
        options: &[],
        kombu_args: &[],
        python_unavailable: None,
        raw: None,
    },
    Transport {
        name: "redis",
        title: "redis (Redis server), 64 publishes in flight / raw pipelines of 64",
        env_var: Some("KOMBU_TEST_REDIS_URL"),
        service: Some("redis"),
        slow: false,
        options: &[],
        kombu_args: &["--in-flight", "64"],
        python_unavailable: None,
        raw: Some(RawClient {
            package: "kombu-redis",
            example: "raw_redis_bench",
            label: "raw redis crate",
            extra_args: &["--batch", "64"],
        }),
    },
    Transport {
        name: "redis-serial",
        title: "redis (Redis server), each publish awaited / raw batches of 1",
        env_var: Some("KOMBU_TEST_REDIS_URL"),
        service: Some("redis"),
        slow: false,
        options: &[],
        kombu_args: &[],
        python_unavailable: Some(
            "not run: Python kombu awaits each publish in the redis row already",
        ),
        raw: Some(RawClient {
            package: "kombu-redis",
            example: "raw_redis_bench",
            label: "raw redis crate",
            extra_args: &["--batch", "1"],
        }),
    },
    Transport {
        name: "amqp",
        title: "amqp (RabbitMQ)",
        env_var: Some("KOMBU_TEST_AMQP_URL"),
        service: Some("rabbitmq"),
        slow: false,
        options: &[],
        kombu_args: &[],
        python_unavailable: None,
        raw: Some(RawClient {
            package: "kombu-amqp",
            example: "raw_lapin_bench",
            label: "raw lapin",
            extra_args: &[],
        }),
    },
    Transport {
        name: "amqp-confirms",
        title: "amqp (RabbitMQ) with publisher confirms, 64 in flight",
        env_var: Some("KOMBU_TEST_AMQP_URL"),
        service: Some("rabbitmq"),
        slow: false,
        options: &[("confirm_publish", "true")],
        kombu_args: &["--in-flight", "64"],
        python_unavailable: Some(
            "not run: the confirms target compares with raw lapin, and Python kombu publishing with confirms (100-2,000 msgs/s here) would dominate the run time",
        ),
        raw: Some(RawClient {
            package: "kombu-amqp",
            example: "raw_lapin_bench",
            label: "raw lapin",
            extra_args: &["--confirm", "--window", "64"],
        }),
    },
    Transport {
        name: "beanstalk",
        title: "beanstalk (beanstalkd)",
        env_var: Some("KOMBU_TEST_BEANSTALK_URL"),
        service: Some("beanstalkd"),
        slow: false,
        options: &[],
        kombu_args: &[],
        python_unavailable: Some(
            "kombu's beanstalk transport needs greenstalk, which the pinned venv lacks",
        ),
        raw: None,
    },
    Transport {
        name: "sqs",
        title: "sqs (moto stand-in)",
        env_var: Some("KOMBU_TEST_SQS_URL"),
        service: Some("sqs"),
        slow: true,
        options: &[
            ("region", "us-east-1"),
            ("wait_time_seconds", "1"),
            ("polling_interval", "0"),
        ],
        kombu_args: &[],
        python_unavailable: None,
        raw: None,
    },
    Transport {
        name: "mongodb",
        title: "mongodb (SecantusDB stand-in)",
        env_var: Some("KOMBU_TEST_MONGODB_URL"),
        service: Some("mongodb"),
        slow: true,
        options: &[],
        kombu_args: &[],
        python_unavailable: None,
        raw: None,
    },
    Transport {
        name: "couchdb",
        title: "couchdb (pouchdb-server stand-in)",
        env_var: Some("KOMBU_TEST_COUCHDB_URL"),
        service: Some("couchdb"),
        slow: true,
        options: &[],
        kombu_args: &[],
        python_unavailable: Some(
            "kombu's couchdb transport needs pycouchdb, which the pinned venv lacks",
        ),
        raw: None,
    },
    Transport {
        name: "nats",
        title: "nats (nats-server JetStream), each publish awaited",
        env_var: Some("KOMBU_TEST_NATS_URL"),
        service: Some("nats"),
        slow: false,
        options: &[],
        kombu_args: &[],
        python_unavailable: Some(NO_PYTHON_NATS),
        raw: Some(RawClient {
            package: "kombu-nats",
            example: "raw_nats_bench",
            label: "raw async-nats",
            extra_args: &["--in-flight", "1"],
        }),
    },
    Transport {
        name: "nats-64",
        title: "nats (nats-server JetStream), 64 publishes in flight",
        env_var: Some("KOMBU_TEST_NATS_URL"),
        service: Some("nats"),
        slow: false,
        options: &[],
        kombu_args: &["--in-flight", "64"],
        python_unavailable: Some(NO_PYTHON_NATS),
        raw: Some(RawClient {
            package: "kombu-nats",
            example: "raw_nats_bench",
            label: "raw async-nats",
            extra_args: &["--in-flight", "64"],
        }),
    },
];

/// Why the NATS rows have no Python kombu contestant.
const NO_PYTHON_NATS: &str =
    "kombu 5.7 has no NATS JetStream transport (its pull request is not released)";

/// One run of one contestant.
#[derive(Debug, Clone)]
pub struct Run {
    /// The round (1-based).
    pub round: u32,
    /// Wall time of the whole process.
    pub secs: f64,
    /// Its JSON line, when it printed one.
    pub sample: Option<Sample>,
    /// What went wrong, when something did.
    pub error: Option<String>,
}

/// One program on one transport.
#[derive(Debug)]
pub struct Contestant {
    /// `kombu-redis`, `raw-amqp`, `python-memory`, ...
    pub name: String,
    /// The transport.
    pub transport: &'static Transport,
    /// Which client.
    pub client: Client,
    /// What the table calls it.
    pub label: String,
    /// Program and arguments (`None` when unavailable).
    pub command: Option<(PathBuf, Vec<String>)>,
    /// Why it cannot run, when it cannot.
    pub unavailable: Option<String>,
    /// Messages per run.
    pub messages: u64,
    /// Round trips per run.
    pub rtt_samples: u32,
    /// Its runs, one per round.
    pub runs: Vec<Run>,
}

impl Contestant {
    /// The samples of the runs that printed one.
    pub fn samples(&self) -> Vec<Sample> {
        self.runs.iter().filter_map(|r| r.sample.clone()).collect()
    }

    /// The median of `metric` over the rounds.
    pub fn median(&self, metric: stats::Metric) -> Option<f64> {
        stats::spread(&self.samples(), metric).map(|s| s.median)
    }
}

/// What one whole bench run found: settings, machine, versions, results.
#[derive(Debug)]
pub struct Outcome {
    /// The command line, as typed.
    pub command: String,
    /// UTC start time, `YYYY-MM-DD HH:MM`.
    pub started_utc: String,
    /// Wall time of the whole bench.
    pub took: Duration,
    /// `--messages`, `--size`, ... as used.
    pub messages: u64,
    /// Messages on the slow stand-ins.
    pub slow_messages: u64,
    /// Body size.
    pub size: usize,
    /// Rounds.
    pub rounds: u32,
    /// Round trips on the fast transports.
    pub rtt_samples: u32,
    /// `nproc`.
    pub cpus: usize,
    /// `/proc/loadavg` before the first run.
    pub load_before: String,
    /// `/proc/loadavg` after the last run.
    pub load_after: String,
    /// `(what, version)` pairs.
    pub versions: Vec<(String, String)>,
    /// Every contestant with its runs.
    pub contestants: Vec<Contestant>,
}

/// Run `cargo xtask bench`.
pub fn run(root: &Path, args: &BenchArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let started_utc = utc_now();
    let (messages, slow_messages, rtt_samples, rounds) = if args.quick {
        (
            args.messages.min(1_000),
            args.slow_messages.min(50),
            args.rtt_samples.min(50),
            1,
        )
    } else {
        (
            args.messages,
            args.slow_messages,
            args.rtt_samples,
            args.rounds,
        )
    };
    let target_dir = target_dir(root)?;
    let out = match &args.out {
        Some(path) => path.clone(),
        None if args.quick => target_dir.join("bench-quick").join("benchmarks.md"),
        None => root.join("docs").join("benchmarks.md"),
    };

    let urls = transport_urls(root);
    let mut contestants = plan(&urls, messages, slow_messages, rtt_samples, &args.only);
    if contestants.is_empty() {
        return Err(format!(
            "--only {} matches no contestant; names are like kombu-redis, raw-amqp, python-memory, or a transport or client",
            args.only.join(",")
        )
        .into());
    }
    let (src, rev) = match &args.rev {
        Some(rev) => {
            let (dir, sha) = snapshot(root, &target_dir, rev)?;
            eprintln!(
                "bench: measuring commit {sha} (extracted in {})",
                dir.display()
            );
            (dir, Some(sha))
        }
        None => (root.to_path_buf(), None),
    };
    prepare(root, &src, &target_dir, args.size, &mut contestants)?;

    let load_before = loadavg();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!("bench: {cpus} CPUs, load average {load_before} before the first run");
    for round in 1..=rounds {
        // Alternate the order so that no contestant always runs right
        // after the same neighbour.
        let mut order: Vec<usize> = (0..contestants.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for index in order {
            let contestant = &mut contestants[index];
            let Some((program, args_list)) = contestant.command.clone() else {
                continue;
            };
            eprint!("bench: round {round}/{rounds}: {:<24} ", contestant.name);
            let run = run_one(
                root,
                &program,
                &args_list,
                Duration::from_secs(args.timeout),
                round,
            );
            match (&run.sample, &run.error) {
                (Some(sample), _) => eprintln!(
                    "publish {:>9}/s  consume+ack {:>9}/s  p50 {:>8} µs  ({:.1} s)",
                    fmt_opt(sample.get(stats::Metric::Publish)),
                    fmt_opt(sample.get(stats::Metric::Consume)),
                    fmt_opt(sample.get(stats::Metric::RttP50)),
                    run.secs
                ),
                (None, Some(err)) => eprintln!("FAILED: {err}"),
                (None, None) => eprintln!("FAILED"),
            }
            contestant.runs.push(run);
        }
    }
    let load_after = loadavg();
    eprintln!("bench: load average {load_after} after the last run");

    let outcome = Outcome {
        command: command_line(),
        started_utc,
        took: started.elapsed(),
        messages,
        slow_messages,
        size: args.size,
        rounds,
        rtt_samples,
        cpus,
        load_before,
        load_after,
        versions: versions(root, &src, rev.as_deref(), &contestants),
        contestants,
    };
    write_outputs(&out, &outcome)?;
    let ran = outcome
        .contestants
        .iter()
        .filter(|c| c.command.is_some())
        .count();
    let failed = outcome
        .contestants
        .iter()
        .filter(|c| c.command.is_some() && c.samples().is_empty())
        .count();
    eprintln!(
        "bench: wrote {} (+ .svg, .json) in {:.0} s",
        out.display(),
        outcome.took.as_secs_f64()
    );
    Ok(if ran > 0 && failed == ran {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn fmt_opt(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), stats::thousands)
}

/// The URL of each transport whose service answers (or whose variable is
/// set): `KOMBU_TEST_<NAME>_URL` from the environment first, else the URL
/// `cargo xtask services env` would print.
fn transport_urls(root: &Path) -> Vec<(&'static str, Option<String>)> {
    let up = crate::services::env_pairs(root);
    TRANSPORTS
        .iter()
        .map(|t| {
            let url = match t.env_var {
                None => Some("memory://".to_owned()),
                Some(var) => std::env::var(var)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .or_else(|| {
                        up.iter()
                            .find(|(v, _)| *v == var)
                            .map(|(_, url)| (*url).to_owned())
                    }),
            };
            (t.name, url)
        })
        .collect()
}

/// Whether `--only` selects this contestant.
fn selected(only: &[String], name: &str, transport: &str, client: Client) -> bool {
    only.is_empty()
        || only.iter().map(|s| s.trim()).any(|token| {
            token == name || token == transport || token == client.prefix() || token == "all"
        })
}

/// Every selected contestant, with its command line (the program paths
/// are filled in by [`prepare`]).
fn plan(
    urls: &[(&'static str, Option<String>)],
    messages: u64,
    slow_messages: u64,
    rtt_samples: u32,
    only: &[String],
) -> Vec<Contestant> {
    let mut out = Vec::new();
    for transport in TRANSPORTS {
        let url = urls
            .iter()
            .find(|(name, _)| *name == transport.name)
            .and_then(|(_, url)| url.clone());
        let (messages, rtt) = if transport.slow {
            (slow_messages, (rtt_samples / 10).max(20).min(rtt_samples))
        } else {
            (messages, rtt_samples)
        };
        let mut clients = vec![(Client::Kombu, "kombu-rs".to_owned())];
        if let Some(raw) = &transport.raw {
            clients.push((Client::Raw, raw.label.to_owned()));
        }
        clients.push((Client::Python, "Python kombu 5.7".to_owned()));
        for (client, label) in clients {
            let name = format!("{}-{}", client.prefix(), transport.name);
            if !selected(only, &name, transport.name, client) {
                continue;
            }
            let unavailable = match (&url, client) {
                (None, _) => Some(format!(
                    "service not up ({} unset and `cargo xtask services status` shows it down)",
                    transport.env_var.unwrap_or("-")
                )),
                (Some(_), Client::Python) => transport.python_unavailable.map(str::to_owned),
                _ => None,
            };
            let mut args = vec![
                "--url".to_owned(),
                url.clone().unwrap_or_default(),
                "--messages".to_owned(),
                messages.to_string(),
                "--rtt-samples".to_owned(),
                rtt.to_string(),
            ];
            match client {
                Client::Kombu | Client::Python => {
                    for (key, value) in transport.options {
                        args.push("--option".to_owned());
                        args.push(format!("{key}={value}"));
                    }
                }
                Client::Raw => {
                    if let Some(raw) = &transport.raw {
                        args.extend(raw.extra_args.iter().map(|s| (*s).to_owned()));
                    }
                }
            }
            if client == Client::Kombu {
                args.insert(0, "bench".to_owned());
                args.extend(transport.kombu_args.iter().map(|s| (*s).to_owned()));
            }
            out.push(Contestant {
                name,
                transport,
                client,
                label,
                command: Some((PathBuf::new(), args)),
                unavailable,
                messages,
                rtt_samples: rtt,
                runs: Vec::new(),
            });
        }
    }
    for contestant in &mut out {
        if contestant.unavailable.is_some() {
            contestant.command = None;
        }
    }
    out
}

/// Build the programs once (release), find the Python peer, fill in the
/// program paths and the `--size`/`--json` arguments; mark what cannot run.
fn prepare(
    root: &Path,
    src: &Path,
    target_dir: &Path,
    size: usize,
    contestants: &mut [Contestant],
) -> Result<()> {
    let log = target_dir.join("xtask-bench-build.log");
    std::fs::create_dir_all(target_dir)?;
    let wants = |client: Client| {
        contestants
            .iter()
            .any(|c| c.client == client && c.command.is_some())
    };
    let kombu = if wants(Client::Kombu) {
        eprintln!("bench: building kombu-cli (release) ...");
        cargo_build(
            src,
            target_dir,
            &["-p", "kombu-cli", "--bin", "kombu"],
            &log,
        )
        .map(|()| target_dir.join("release").join("kombu"))
    } else {
        Err("not needed".to_owned())
    };
    let mut raw_built: Vec<(&str, Result<PathBuf, String>)> = Vec::new();
    let python = if wants(Client::Python) {
        crate::python::ensure(root).map_err(|e| e.to_string())
    } else {
        Err("not needed".to_owned())
    };
    let script = root.join("xtask").join("python").join("kombu_bench.py");
    for contestant in contestants.iter_mut() {
        let Some((program, args)) = contestant.command.as_mut() else {
            continue;
        };
        let found: Result<PathBuf, String> = match contestant.client {
            Client::Kombu => kombu.clone(),
            Client::Python => python.clone().inspect(|_| {
                args.insert(0, script.display().to_string());
            }),
            Client::Raw => {
                let raw = contestant
                    .transport
                    .raw
                    .as_ref()
                    .expect("only transports with a raw client plan one");
                let built = match raw_built.iter().find(|(e, _)| *e == raw.example) {
                    Some((_, built)) => built.clone(),
                    None => {
                        let built = build_example(src, target_dir, raw, &log);
                        raw_built.push((raw.example, built.clone()));
                        built
                    }
                };
                built.and_then(|exe| {
                    // A baseline that cannot do this variant (e.g. confirms)
                    // is "not available", not a failure.
                    if raw.extra_args.is_empty() {
                        return Ok(exe);
                    }
                    // The usage may go to stdout or stderr; only the flags
                    // are looked for (not their values).
                    let help = Command::new(&exe)
                        .arg("--help")
                        .stdin(Stdio::null())
                        .output()
                        .map(|o| {
                            format!(
                                "{}{}",
                                String::from_utf8_lossy(&o.stdout),
                                String::from_utf8_lossy(&o.stderr)
                            )
                        })
                        .unwrap_or_default();
                    match raw
                        .extra_args
                        .iter()
                        .filter(|a| a.starts_with("--"))
                        .find(|a| !help.contains(*a))
                    {
                        Some(missing) => Err(format!(
                            "{} has no {missing} option (its --help does not list it)",
                            raw.example
                        )),
                        None => Ok(exe),
                    }
                })
            }
        };
        match found {
            Ok(exe) => {
                *program = exe;
                args.push("--size".to_owned());
                args.push(size.to_string());
                args.push("--json".to_owned());
            }
            Err(reason) => contestant.unavailable = Some(format!("not available: {reason}")),
        }
        if contestant.unavailable.is_some() {
            contestant.command = None;
        }
    }
    Ok(())
}

/// Build one raw-client example; `Err(reason)` when it does not exist or
/// does not build.
fn build_example(
    src: &Path,
    target_dir: &Path,
    raw: &RawClient,
    log: &Path,
) -> Result<PathBuf, String> {
    let examples = src.join("crates").join(raw.package).join("examples");
    let exists = examples.join(format!("{}.rs", raw.example)).is_file()
        || examples.join(raw.example).join("main.rs").is_file();
    if !exists {
        return Err(format!(
            "{} has no example {} yet",
            raw.package, raw.example
        ));
    }
    eprintln!(
        "bench: building {} example {} (release) ...",
        raw.package, raw.example
    );
    cargo_build(
        src,
        target_dir,
        &["-p", raw.package, "--example", raw.example],
        log,
    )
    .map(|()| {
        target_dir
            .join("release")
            .join("examples")
            .join(raw.example)
    })
}

/// `cargo build --release ARGS` in `src` into `target_dir`, output
/// appended to `log`; the error is one line (the first compiler error).
fn cargo_build(src: &Path, target_dir: &Path, args: &[&str], log: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(src)
        .env("CARGO_TARGET_DIR", target_dir)
        .args(["build", "--release", "--quiet"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    let text = format!(
        "$ cargo build --release {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if let Ok(mut file) = std::fs::File::options().create(true).append(true).open(log) {
        use std::io::Write as _;
        let _ = file.write_all(text.as_bytes());
    }
    if output.status.success() {
        return Ok(());
    }
    let first_error = text
        .lines()
        .skip_while(|l| !l.starts_with("error"))
        .take(2)
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    Err(format!(
        "`cargo build --release {}` failed ({}; log: {})",
        args.join(" "),
        if first_error.is_empty() {
            "no error line"
        } else {
            &first_error
        },
        log.display()
    ))
}

/// Extract `git archive REV` into `<target dir>/bench-src`; the folder and
/// the full commit hash. Kept when it already holds that commit.
fn snapshot(root: &Path, target_dir: &Path, rev: &str) -> Result<(PathBuf, String)> {
    let sha = first_line(
        "git",
        &[
            "-C",
            &root.display().to_string(),
            "rev-parse",
            "--verify",
            &format!("{rev}^{{commit}}"),
        ],
    )
    .filter(|s| s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit()))
    .ok_or_else(|| format!("--rev {rev}: not a commit of this repository"))?;
    // One folder for every commit: the same paths let cargo reuse the
    // dependencies built for the previous one.
    let dir = target_dir.join("bench-src");
    let marker = dir.join(".xtask-bench-extracted");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == sha) {
        return Ok((dir, sha));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let mut archive = Command::new("git")
        .args([
            "-C",
            &root.display().to_string(),
            "archive",
            "--format=tar",
            &sha,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let tar_in = archive.stdout.take().ok_or("git archive: no stdout")?;
    // -m: files get the extraction time, not the commit's, so cargo never
    // takes them for older than a build of another commit.
    let untar = Command::new("tar")
        .arg("-xm")
        .arg("-C")
        .arg(&dir)
        .stdin(tar_in)
        .status()?;
    let archived = archive.wait()?;
    if !archived.success() || !untar.success() {
        return Err(format!("git archive {sha} | tar -x failed").into());
    }
    std::fs::write(&marker, format!("{sha}\n"))?;
    Ok((dir, sha))
}

/// The target dir cargo uses here (`cargo metadata`).
fn target_dir(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err("cargo metadata failed".into());
    }
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    meta.get("target_directory")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata printed no target_directory".into())
}

/// Run one contestant once: its JSON line, or what went wrong.
fn run_one(root: &Path, program: &Path, args: &[String], timeout: Duration, round: u32) -> Run {
    let started = Instant::now();
    let spawned = Command::new(program)
        .args(args)
        .current_dir(root)
        .env_remove("KOMBU_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            return Run {
                round,
                secs: 0.0,
                sample: None,
                error: Some(format!("could not start {}: {err}", program.display())),
            }
        }
    };
    let pipe = |reader: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut reader) = reader {
                let _ = reader.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = pipe(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let stderr = pipe(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > timeout => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let sample = Sample::parse(&stdout);
    let ok = status.is_some_and(|s| s.success());
    let error = if timed_out {
        Some(format!("no result within {} s", timeout.as_secs()))
    } else if !ok || sample.is_none() {
        let last: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .filter(|l| !l.trim().is_empty())
            .collect();
        let tail = last[last.len().saturating_sub(3)..].join(" | ");
        Some(format!(
            "{}: {}",
            status.map_or_else(|| "did not finish".to_owned(), |s| s.to_string()),
            if tail.is_empty() { "no output" } else { &tail }
        ))
    } else {
        None
    };
    Run {
        round,
        secs,
        sample: if ok { sample } else { None },
        error,
    }
}

/// `/proc/loadavg`'s three averages (or `unknown`).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The command line as the user typed it (`cargo xtask bench ...`).
fn command_line() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$&|;<>*?".contains(c))
            {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a
            }
        })
        .collect();
    format!("cargo xtask {}", args.join(" "))
}

/// The first line of a command's output (stdout, else stderr), if it ran
/// within 20 s.
fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > Duration::from_secs(20) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return None,
        }
    }
    let out = child.wait_with_output().ok()?;
    let text = if out.stdout.iter().any(|b| !b.is_ascii_whitespace()) {
        out.stdout
    } else {
        out.stderr
    };
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// The version of `package` in `Cargo.lock` (every version, if several).
fn locked_version(lock: &str, package: &str) -> Option<String> {
    let mut found = Vec::new();
    let mut name = None;
    for line in lock.lines() {
        if line.starts_with("[[package]]") {
            name = None;
        } else if let Some(value) = line.strip_prefix("name = ") {
            name = Some(value.trim_matches('"').to_owned());
        } else if let Some(value) = line.strip_prefix("version = ") {
            if name.as_deref() == Some(package) {
                found.push(value.trim_matches('"').to_owned());
            }
        }
    }
    (!found.is_empty()).then(|| found.join(", "))
}

/// Versions of everything in the comparison that are cheap to ask.
fn versions(
    root: &Path,
    src: &Path,
    rev: Option<&str>,
    contestants: &[Contestant],
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut push = |what: &str, version: Option<String>| {
        if let Some(version) = version {
            out.push((what.to_owned(), version));
        }
    };
    push("rustc", first_line("rustc", &["--version"]));
    match rev {
        Some(sha) => push(
            "kombu-rs (git)",
            Some(format!(
                "{} (built from `git archive` of that commit)",
                &sha[..12]
            )),
        ),
        None => {
            let root_arg = root.display().to_string();
            let head = first_line("git", &["-C", &root_arg, "rev-parse", "--short=12", "HEAD"]);
            let dirty = Command::new("git")
                .args([
                    "-C",
                    &root_arg,
                    "status",
                    "--porcelain",
                    "--untracked-files=no",
                ])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| !o.stdout.is_empty());
            push(
                "kombu-rs (git)",
                head.map(|r| {
                    if dirty {
                        format!("{r} plus the uncommitted changes of the working tree")
                    } else {
                        r
                    }
                }),
            );
        }
    }
    let lock = std::fs::read_to_string(src.join("Cargo.lock")).unwrap_or_default();
    for krate in ["lapin", "redis", "tokio"] {
        push(&format!("{krate} crate"), locked_version(&lock, krate));
    }
    if let Some(sample) = contestants
        .iter()
        .filter(|c| c.client == Client::Python)
        .flat_map(|c| c.samples())
        .next()
    {
        let get = |key: &str| {
            sample
                .raw
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        push("Python kombu", get("kombu_version"));
        push("Python", get("python_version"));
    }
    let pinned = |name: &str| {
        crate::python::REQUIREMENTS
            .iter()
            .find_map(|r| r.strip_prefix(name).and_then(|v| v.strip_prefix("==")))
            .map(str::to_owned)
    };
    push("py-amqp (Python)", pinned("amqp"));
    push("redis-py (Python)", pinned("redis"));
    let uses = |service: &str| {
        contestants
            .iter()
            .any(|c| c.transport.service == Some(service) && c.command.is_some())
    };
    if uses("redis") {
        push("redis-server", first_line("redis-server", &["--version"]));
    }
    if uses("rabbitmq") {
        push(
            "RabbitMQ",
            first_line("rabbitmqctl", &["version"])
                .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit())),
        );
    }
    if uses("beanstalkd") {
        push("beanstalkd", first_line("beanstalkd", &["-v"]));
    }
    out
}

/// Write the Markdown (generated section only), the SVG and the JSON.
fn write_outputs(out: &Path, outcome: &Outcome) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let svg = out.with_extension("svg");
    let json_path = out.with_extension("json");
    chart::write_svg(&svg, outcome)?;
    let svg_name = svg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let section = report::markdown_section(outcome, &svg_name);
    let existing = std::fs::read_to_string(out).ok();
    std::fs::write(out, report::splice(existing.as_deref(), &section))?;
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&to_json(outcome))? + "\n",
    )?;
    Ok(())
}

/// The raw results, for `benchmarks.json`.
fn to_json(outcome: &Outcome) -> Value {
    let contestants: Vec<Value> = outcome
        .contestants
        .iter()
        .map(|c| {
            let medians: serde_json::Map<String, Value> = stats::Metric::ALL
                .iter()
                .map(|m| (m.key().to_owned(), json!(c.median(*m))))
                .collect();
            json!({
                "name": c.name,
                "transport": c.transport.name,
                "client": c.client.prefix(),
                "label": c.label,
                "messages": c.messages,
                "rtt_samples": c.rtt_samples,
                "unavailable": c.unavailable,
                "medians": medians,
                "runs": c.runs.iter().map(|r| json!({
                    "round": r.round,
                    "secs": r.secs,
                    "error": r.error,
                    "result": r.sample.as_ref().map(|s| s.raw.clone()),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "command": outcome.command,
        "started_utc": outcome.started_utc,
        "took_secs": outcome.took.as_secs_f64(),
        "messages": outcome.messages,
        "slow_messages": outcome.slow_messages,
        "size": outcome.size,
        "rounds": outcome.rounds,
        "rtt_samples": outcome.rtt_samples,
        "machine": {
            "cpus": outcome.cpus,
            "loadavg_before": outcome.load_before,
            "loadavg_after": outcome.load_after,
        },
        "versions": outcome.versions.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "targets": report::targets(outcome).iter().map(|t| json!({
            "target": t.text,
            "verdict": match &t.verdict {
                stats::Verdict::Met(_) => "met",
                stats::Verdict::Missed(_) => "missed",
                stats::Verdict::NotMeasured(_) => "not measured",
            },
            "detail": match &t.verdict {
                stats::Verdict::Met(s) | stats::Verdict::Missed(s) | stats::Verdict::NotMeasured(s) => s,
            },
        })).collect::<Vec<_>>(),
        "contestants": contestants,
    })
}

/// Now in UTC as `YYYY-MM-DD HH:MM` (no date crate needed).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM` UTC.
fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3_600,
        rem % 3_600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(format_utc(1_795_833_000), "2026-11-28 02:30");
    }

    #[test]
    fn cargo_lock_versions() {
        let lock = "[[package]]\nname = \"lapin\"\nversion = \"4.12.3\"\n\n[[package]]\nname = \"redis\"\nversion = \"1.8.1\"\nsource = \"x\"\n\n[[package]]\nname = \"redis\"\nversion = \"0.27.0\"\n";
        assert_eq!(locked_version(lock, "lapin").as_deref(), Some("4.12.3"));
        assert_eq!(
            locked_version(lock, "redis").as_deref(),
            Some("1.8.1, 0.27.0")
        );
        assert_eq!(locked_version(lock, "tokio"), None);
    }

    #[test]
    fn only_selects_by_name_transport_or_client() {
        let urls: Vec<_> = TRANSPORTS
            .iter()
            .map(|t| (t.name, Some(format!("{}://x", t.name))))
            .collect();
        let names = |only: &[&str]| {
            let only: Vec<String> = only.iter().map(|s| (*s).to_owned()).collect();
            plan(&urls, 10, 5, 100, &only)
                .into_iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&["redis"]),
            ["kombu-redis", "raw-redis", "python-redis"]
        );
        assert_eq!(
            names(&["raw-amqp", "kombu-memory"]),
            ["kombu-memory", "raw-amqp"]
        );
        assert_eq!(
            names(&["raw"]),
            [
                "raw-redis",
                "raw-redis-serial",
                "raw-amqp",
                "raw-amqp-confirms",
                "raw-nats",
                "raw-nats-64"
            ]
        );
        assert_eq!(
            names(&["redis-serial"]),
            [
                "kombu-redis-serial",
                "raw-redis-serial",
                "python-redis-serial"
            ]
        );
        assert!(names(&["nothing"]).is_empty());
        assert_eq!(names(&[]).len(), 28);
    }

    #[test]
    fn plans_slow_transports_smaller_and_marks_missing_services() {
        let urls: Vec<_> = TRANSPORTS
            .iter()
            .map(|t| (t.name, (t.name != "mongodb").then(|| "x://".to_owned())))
            .collect();
        let plan = plan(&urls, 20_000, 200, 500, &[]);
        let sqs = plan.iter().find(|c| c.name == "kombu-sqs").unwrap();
        assert_eq!((sqs.messages, sqs.rtt_samples), (200, 50));
        let redis = plan.iter().find(|c| c.name == "kombu-redis").unwrap();
        assert_eq!((redis.messages, redis.rtt_samples), (20_000, 500));
        let (_, args) = redis.command.as_ref().unwrap();
        assert_eq!(args[..3], ["bench", "--url", "x://"]);
        let mongo = plan.iter().find(|c| c.name == "kombu-mongodb").unwrap();
        assert!(mongo.command.is_none() && mongo.unavailable.is_some());
        let beanstalk_py = plan.iter().find(|c| c.name == "python-beanstalk").unwrap();
        assert!(beanstalk_py
            .unavailable
            .as_deref()
            .unwrap()
            .contains("greenstalk"));
        let confirms = plan.iter().find(|c| c.name == "raw-amqp-confirms").unwrap();
        assert!(confirms
            .command
            .as_ref()
            .unwrap()
            .1
            .contains(&"--confirm".to_owned()));
    }
}
