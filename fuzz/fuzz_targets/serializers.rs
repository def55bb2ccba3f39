//! Every serializer's decode, through the registry as a consumer calls it:
//! the first byte picks the content type and encoding (json, msgpack,
//! yaml, pickle, raw data, text in each charset), the rest is the body.
//! Never a panic; pickle is always refused; a decoded value encodes again.
#![no_main]

use kombu_core::serialization::{Accept, Payload, SerializerRegistry};
use kombu_core::ErrorKind;
use libfuzzer_sys::fuzz_target;

/// (content type, content encoding) pairs a message can carry.
const KINDS: &[(Option<&str>, Option<&str>)] = &[
    (Some("application/json"), Some("utf-8")),
    (Some("application/x-msgpack"), Some("binary")),
    (Some("application/x-yaml"), Some("utf-8")),
    (Some("application/x-python-serialize"), Some("binary")),
    (Some("application/data"), Some("binary")),
    (Some("text/plain"), Some("utf-8")),
    (Some("text/plain"), Some("ascii")),
    (Some("text/plain"), Some("latin-1")),
    (Some("text/plain"), Some("utf-16")),
    (None, None),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (content_type, content_encoding) = KINDS[usize::from(selector) % KINDS.len()];
    let registry = SerializerRegistry::default();
    let decoded = registry.decode(content_type, content_encoding, body, &Accept::all());
    if content_type == Some("application/x-python-serialize") && !body.is_empty() {
        let err = decoded.expect_err("pickle must be refused");
        assert_eq!(err.kind(), ErrorKind::Serialization);
        return;
    }
    if let Ok(Payload::Value(value)) = decoded {
        for name in ["json", "msgpack", "yaml"] {
            let _ = registry.encode(name, &value);
        }
    }
});
