//! The generated section of `docs/benchmarks.md`: tables per transport,
//! ratios, the issue-18 targets, the command, versions and machine load.

use std::fmt::Write as _;

use super::stats::{self, format_ratio, judge, thousands, Metric, Verdict};
use super::{Client, Contestant, Outcome, TRANSPORTS};

/// Where the generated section starts.
pub const START: &str = "<!-- bench:start -->";
/// Where it ends.
pub const END: &str = "<!-- bench:end -->";

/// One issue-18 target and how this run did.
#[derive(Debug)]
pub struct Target {
    /// The target, as the issue puts it.
    pub text: String,
    /// Met, missed, or not measured.
    pub verdict: Verdict,
}

fn find<'a>(outcome: &'a Outcome, name: &str) -> Option<&'a Contestant> {
    outcome.contestants.iter().find(|c| c.name == name)
}

fn median(outcome: &Outcome, name: &str, metric: Metric) -> Option<f64> {
    find(outcome, name).and_then(|c| c.median(metric))
}

fn rate(v: f64) -> String {
    format!("{} msgs/s", thousands(v))
}

fn times(v: f64) -> String {
    format_ratio(v)
}

fn percent(v: f64) -> String {
    format!("{v:.0}%")
}

/// Why `names` gave no number.
fn not_measured(outcome: &Outcome, names: &[&str]) -> Verdict {
    let why: Vec<String> = names
        .iter()
        .map(|name| match find(outcome, name) {
            None => format!("{name} was not selected"),
            Some(c) => match (&c.unavailable, c.runs.iter().find_map(|r| r.error.clone())) {
                (Some(reason), _) => format!("{name}: {reason}"),
                (None, Some(err)) if c.samples().is_empty() => format!("{name} failed: {err}"),
                _ => format!("{name} has no such figure"),
            },
        })
        .collect();
    Verdict::NotMeasured(why.join("; "))
}

/// The issue-18 targets this bench can judge, each with its verdict.
pub fn targets(outcome: &Outcome) -> Vec<Target> {
    let mut out = Vec::new();
    let mut push = |text: &str, verdict: Verdict| {
        out.push(Target {
            text: text.to_owned(),
            verdict,
        })
    };
    // Absolute rates.
    for (text, name, metric, goal) in [
        (
            "memory:// publish at least 1,000,000 msgs/s",
            "kombu-memory",
            Metric::Publish,
            1_000_000.0,
        ),
        (
            "memory:// consume+ack at least 1,000,000 msgs/s",
            "kombu-memory",
            Metric::Consume,
            1_000_000.0,
        ),
    ] {
        let verdict = match median(outcome, name, metric) {
            Some(v) => judge(v, goal, true, rate),
            None => not_measured(outcome, &[name]),
        };
        push(text, verdict);
    }
    // Ratios to a peer.
    for (text, ours, theirs, metric, goal, as_percent) in [
        (
            "redis publish, 64 in flight, at least 0.8x raw redis pipelines of 64",
            "kombu-redis",
            "raw-redis",
            Metric::Publish,
            0.8,
            false,
        ),
        (
            "redis consume+ack at least 0.8x raw redis batches of 64",
            "kombu-redis",
            "raw-redis",
            Metric::Consume,
            0.8,
            false,
        ),
        (
            "redis publish, each awaited, at least 1.5x raw redis batches of 1",
            "kombu-redis-serial",
            "raw-redis-serial",
            Metric::Publish,
            1.5,
            false,
        ),
        (
            "amqp publish at least 90% of raw lapin's (no confirms)",
            "kombu-amqp",
            "raw-amqp",
            Metric::Publish,
            90.0,
            true,
        ),
        (
            "amqp consume+ack at least 90% of raw lapin's",
            "kombu-amqp",
            "raw-amqp",
            Metric::Consume,
            90.0,
            true,
        ),
        (
            "amqp publish at least 90% of raw lapin's (publisher confirms)",
            "kombu-amqp-confirms",
            "raw-amqp-confirms",
            Metric::Publish,
            90.0,
            true,
        ),
        (
            "nats publish, 64 in flight, at least 0.8x raw async-nats",
            "kombu-nats-64",
            "raw-nats-64",
            Metric::Publish,
            0.8,
            false,
        ),
        (
            "nats consume+ack at least 0.8x raw async-nats",
            "kombu-nats",
            "raw-nats",
            Metric::Consume,
            0.8,
            false,
        ),
    ] {
        let verdict = match stats::ratio(
            median(outcome, ours, metric),
            median(outcome, theirs, metric),
        ) {
            Some(r) if as_percent => judge(r * 100.0, goal, true, percent),
            Some(r) => judge(r, goal, true, times),
            None => not_measured(outcome, &[ours, theirs]),
        };
        push(text, verdict);
    }
    // Round trips against the raw client.
    for (text, ours, theirs) in [
        (
            "redis round-trip p50 at most 1.5x the raw client's",
            "kombu-redis",
            "raw-redis",
        ),
        (
            "amqp round-trip p50 at most 1.5x the raw client's",
            "kombu-amqp",
            "raw-amqp",
        ),
    ] {
        let verdict = match stats::ratio(
            median(outcome, ours, Metric::RttP50),
            median(outcome, theirs, Metric::RttP50),
        ) {
            Some(r) => judge(r, 1.5, false, times),
            None => not_measured(outcome, &[ours, theirs]),
        };
        push(text, verdict);
    }
    // Memory: only a run of 1,000,000 messages says.
    for name in ["kombu-redis", "kombu-amqp"] {
        let text = format!(
            "{}: consuming 1,000,000 messages with prefetch 100 keeps peak RSS under 64 MiB",
            name.trim_start_matches("kombu-")
        );
        let verdict = match find(outcome, name) {
            Some(c) if c.messages >= 1_000_000 => match c.median(Metric::PeakRss) {
                Some(rss) => judge(rss / 1_048_576.0, 64.0, false, |v| format!("{v:.1} MiB")),
                None => not_measured(outcome, &[name]),
            },
            Some(c) => match c.median(Metric::PeakRss) {
                Some(rss) => Verdict::NotMeasured(format!(
                    "this run used {} messages (peak RSS {:.1} MiB); run `cargo xtask bench --only {name} --messages 1000000 --rounds 1 --out /tmp/rss.md` to judge it",
                    thousands(c.messages as f64),
                    rss / 1_048_576.0
                )),
                None => not_measured(outcome, &[name]),
            },
            None => not_measured(outcome, &[name]),
        };
        push(&text, verdict);
    }
    out
}

/// Text fit for one table cell or list item: one line, no `|`.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "/")
}

/// A median with its spread over the rounds: `12,345 ±4%`.
fn cell(contestant: &Contestant, metric: Metric) -> String {
    match stats::spread(&contestant.samples(), metric) {
        None => "-".to_owned(),
        Some(s) => {
            let value = metric.format(s.median);
            let runs = contestant.samples().len();
            if runs > 1 && s.median > 0.0 {
                let dev = (s.max - s.median).max(s.median - s.min) / s.median * 100.0;
                format!("{value} ±{dev:.0}%")
            } else {
                value
            }
        }
    }
}

fn ratio_row(out: &mut String, label: &str, ours: &Contestant, theirs: &Contestant) {
    let cells: Vec<String> = Metric::ALL
        .iter()
        .map(|m| {
            stats::ratio(ours.median(*m), theirs.median(*m))
                .map_or_else(|| "-".to_owned(), format_ratio)
        })
        .collect();
    let _ = writeln!(out, "| *{label}* | | {} |", cells.join(" | "));
}

fn table(out: &mut String, rows: &[&Contestant]) {
    out.push_str(
        "| client | runs | publish msgs/s | consume+ack msgs/s | round trip p50 µs | p99 µs | peak RSS MiB |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|\n");
    for c in rows {
        let ok = c.samples().len();
        if let Some(reason) = &c.unavailable {
            let _ = writeln!(out, "| {} | 0 | {} | | | | |", c.label, one_line(reason));
        } else if ok == 0 {
            let err = c
                .runs
                .iter()
                .find_map(|r| r.error.clone())
                .unwrap_or_else(|| "no result".to_owned());
            let _ = writeln!(
                out,
                "| {} | 0/{} | failed: {} | | | | |",
                c.label,
                c.runs.len(),
                one_line(&err)
            );
        } else {
            let runs = if ok == c.runs.len() {
                ok.to_string()
            } else {
                format!("{ok}/{}", c.runs.len())
            };
            let cells: Vec<String> = Metric::ALL.iter().map(|m| cell(c, *m)).collect();
            let _ = writeln!(out, "| {} | {runs} | {} |", c.label, cells.join(" | "));
        }
    }
    let kombu = rows.iter().find(|c| c.client == Client::Kombu);
    for other in [Client::Raw, Client::Python] {
        if let (Some(ours), Some(theirs)) = (kombu, rows.iter().find(|c| c.client == other)) {
            if !ours.samples().is_empty() && !theirs.samples().is_empty() {
                ratio_row(out, &format!("kombu-rs ÷ {}", theirs.label), ours, theirs);
            }
        }
    }
}

/// The generated section, markers included.
pub fn markdown_section(outcome: &Outcome, svg_name: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{START}");
    out.push_str(
        "<!-- Written by `cargo xtask bench`; edits between these markers are overwritten. -->\n",
    );
    out.push_str("## Side by side: `cargo xtask bench`\n\n");
    let _ = writeln!(
        out,
        "Measured {} UTC ({:.0} min) with:\n\n```sh\n{}\n```\n",
        outcome.started_utc,
        outcome.took.as_secs_f64() / 60.0,
        outcome.command
    );
    let _ = writeln!(
        out,
        "Workload, the same for every client: {} messages of {} bytes to one queue \
         ({} on the slow stand-ins sqs, mongodb, couchdb), one producer awaiting each \
         publish; then one consumer with prefetch 100 consuming and acking each message; \
         then {} single round trips (publish one message, time until the consumer has it, \
         prefetch 1; {} on the slow stand-ins). kombu-rs is `kombu bench --json` \
         (release build of kombu-cli); the raw clients are `raw_redis_bench` (kombu-redis) \
         and `raw_lapin_bench` (kombu-amqp) examples doing the same work with the client \
         crate directly; Python kombu runs `xtask/python/kombu_bench.py` in the pinned venv \
         of `cargo xtask python`. Runs are interleaved: each of {} round{} runs every \
         contestant once (the order reversed every other round); each figure is the median \
         over the rounds (±: the largest deviation of a round from it). Ratio rows divide \
         kombu-rs's medians by the other client's: above 1 is faster for msgs/s, but \
         slower for round trips and more memory for RSS.\n",
        thousands(outcome.messages as f64),
        outcome.size,
        thousands(outcome.slow_messages as f64),
        outcome.rtt_samples,
        (outcome.rtt_samples / 10).max(20).min(outcome.rtt_samples),
        outcome.rounds,
        if outcome.rounds == 1 { "" } else { "s" },
    );
    let _ = writeln!(
        out,
        "Machine: {} CPUs; load average (1/5/15 min) {} before the first run and {} after \
         the last (other work on the machine slows every contestant, unevenly).\n",
        outcome.cpus, outcome.load_before, outcome.load_after
    );
    let _ = writeln!(
        out,
        "![Throughput and round trips per client and transport]({svg_name})\n"
    );

    for transport in TRANSPORTS {
        let rows: Vec<&Contestant> = outcome
            .contestants
            .iter()
            .filter(|c| c.transport.name == transport.name)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "### {}\n", transport.title);
        if let Some(c) = rows.first() {
            if c.messages != outcome.messages || c.rtt_samples != outcome.rtt_samples {
                let _ = writeln!(
                    out,
                    "{} messages, {} round trips per run.\n",
                    thousands(c.messages as f64),
                    c.rtt_samples
                );
            }
        }
        table(&mut out, &rows);
        out.push('\n');
    }

    out.push_str("### Targets (issue 18)\n\n");
    for target in targets(outcome) {
        let (mark, detail) = match &target.verdict {
            Verdict::Met(d) => ("**met**", d),
            Verdict::Missed(d) => ("**missed**", d),
            Verdict::NotMeasured(d) => ("not measured", d),
        };
        let _ = writeln!(out, "- {}: {mark}: {}.", target.text, one_line(detail));
    }
    out.push('\n');

    out.push_str("### Versions\n\n");
    for (what, version) in &outcome.versions {
        let _ = writeln!(out, "- {what}: {version}");
    }
    out.push('\n');
    out.push_str("Raw results of every run: [benchmarks.json](benchmarks.json).\n");
    let _ = writeln!(out, "{END}");
    out
}

/// The document with `section` in place of the old generated section; a
/// document without one gets it before its first `## ` heading.
pub fn splice(existing: Option<&str>, section: &str) -> String {
    let Some(doc) = existing else {
        return format!("# Benchmarks\n\n{section}");
    };
    if let (Some(start), Some(end)) = (doc.find(START), doc.find(END)) {
        if start < end {
            let mut rest = &doc[end + END.len()..];
            rest = rest.strip_prefix('\n').unwrap_or(rest);
            return format!("{}{section}{rest}", &doc[..start]);
        }
    }
    let mut offset = 0;
    for line in doc.split_inclusive('\n') {
        if line.starts_with("## ") {
            return format!("{}{section}\n{}", &doc[..offset], &doc[offset..]);
        }
        offset += line.len();
    }
    let sep = if doc.ends_with("\n\n") {
        ""
    } else if doc.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    format!("{doc}{sep}{section}")
}

#[cfg(test)]
mod tests {
    use super::super::{Run, Transport};
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn transport(name: &str) -> &'static Transport {
        TRANSPORTS.iter().find(|t| t.name == name).unwrap()
    }

    fn contestant(name: &str, client: Client, jsons: &[&str]) -> Contestant {
        let (prefix, transport_name) = name.split_once('-').unwrap();
        assert_eq!(prefix, client.prefix());
        Contestant {
            name: name.to_owned(),
            transport: transport(transport_name),
            client,
            label: name.to_owned(),
            command: Some((PathBuf::from("x"), Vec::new())),
            unavailable: None,
            messages: 20_000,
            rtt_samples: 500,
            runs: jsons
                .iter()
                .enumerate()
                .map(|(i, j)| Run {
                    round: i as u32 + 1,
                    secs: 1.0,
                    sample: stats::Sample::parse(j),
                    error: None,
                })
                .collect(),
        }
    }

    fn outcome(contestants: Vec<Contestant>) -> Outcome {
        Outcome {
            command: "cargo xtask bench".to_owned(),
            started_utc: "2026-11-28 04:00".to_owned(),
            took: Duration::from_secs(300),
            messages: 20_000,
            slow_messages: 200,
            size: 100,
            rounds: 3,
            rtt_samples: 500,
            cpus: 2,
            load_before: "0.10 0.20 0.30".to_owned(),
            load_after: "1.00 0.50 0.40".to_owned(),
            versions: vec![("rustc".to_owned(), "rustc 1.95.0".to_owned())],
            contestants,
        }
    }

    fn redis_outcome() -> Outcome {
        outcome(vec![
            contestant(
                "kombu-redis",
                Client::Kombu,
                &[
                    r#"{"publish_per_sec": 100000, "consume_per_sec": 40000, "rtt_p50_us": 300, "rtt_p99_us": 900, "peak_rss_bytes": 10485760}"#,
                    r#"{"publish_per_sec": 90000, "consume_per_sec": 50000, "rtt_p50_us": 310, "rtt_p99_us": 800, "peak_rss_bytes": 10485760}"#,
                    r#"{"publish_per_sec": 110000, "consume_per_sec": 45000, "rtt_p50_us": 290, "rtt_p99_us": 1000, "peak_rss_bytes": 10485760}"#,
                ],
            ),
            contestant(
                "raw-redis",
                Client::Raw,
                &[
                    r#"{"publish_per_sec": 200000, "consume_per_sec": 50000, "rtt_p50_us": 100, "rtt_p99_us": 300, "peak_rss_bytes": 5242880}"#,
                ],
            ),
            contestant(
                "python-redis",
                Client::Python,
                &[
                    r#"{"publish_per_sec": 1000, "consume_per_sec": 2000, "rtt_p50_us": 900, "rtt_p99_us": 3000, "peak_rss_bytes": 31457280}"#,
                ],
            ),
        ])
    }

    #[test]
    fn tables_hold_medians_spreads_and_ratios() {
        let text = markdown_section(&redis_outcome(), "benchmarks.svg");
        assert!(text.starts_with(START) && text.trim_end().ends_with(END));
        assert!(text.contains("### redis (Redis server)"), "{text}");
        // Median 100,000 with rounds at 90k and 110k: ±10%.
        assert!(
            text.contains(
                "| kombu-redis | 3 | 100,000 ±10% | 45,000 ±11% | 300 ±3% | 900 ±11% | 10.0 ±0% |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| *kombu-rs ÷ raw-redis* | | 0.50x | 0.90x | 3.00x | 3.00x | 2.00x |"),
            "{text}"
        );
        assert!(
            text.contains("| *kombu-rs ÷ python-redis* | | 100x | 22.5x | 0.33x | 0.30x | 0.33x |"),
            "{text}"
        );
        assert!(
            text.contains("![Throughput and round trips per client and transport](benchmarks.svg)")
        );
        assert!(text.contains("cargo xtask bench\n"));
        assert!(text.contains("0.10 0.20 0.30"));
    }

    #[test]
    fn targets_are_judged_from_the_medians() {
        let targets = targets(&redis_outcome());
        let verdict = |prefix: &str| {
            &targets
                .iter()
                .find(|t| t.text.starts_with(prefix))
                .unwrap_or_else(|| panic!("no target {prefix}"))
                .verdict
        };
        match verdict("redis publish, 64") {
            Verdict::Missed(text) => assert!(text.starts_with("0.50x vs 0.80x needed"), "{text}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(verdict("redis consume+ack"), Verdict::Met(_)));
        match verdict("redis round-trip") {
            Verdict::Missed(text) => assert!(text.contains("100% over"), "{text}"),
            other => panic!("{other:?}"),
        }
        match verdict("memory:// publish") {
            Verdict::NotMeasured(text) => assert!(text.contains("not selected"), "{text}"),
            other => panic!("{other:?}"),
        }
        match verdict("redis: consuming 1,000,000") {
            Verdict::NotMeasured(text) => assert!(
                text.contains("20,000 messages (peak RSS 10.0 MiB)"),
                "{text}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unavailable_and_failed_rows_say_why() {
        let mut missing = contestant("raw-redis", Client::Raw, &[]);
        missing.unavailable =
            Some("not available: kombu-redis has no example raw_redis_bench yet".to_owned());
        missing.command = None;
        let mut failed = contestant("python-redis", Client::Python, &[]);
        failed.runs.push(Run {
            round: 1,
            secs: 2.0,
            sample: None,
            error: Some("exit status: 1: boom | bang".to_owned()),
        });
        let text = markdown_section(&outcome(vec![missing, failed]), "b.svg");
        assert!(
            text.contains(
                "| raw-redis | 0 | not available: kombu-redis has no example raw_redis_bench yet |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| python-redis | 0/1 | failed: exit status: 1: boom / bang |"),
            "{text}"
        );
    }

    #[test]
    fn the_chart_is_an_svg_with_a_bar_per_client() {
        let path =
            std::env::temp_dir().join(format!("xtask-bench-chart-{}.svg", std::process::id()));
        super::super::chart::write_svg(&path, &redis_outcome()).expect("chart written");
        let svg = std::fs::read_to_string(&path).expect("chart read");
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{svg}");
        for label in [
            "redis: kombu-redis",
            "redis: raw-redis",
            "redis: python-redis",
            "100,000",
            "45,000",
        ] {
            assert!(svg.contains(label), "no {label} in the chart");
        }
        // Publish + consume bars for three clients and three round-trip bars.
        assert!(svg.matches("<rect").count() >= 9, "{svg}");
    }

    #[test]
    fn splice_replaces_only_the_generated_section() {
        let section = format!("{START}\nnew\n{END}\n");
        let doc = format!("# B\n\nintro\n\n{START}\nold\n{END}\n\n## Hand-written\n\nkept\n");
        assert_eq!(
            splice(Some(&doc), &section),
            format!("# B\n\nintro\n\n{START}\nnew\n{END}\n\n## Hand-written\n\nkept\n")
        );
        // No markers yet: before the first second-level heading.
        let doc = "# B\n\nintro\n\n## Old\n\ntext\n";
        assert_eq!(
            splice(Some(doc), &section),
            format!("# B\n\nintro\n\n{section}\n## Old\n\ntext\n")
        );
        assert_eq!(splice(Some("# B\n"), &section), format!("# B\n\n{section}"));
        assert_eq!(splice(None, &section), format!("# Benchmarks\n\n{section}"));
    }
}
