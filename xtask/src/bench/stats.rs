//! The numbers of `cargo xtask bench`: one sample per contestant and round,
//! medians per metric, ratios between clients and the issue-12 targets.

use serde_json::Value;

/// The metrics every contestant reports (the keys of `kombu bench --json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Messages published per second.
    Publish,
    /// Messages consumed and acked per second.
    Consume,
    /// Median single round trip, microseconds.
    RttP50,
    /// 99th percentile single round trip, microseconds.
    RttP99,
    /// Peak resident set size of the process, bytes.
    PeakRss,
}

impl Metric {
    /// Every metric, in table order.
    pub const ALL: [Metric; 5] = [
        Metric::Publish,
        Metric::Consume,
        Metric::RttP50,
        Metric::RttP99,
        Metric::PeakRss,
    ];

    /// The JSON key the contestants print it under.
    pub fn key(self) -> &'static str {
        match self {
            Metric::Publish => "publish_per_sec",
            Metric::Consume => "consume_per_sec",
            Metric::RttP50 => "rtt_p50_us",
            Metric::RttP99 => "rtt_p99_us",
            Metric::PeakRss => "peak_rss_bytes",
        }
    }

    /// The value formatted for a table cell.
    pub fn format(self, value: f64) -> String {
        match self {
            Metric::Publish | Metric::Consume | Metric::RttP50 | Metric::RttP99 => thousands(value),
            Metric::PeakRss => format!("{:.1}", value / (1024.0 * 1024.0)),
        }
    }
}

/// One contestant's JSON line from one round.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The whole object, as printed (kept for `benchmarks.json`).
    pub raw: Value,
}

impl Sample {
    /// Parse the last line of `stdout` that holds a JSON object.
    pub fn parse(stdout: &str) -> Option<Sample> {
        stdout
            .lines()
            .rev()
            .map(str::trim)
            .filter(|line| line.starts_with('{'))
            .find_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(Value::is_object)
            .map(|raw| Sample { raw })
    }

    /// A metric, when present and a finite number.
    pub fn get(&self, metric: Metric) -> Option<f64> {
        self.raw
            .get(metric.key())
            .and_then(Value::as_f64)
            .filter(|v| v.is_finite())
    }
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// Median, smallest and largest value of one metric over the rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

/// The spread of `metric` over `samples`; `None` when no sample has it.
pub fn spread(samples: &[Sample], metric: Metric) -> Option<Spread> {
    let values: Vec<f64> = samples.iter().filter_map(|s| s.get(metric)).collect();
    let median = median(&values)?;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some(Spread { median, min, max })
}

/// `ours / theirs` (how many times the other value ours is); `None` when
/// either is missing or the divisor is zero.
pub fn ratio(ours: Option<f64>, theirs: Option<f64>) -> Option<f64> {
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(a / b),
        _ => None,
    }
}

/// A ratio for a table cell: `1.23x`, `45.6x`, `789x`.
pub fn format_ratio(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}x")
    } else if value >= 10.0 {
        format!("{value:.1}x")
    } else {
        format!("{value:.2}x")
    }
}

/// Digits grouped by thousands, no decimals: `1,234,568`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

/// Whether one issue-12 target is met.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Met; the text says by how much.
    Met(String),
    /// Missed; the text says by how much.
    Missed(String),
    /// This run did not measure it; the text says why.
    NotMeasured(String),
}

/// Compare `value` with a floor (`at_least`) or a ceiling (`!at_least`).
///
/// `unit` formats the numbers (e.g. `" msgs/s"`).
pub fn judge(value: f64, goal: f64, at_least: bool, describe: impl Fn(f64) -> String) -> Verdict {
    let share = if goal > 0.0 { value / goal } else { f64::NAN };
    if at_least {
        if value >= goal {
            Verdict::Met(format!(
                "{} vs {} needed ({:.0}% of the target)",
                describe(value),
                describe(goal),
                share * 100.0
            ))
        } else {
            Verdict::Missed(format!(
                "{} vs {} needed: {:.0}% of the target, {} short ({} more needed)",
                describe(value),
                describe(goal),
                share * 100.0,
                describe(goal - value),
                format_ratio(goal / value.max(f64::MIN_POSITIVE))
            ))
        }
    } else if value <= goal {
        Verdict::Met(format!(
            "{} vs at most {} ({:.0}% of the limit)",
            describe(value),
            describe(goal),
            share * 100.0
        ))
    } else {
        Verdict::Missed(format!(
            "{} vs at most {}: {:.0}% over",
            describe(value),
            describe(goal),
            (share - 1.0) * 100.0
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(json: &str) -> Sample {
        Sample::parse(json).expect("a JSON object")
    }

    #[test]
    fn median_of_odd_even_and_empty_lists() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn samples_come_from_the_last_json_line() {
        let out = "building...\n{\"publish_per_sec\": 1}\nnoise\n{\"publish_per_sec\": 2.5, \"rtt_p50_us\": null}\n";
        let s = sample(out);
        assert_eq!(s.get(Metric::Publish), Some(2.5));
        assert_eq!(s.get(Metric::RttP50), None);
        assert_eq!(s.get(Metric::Consume), None);
        assert!(Sample::parse("no json here\n[1,2]\n").is_none());
    }

    #[test]
    fn spread_takes_the_median_per_metric() {
        let samples = [
            sample(r#"{"publish_per_sec": 100, "consume_per_sec": 30}"#),
            sample(r#"{"publish_per_sec": 300, "consume_per_sec": 10}"#),
            sample(r#"{"publish_per_sec": 200}"#),
        ];
        let publish = spread(&samples, Metric::Publish).unwrap();
        assert_eq!(
            (publish.median, publish.min, publish.max),
            (200.0, 100.0, 300.0)
        );
        let consume = spread(&samples, Metric::Consume).unwrap();
        assert_eq!(
            (consume.median, consume.min, consume.max),
            (20.0, 10.0, 30.0)
        );
        assert!(spread(&samples, Metric::PeakRss).is_none());
    }

    #[test]
    fn ratios_and_their_formatting() {
        assert_eq!(ratio(Some(50.0), Some(20.0)), Some(2.5));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(format_ratio(2.5), "2.50x");
        assert_eq!(format_ratio(61.04), "61.0x");
        assert_eq!(format_ratio(1234.4), "1234x");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(0.2), "0");
        assert_eq!(thousands(-12_345.0), "-12,345");
    }

    #[test]
    fn rss_is_shown_in_mebibytes() {
        assert_eq!(Metric::PeakRss.format(64.0 * 1024.0 * 1024.0), "64.0");
        assert_eq!(Metric::Publish.format(12_345.6), "12,346");
    }

    #[test]
    fn verdicts_say_by_how_much() {
        let rate = |v: f64| format!("{} msgs/s", thousands(v));
        match judge(500_000.0, 1_000_000.0, true, rate) {
            Verdict::Missed(text) => {
                assert!(text.contains("50% of the target"), "{text}");
                assert!(text.contains("500,000 msgs/s short"), "{text}");
                assert!(text.contains("2.00x more needed"), "{text}");
            }
            other => panic!("expected a miss, got {other:?}"),
        }
        assert!(matches!(
            judge(1_200_000.0, 1_000_000.0, true, rate),
            Verdict::Met(_)
        ));
        match judge(3.0, 2.0, false, |v| format!("{v:.1}x")) {
            Verdict::Missed(text) => assert!(text.contains("50% over"), "{text}"),
            other => panic!("expected a miss, got {other:?}"),
        }
        assert!(matches!(
            judge(1.2, 1.5, false, |v| format!("{v}")),
            Verdict::Met(_)
        ));
    }
}
