//! The `opentelemetry` feature: producer and consumer spans.
