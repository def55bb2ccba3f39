//! The report of the raw-client baselines (`raw_redis_bench`,
//! `raw_lapin_bench`, `raw_nats_bench`, run by `cargo xtask bench` beside
//! `kombu bench`): the same JSON fields as `kombu bench --json`, or a few
//! lines for a person.

use std::time::Duration;

use serde_json::{json, Value};

/// What one raw-client run measured.
pub struct RawBenchReport<'a> {
    /// The broker URL (password masked).
    pub url: &'a str,
    /// `redis-raw`, `amqp-raw`, `nats-raw`.
    pub transport: &'a str,
    /// Messages published, then consumed and acked.
    pub messages: u64,
    /// Body size in bytes.
    pub size: usize,
    /// Publishes kept in flight, where the client pipelines them.
    pub in_flight: Option<u64>,
    /// Messages fetched ahead (a batch, a prefetch, a pull).
    pub prefetch: u64,
    /// How long publishing took.
    pub publish: Duration,
    /// How long consuming and acking took.
    pub consume: Duration,
    /// Single round trips, publish to receipt (any order).
    pub rtt: Vec<Duration>,
}

impl RawBenchReport<'_> {
    /// The JSON line `cargo xtask bench` reads (`kombu bench --json`'s
    /// field names).
    pub fn to_json(&self) -> Value {
        let rtt = self.sorted_rtt();
        let mut report = json!({
            "url": self.url,
            "transport": self.transport,
            "messages": self.messages,
            "size": self.size,
            "producers": 1,
            "consumers": 1,
            "prefetch": self.prefetch,
            "publish_secs": self.publish.as_secs_f64(),
            "publish_per_sec": per_sec(self.messages, self.publish),
            "consume_secs": self.consume.as_secs_f64(),
            "consume_per_sec": per_sec(self.messages, self.consume),
            "rtt_samples": rtt.len(),
            "rtt_p50_us": percentile_us(&rtt, 50.0),
            "rtt_p99_us": percentile_us(&rtt, 99.0),
            "peak_rss_bytes": peak_rss_bytes(),
        });
        if let Some(in_flight) = self.in_flight {
            report["in_flight"] = in_flight.into();
        }
        report
    }

    /// Print the JSON line (`json`) or, after `headline`, the rates, the
    /// round-trip percentiles and the peak RSS.
    pub fn print(&self, json: bool, headline: &str) {
        if json {
            println!("{}", self.to_json());
            return;
        }
        println!("{headline}");
        println!(
            "  publish      {:>10.0} msgs/s  ({:.3} s)",
            per_sec(self.messages, self.publish),
            self.publish.as_secs_f64()
        );
        println!(
            "  consume+ack  {:>10.0} msgs/s  ({:.3} s)",
            per_sec(self.messages, self.consume),
            self.consume.as_secs_f64()
        );
        let rtt = self.sorted_rtt();
        if let (Some(p50), Some(p99)) = (percentile_us(&rtt, 50.0), percentile_us(&rtt, 99.0)) {
            println!(
                "  round trip   p50 {p50:.1} µs, p99 {p99:.1} µs  ({} samples)",
                rtt.len()
            );
        }
        if let Some(bytes) = peak_rss_bytes() {
            println!("  peak RSS     {:.1} MiB", bytes as f64 / 1048576.0);
        }
    }

    fn sorted_rtt(&self) -> Vec<Duration> {
        let mut rtt = self.rtt.clone();
        rtt.sort_unstable();
        rtt
    }
}

/// `n` over `took`, per second.
pub fn per_sec(n: u64, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// The `p`th percentile of `sorted`, in µs to one decimal (none when
/// empty).
pub fn percentile_us(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Some((sorted[index].as_secs_f64() * 1e7).round() / 10.0)
}

/// This process's peak resident set (VmHWM), where /proc has it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_has_kombu_bench_fields() {
        let report = RawBenchReport {
            url: "redis://127.0.0.1:6379/0",
            transport: "redis-raw",
            messages: 100,
            size: 10,
            in_flight: None,
            prefetch: 64,
            publish: Duration::from_secs(2),
            consume: Duration::from_secs(4),
            rtt: vec![Duration::from_micros(300), Duration::from_micros(100)],
        };
        let json = report.to_json();
        assert_eq!(json["publish_per_sec"], 50.0);
        assert_eq!(json["consume_per_sec"], 25.0);
        assert_eq!(json["rtt_p50_us"], 100.0);
        assert_eq!(json["rtt_p99_us"], 300.0);
        assert!(json.get("in_flight").is_none());
        let with = RawBenchReport {
            in_flight: Some(64),
            ..report
        };
        assert_eq!(with.to_json()["in_flight"], 64);
    }
}
