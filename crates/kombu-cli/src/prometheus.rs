//! `kombu bench --metrics`: a Prometheus recorder for kombu-rs's metrics
//! (`kombu::metrics`), printed as Prometheus text at the end of the run.

use kombu::metrics::{ACK_DURATION, PUBLISH_DURATION};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets of the latency metrics, in seconds (100 µs to 5 s).
const LATENCY_BUCKETS: &[f64] = &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// Install the recorder (before any connection is made, so that every
/// producer and consumer records into it) and describe kombu's metrics.
pub fn install() -> Result<PrometheusHandle, String> {
    let mut builder = PrometheusBuilder::new();
    for name in [PUBLISH_DURATION, ACK_DURATION] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), LATENCY_BUCKETS)
            .map_err(|err| format!("metrics buckets: {err}"))?;
    }
    let handle = builder
        .install_recorder()
        .map_err(|err| format!("cannot install the metrics recorder: {err}"))?;
    kombu::metrics::describe();
    Ok(handle)
}
