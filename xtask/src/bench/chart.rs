//! `docs/benchmarks.svg`: horizontal bars per transport and client, on log
//! scales: publish and consume+ack msgs/s on the left, round-trip p50 on
//! the right (medians over the rounds).

use std::path::Path;

use plotters::prelude::*;

use super::stats::{thousands, Metric};
use super::{Client, Outcome};
use crate::Result;

/// The height of one row in y units (bars are placed in hundredths).
const ROW: i32 = 100;

/// One bar group: a client on a transport.
struct Row {
    label: String,
    client: Client,
    publish: Option<f64>,
    consume: Option<f64>,
    rtt_p50: Option<f64>,
}

fn rows(outcome: &Outcome) -> Vec<Row> {
    outcome
        .contestants
        .iter()
        .filter(|c| !c.samples().is_empty())
        .map(|c| Row {
            label: format!("{}: {}", c.transport.name, c.label),
            client: c.client,
            publish: c.median(Metric::Publish),
            consume: c.median(Metric::Consume),
            rtt_p50: c.median(Metric::RttP50),
        })
        .collect()
}

/// The decade bounds around every positive value (at least 10..1e6).
fn log_bounds(values: impl Iterator<Item = f64>, floor: f64, ceil: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for v in values.filter(|v| *v > 0.0 && v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (floor, ceil);
    }
    (
        10f64.powf(lo.log10().floor()).min(floor),
        10f64.powf(hi.log10().ceil()).max(ceil),
    )
}

/// Compact axis numbers: 100, 10k, 1M.
fn compact(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.0}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        thousands(v)
    }
}

fn shade(client: Client, metric: Metric) -> RGBColor {
    match (client, metric) {
        (Client::Kombu, Metric::Consume) => RGBColor(255, 140, 40),
        (Client::Kombu, _) => RGBColor(200, 80, 0),
        (Client::Raw, Metric::Consume) => RGBColor(120, 120, 120),
        (Client::Raw, _) => RGBColor(60, 60, 60),
        (Client::Python, Metric::Consume) => RGBColor(90, 150, 230),
        (Client::Python, _) => RGBColor(30, 80, 170),
    }
}

/// Draw the chart into `path`.
pub fn write_svg(path: &Path, outcome: &Outcome) -> Result<()> {
    let rows = rows(outcome);
    let n = rows.len().max(1);
    let height = 90 + 26 * n as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(720);

    // Row i is drawn from the top, in the band (y, y + ROW) with
    // y = (n - 1 - i) * ROW; its label sits at the band's middle.
    let span = n as i32 * ROW;
    let centers: Vec<i32> = (0..n as i32).map(|k| k * ROW + ROW / 2).collect();
    let label_of = |y: &i32| -> String {
        let k = y.div_euclid(ROW);
        let i = n as i32 - 1 - k;
        if y.rem_euclid(ROW) != ROW / 2 || i < 0 {
            return String::new();
        }
        rows.get(i as usize)
            .map(|r| r.label.clone())
            .unwrap_or_default()
    };
    let top = |i: usize| (n - 1 - i) as i32 * ROW;

    let (lo, hi) = log_bounds(
        rows.iter().flat_map(|r| [r.publish, r.consume]).flatten(),
        100.0,
        1e5,
    );
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "msgs/s (median, log scale): publish | consume+ack",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(230)
        .build_cartesian_2d(
            (lo..hi).log_scale(),
            (0..span).with_key_points(centers.clone()),
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_label_formatter(&label_of)
        .x_label_formatter(&|v| compact(*v))
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| e.to_string())?;
    for (metric, (from, to)) in [(Metric::Publish, (52, 88)), (Metric::Consume, (12, 48))] {
        chart
            .draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
                let v = match metric {
                    Metric::Publish => r.publish,
                    _ => r.consume,
                }?;
                Some(Rectangle::new(
                    [(lo, top(i) + from), (v.max(lo), top(i) + to)],
                    shade(r.client, metric).filled(),
                ))
            }))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
                let v = match metric {
                    Metric::Publish => r.publish,
                    _ => r.consume,
                }?;
                Some(Text::new(
                    thousands(v),
                    (v.max(lo) * 1.08, top(i) + to),
                    ("sans-serif", 10).into_font(),
                ))
            }))
            .map_err(|e| e.to_string())?;
    }

    let (rlo, rhi) = log_bounds(rows.iter().filter_map(|r| r.rtt_p50), 10.0, 1e4);
    let mut chart = ChartBuilder::on(&right)
        .caption("round trip p50, µs (log scale)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(10)
        .build_cartesian_2d((rlo..rhi).log_scale(), (0..span).with_key_points(centers))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_label_formatter(&|_| String::new())
        .x_label_formatter(&|v| compact(*v))
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
            let v = r.rtt_p50?;
            Some(Rectangle::new(
                [(rlo, top(i) + 20), (v.max(rlo), top(i) + 80)],
                shade(r.client, Metric::RttP50).filled(),
            ))
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
            let v = r.rtt_p50?;
            Some(Text::new(
                thousands(v),
                (v.max(rlo) * 1.08, top(i) + 75),
                ("sans-serif", 10).into_font(),
            ))
        }))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_bounds_cover_every_value_by_decades() {
        assert_eq!(
            log_bounds([150.0, 2_500_000.0].into_iter(), 100.0, 1e5),
            (100.0, 1e7)
        );
        assert_eq!(log_bounds([5.0, 20.0].into_iter(), 100.0, 1e5), (1.0, 1e5));
        assert_eq!(log_bounds(std::iter::empty(), 10.0, 1e4), (10.0, 1e4));
    }

    #[test]
    fn compact_axis_labels() {
        assert_eq!(compact(100.0), "100");
        assert_eq!(compact(10_000.0), "10k");
        assert_eq!(compact(1_000_000.0), "1M");
    }
}
