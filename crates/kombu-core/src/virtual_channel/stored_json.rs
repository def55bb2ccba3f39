//! A [`StoredMessage`]'s kombu envelope written straight to JSON: the
//! bytes of `into_envelope().to_json()` without building the envelope's
//! maps (what a backend that stores JSON writes on every publish).

use base64::Engine as _;

use super::convert::{new_delivery_tag, PUBLISHED_MS};
use super::stored::StoredMessage;
use crate::serialization::write_kombu_json;

impl StoredMessage {
    /// The kombu envelope of this message as JSON, with `priority` as its
    /// `priority` property (a backend's wire numbering) and a fresh
    /// `delivery_tag`: byte for byte what [`into_envelope`](Self::into_envelope)
    /// followed by [`Envelope::to_json`](crate::envelope::Envelope::to_json)
    /// writes (with that priority), about three times faster.
    ///
    /// ```
    /// use kombu_core::envelope::Envelope;
    /// use kombu_core::spi::StoredMessage;
    /// use kombu_core::RawMessage;
    /// let stored = StoredMessage::new(RawMessage::new(&b"hi"[..]), "ex", "rk");
    /// let envelope = Envelope::from_json(&stored.to_kombu_json(3)).unwrap();
    /// assert_eq!(envelope.body, b"hi");
    /// assert_eq!(envelope.properties["priority"], 3);
    /// assert_eq!(envelope.delivery_info().unwrap()["routing_key"], "rk");
    /// ```
    pub fn to_kombu_json(&self, priority: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.json_size_hint());
        self.write_kombu_json(&new_delivery_tag(), priority, &mut out);
        out
    }

    /// Room for the JSON of a message without headers or extras.
    fn json_size_hint(&self) -> usize {
        360 + self.body.len().div_ceil(3) * 4 + self.exchange.len() + self.routing_key.len()
    }

    /// Append the envelope's JSON with `tag` as its `delivery_tag`.
    pub(super) fn write_kombu_json(&self, tag: &str, priority: u8, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"body\": \"");
        let start = out.len();
        let encoded = self.body.len().div_ceil(3) * 4;
        out.resize(start + encoded, 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(&self.body, &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + written);
        out.extend_from_slice(b"\", \"content-encoding\": ");
        write_opt_str(out, self.content_encoding.as_deref());
        out.extend_from_slice(b", \"content-type\": ");
        write_opt_str(out, self.content_type.as_deref());
        out.extend_from_slice(b", \"headers\": ");
        self.write_headers(out);
        out.extend_from_slice(b", \"properties\": {");
        self.write_properties(tag, priority, out);
        out.extend_from_slice(b"}}");
    }

    /// The headers; a redelivered message's carry `"redelivered": true`
    /// (in place when the key is there, last otherwise).
    fn write_headers(&self, out: &mut Vec<u8>) {
        let headers = self.headers.as_deref();
        if !self.redelivered {
            match headers {
                Some(headers) => write_kombu_json(out, headers),
                None => out.extend_from_slice(b"{}"),
            }
            return;
        }
        out.push(b'{');
        let mut first = true;
        let mut seen = false;
        for (key, value) in headers.into_iter().flatten() {
            key_of(out, &mut first, key);
            if key == "redelivered" {
                seen = true;
                out.extend_from_slice(b"true");
            } else {
                write_kombu_json(out, value);
            }
        }
        if !seen {
            key_of(out, &mut first, "redelivered");
            out.extend_from_slice(b"true");
        }
        out.push(b'}');
    }

    /// The properties in kombu's order (see `convert::to_envelope`), then
    /// the extras, then the publish time.
    fn write_properties(&self, tag: &str, priority: u8, out: &mut Vec<u8>) {
        let mut first = true;
        if let Some(p) = self.properties.as_deref() {
            for (key, value) in [
                ("correlation_id", &p.correlation_id),
                ("reply_to", &p.reply_to),
                ("message_id", &p.message_id),
                ("type", &p.message_type),
                ("user_id", &p.user_id),
                ("app_id", &p.app_id),
            ] {
                if let Some(value) = value {
                    key_of(out, &mut first, key);
                    write_str(out, value);
                }
            }
            if let Some(ts) = p.timestamp {
                key_of(out, &mut first, "timestamp");
                write_number(out, ts);
            }
        }
        key_of(out, &mut first, "delivery_mode");
        write_number(
            out,
            u64::from(self.delivery_mode.unwrap_or_default().as_u8()),
        );
        if let Some(expiration) = self
            .properties
            .as_deref()
            .and_then(|p| p.expiration.as_deref())
        {
            key_of(out, &mut first, "expiration");
            write_str(out, expiration);
        }
        key_of(out, &mut first, "delivery_info");
        out.extend_from_slice(b"{\"exchange\": ");
        write_str(out, &self.exchange);
        out.extend_from_slice(b", \"routing_key\": ");
        write_str(out, &self.routing_key);
        if self.redelivered {
            out.extend_from_slice(b", \"redelivered\": true");
        }
        out.push(b'}');
        key_of(out, &mut first, "priority");
        write_number(out, u64::from(priority));
        key_of(out, &mut first, "body_encoding");
        out.extend_from_slice(b"\"base64\"");
        key_of(out, &mut first, "delivery_tag");
        write_str(out, tag);
        for (key, value) in self.extra.as_deref().into_iter().flatten() {
            key_of(out, &mut first, key);
            write_kombu_json(out, value);
        }
        if let Some(ms) = self.published_ms {
            key_of(out, &mut first, PUBLISHED_MS);
            write_number(out, ms);
        }
    }
}

/// `"key": ` after a separator unless it is the first of its object.
fn key_of(out: &mut Vec<u8>, first: &mut bool, key: &str) {
    if !std::mem::take(first) {
        out.extend_from_slice(b", ");
    }
    write_str(out, key);
    out.extend_from_slice(b": ");
}

/// A JSON string as kombu writes it: printable ASCII without quotes or
/// backslashes (names, tags, base64) as it is, anything else escaped by
/// the serializer.
fn write_str(out: &mut Vec<u8>, text: &str) {
    if text
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        write_kombu_json(out, text);
    }
}

fn write_opt_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(text) => write_str(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::message::{DeliveryMode, RawMessage};

    /// `into_envelope().to_json()` with `tag` and `priority`.
    fn via_envelope(stored: &StoredMessage, tag: &str, priority: u8) -> String {
        let mut envelope = stored.to_envelope();
        envelope
            .properties
            .insert("delivery_tag".into(), tag.into());
        envelope
            .properties
            .insert("priority".into(), priority.into());
        String::from_utf8(envelope.to_json()).unwrap()
    }

    fn direct(stored: &StoredMessage, tag: &str, priority: u8) -> String {
        let mut out = Vec::new();
        stored.write_kombu_json(tag, priority, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn variants() -> Vec<StoredMessage> {
        let plain = StoredMessage::new(RawMessage::new(&b"x"[..]), "", "q");
        let mut full = RawMessage::new(&b"{\"a\": \"\xc3\xb6\"}"[..])
            .content_type("application/json", "utf-8")
            .header("x-origin", "rüst")
            .header("redelivered", false)
            .header("n", json!([1, 1.5, {"k": null}]));
        let p = &mut full.properties;
        p.priority = Some(7);
        p.correlation_id = Some("c1".into());
        p.reply_to = Some("r\"q".into());
        p.message_id = Some("m1".into());
        p.message_type = Some("t".into());
        p.user_id = Some("u".into());
        p.app_id = Some("a".into());
        p.timestamp = Some(1_700_000_000);
        p.expiration = Some("1500".into());
        p.delivery_mode = Some(DeliveryMode::Transient);
        let full = StoredMessage::new(full, "ëx", "rk.\u{1f600}");
        let mut redelivered = full.clone();
        redelivered.mark_redelivered();
        redelivered.stamp_published(42);
        let mut plain_redelivered = plain.clone();
        plain_redelivered.mark_redelivered();
        let mut with_extra = crate::virtual_channel::convert::to_envelope(
            RawMessage::new(Vec::new()),
            "e",
            "k",
            "t".into(),
        );
        with_extra
            .properties
            .insert("x-custom".into(), json!({"z": 1, "a": [true, 2.0]}));
        with_extra.properties.insert(PUBLISHED_MS.into(), 7.into());
        let with_extra = StoredMessage::from_envelope(with_extra);
        vec![plain, full, redelivered, plain_redelivered, with_extra]
    }

    #[test]
    fn writes_the_bytes_the_envelope_writes() {
        for (i, stored) in variants().iter().enumerate() {
            for priority in [0, 3, 9] {
                assert_eq!(
                    direct(stored, "tag-1", priority),
                    via_envelope(stored, "tag-1", priority),
                    "variant {i}, priority {priority}"
                );
            }
        }
    }

    #[test]
    fn bodies_of_every_length_round_trip() {
        for len in 0..70 {
            let body: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let stored = StoredMessage::new(RawMessage::new(body.clone()), "", "q");
            assert_eq!(direct(&stored, "t", 0), via_envelope(&stored, "t", 0));
            let back = crate::envelope::Envelope::from_json(&stored.to_kombu_json(0)).unwrap();
            assert_eq!(back.body, body);
        }
    }

    #[test]
    fn strings_are_escaped_as_python_does() {
        for text in [
            "plain",
            "q\"uote",
            "back\\slash",
            "tab\t",
            "del\x7f",
            "nul\0",
            "é",
            "\u{1f600}",
            "~ !",
        ] {
            let mut fast = Vec::new();
            write_str(&mut fast, text);
            assert_eq!(
                fast,
                crate::serialization::to_kombu_json(&json!(text)),
                "{text:?}"
            );
        }
        let mut n = Vec::new();
        for value in [0, 7, 10, 255, u64::MAX] {
            n.clear();
            write_number(&mut n, value);
            assert_eq!(n, value.to_string().into_bytes());
        }
    }

    #[test]
    fn each_call_gets_a_fresh_tag() {
        let stored = &variants()[0];
        let tag = |json: Vec<u8>| {
            crate::envelope::Envelope::from_json(&json)
                .unwrap()
                .properties["delivery_tag"]
                .clone()
        };
        assert_ne!(tag(stored.to_kombu_json(0)), tag(stored.to_kombu_json(0)));
    }
}
