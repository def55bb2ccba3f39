//! Micro-benchmarks of kombu-core's hot paths: the JSON envelope, topic
//! routing over 10,000 bindings, serializer and compression round trips on a
//! typical 1 KiB body.
//!
//! Run with `cargo bench -p kombu-core` (figures in docs/benchmarks.md).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kombu_core::compression::CompressionRegistry;
use kombu_core::envelope::{Envelope, PublishProperties};
use kombu_core::routing::{route, QueueBinding};
use kombu_core::serialization::SerializerRegistry;
use kombu_core::ExchangeType;
use serde_json::{json, Map, Value};

/// A typical task message of about 1 KiB once serialized as JSON: a
/// Celery-like structure with ids, arguments and some free text.
fn typical_value() -> Value {
    let text = "lorem ipsum dolor sit amet, consectetur adipiscing elit ";
    json!({
        "id": "5f0c6d2e-8f4b-4a8f-9d1e-2b7c3a9e4f10",
        "task": "app.tasks.process_order",
        "args": [1842, "EUR", 19.99, true],
        "kwargs": {
            "customer": {"id": 77121, "name": "Ada Lovelace", "tier": "gold"},
            "items": [
                {"sku": "A-100", "qty": 2, "price": 4.5},
                {"sku": "B-220", "qty": 1, "price": 10.99},
                {"sku": "C-310", "qty": 3, "price": 0.0}
            ],
            "note": text.repeat(10),
        },
        "retries": 0,
        "eta": null,
        "expires": "2026-01-01T00:00:00+00:00",
    })
}

/// A 1 KiB JSON body as kombu serializes it.
fn typical_body() -> Vec<u8> {
    let body = SerializerRegistry::default()
        .encode("json", &typical_value())
        .expect("json encodes")
        .0;
    assert!(
        (900..1300).contains(&body.len()),
        "body is {} bytes",
        body.len()
    );
    body
}

fn typical_envelope() -> Envelope {
    let mut headers = Map::new();
    headers.insert("x-origin".into(), "bench".into());
    let props = PublishProperties::default()
        .with("correlation_id", "5f0c6d2e-8f4b-4a8f-9d1e-2b7c3a9e4f10")
        .with("reply_to", "replies")
        .into_map_with_tag("tasks", "orders", "00000000-0000-4000-8000-000000000001");
    Envelope::new(
        typical_body(),
        Some("application/json".into()),
        Some("utf-8".into()),
        headers,
        props,
    )
}

fn envelope(c: &mut Criterion) {
    let env = typical_envelope();
    let json = env.to_json();
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_1KiB", |b| b.iter(|| black_box(&env).to_json()));
    group.bench_function("decode_1KiB", |b| {
        b.iter(|| Envelope::from_json(black_box(&json)).expect("decodes"))
    });
    group.bench_function("properties_map", |b| {
        b.iter(|| {
            PublishProperties::default().into_map_with_tag(
                black_box("tasks"),
                black_box("orders"),
                "00000000-0000-4000-8000-000000000001",
            )
        })
    });
    group.finish();
}

/// 10,000 topic bindings `svc<i>.<level>.*` and `svc<i>.#` style patterns;
/// a routing key that matches a handful of them.
fn topic_bindings() -> Vec<QueueBinding> {
    let levels = ["info", "warn", "error", "debug"];
    (0..10_000)
        .map(|i| {
            let pattern = match i % 4 {
                0 => format!("svc{}.{}.*", i / 4, levels[i % levels.len()]),
                1 => format!("svc{}.#", i / 4),
                2 => format!("*.{}.host{}", levels[i % levels.len()], i / 4),
                _ => format!("#.shard{}", i / 4),
            };
            QueueBinding::new(format!("q{i}"), pattern)
        })
        .collect()
}

fn routing(c: &mut Criterion) {
    let bindings = topic_bindings();
    let none = Map::new();
    let hits = route(ExchangeType::Topic, &bindings, "svc42.error.db", &none);
    assert!(!hits.is_empty());
    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(1));
    group.bench_function("topic_10k_bindings", |b| {
        b.iter(|| {
            route(
                ExchangeType::Topic,
                black_box(&bindings),
                black_box("svc42.error.db"),
                &none,
            )
        })
    });
    let direct: Vec<QueueBinding> = (0..10_000)
        .map(|i| QueueBinding::new(format!("q{i}"), format!("key{i}")))
        .collect();
    group.bench_function("direct_10k_bindings", |b| {
        b.iter(|| {
            route(
                ExchangeType::Direct,
                black_box(&direct),
                black_box("key5000"),
                &none,
            )
        })
    });
    group.finish();
}

fn serializers(c: &mut Criterion) {
    let registry = SerializerRegistry::default();
    let value = typical_value();
    let mut group = c.benchmark_group("serializer_round_trip");
    group.throughput(Throughput::Elements(1));
    for name in ["json", "msgpack", "yaml"] {
        let serializer = registry.by_name(name).expect("registered");
        group.bench_function(name, |b| {
            b.iter(|| {
                let body = serializer.encode(black_box(&value)).expect("encodes");
                serializer.decode(&body).expect("decodes")
            })
        });
    }
    group.finish();
}

fn compression(c: &mut Criterion) {
    let registry = CompressionRegistry::default();
    let body = typical_body();
    let mut group = c.benchmark_group("compression_round_trip_1KiB");
    group.throughput(Throughput::Bytes(body.len() as u64));
    for name in ["zlib", "bzip2", "lzma", "brotli", "zstd"] {
        let compressor = registry.by_name(name).expect("registered");
        group.bench_function(name, |b| {
            b.iter(|| {
                let packed = compressor.compress(black_box(&body)).expect("compresses");
                compressor.decompress(&packed).expect("decompresses")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, envelope, routing, serializers, compression);
criterion_main!(benches);
