//! Message bodies: `{"id": n, "data": "...", "crc32": c}` where `c` is the
//! CRC-32 of `"<id>:<data>"`, so a body whose id or data changed in transit
//! is caught.

use serde_json::{json, Value};

/// The payload carried with id `id` (about 200 bytes, different per id).
pub fn payload(id: u64) -> String {
    let seed = format!("{id:010}-");
    seed.repeat(200 / seed.len() + 1)
}

fn crc(id: u64, data: &str) -> u32 {
    crc32fast::hash(format!("{id}:{data}").as_bytes())
}

/// The body published for id `id`.
///
/// ```
/// let body = kombu_faults::body::make(3);
/// assert_eq!(body["id"], 3);
/// ```
pub fn make(id: u64) -> Value {
    let data = payload(id);
    let crc = crc(id, &data);
    json!({"id": id, "data": data, "crc32": crc})
}

/// What a received body turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Intact: this id, the checksum matches.
    Ok(u64),
    /// The checksum does not match (the id, if one could be read).
    Corrupt(Option<u64>),
}

/// Check a received body.
///
/// ```
/// use kombu_faults::body::{check, make, Check};
/// let mut body = make(5);
/// body["data"] = "tampered".into();
/// assert_eq!(check(&body), Check::Corrupt(Some(5)));
/// ```
pub fn check(body: &Value) -> Check {
    let id = body.get("id").and_then(Value::as_u64);
    let data = body.get("data").and_then(Value::as_str);
    let sum = body.get("crc32").and_then(Value::as_u64);
    match (id, data, sum) {
        (Some(id), Some(data), Some(sum)) if u64::from(crc(id, data)) == sum => Check::Ok(id),
        _ => Check::Corrupt(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_covered() {
        assert_eq!(check(&make(0)), Check::Ok(0));
        let mut b = make(9);
        b["id"] = 8.into();
        assert_eq!(check(&b), Check::Corrupt(Some(8)));
        let mut b = make(9);
        b["crc32"] = 1.into();
        assert_eq!(check(&b), Check::Corrupt(Some(9)));
        assert_eq!(check(&serde_json::json!("x")), Check::Corrupt(None));
    }
}
