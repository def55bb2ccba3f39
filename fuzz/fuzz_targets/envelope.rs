//! The kombu envelope (a virtual transport's stored message): any bytes
//! read as an envelope or an error, never a panic; an envelope read back
//! from its own JSON is the same envelope (with `body_encoding` base64).
#![no_main]

use kombu_core::envelope::{delivery_count, Envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut envelope) = Envelope::from_json(data) else {
        return;
    };
    let _ = (
        envelope.priority(),
        envelope.redelivered(),
        envelope.delivery_tag(),
        delivery_count(&envelope.headers),
    );
    let json = envelope.to_json();
    let back = Envelope::from_json(&json).unwrap_or_else(|e| {
        panic!(
            "{:?} does not read back: {e}",
            String::from_utf8_lossy(&json)
        )
    });
    if let Some(encoding) = envelope.properties.get_mut("body_encoding") {
        *encoding = "base64".into();
    } else {
        envelope
            .properties
            .insert("body_encoding".into(), "base64".into());
    }
    assert_eq!(back, envelope);
    envelope.count_return();
    envelope.mark_redelivered();
    envelope.set_delivery_info("ex", "rk");
    assert!(envelope.redelivered());
    assert!(Envelope::from_json(&envelope.to_json()).is_ok());
});
