//! kombu's `msgpack` serializer, with bytes tags carried as msgpack `bin`.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::Serialize;
use serde_json::{Map, Value};

use super::json::{key_to_string, tagged_bytes, untag_bytes};
use super::{serialization_error, Serializer};
use crate::error::Result;

/// kombu's `msgpack` serializer (`application/x-msgpack`, `binary`), the same
/// bytes as Python's `msgpack.packb(value, use_bin_type=True)`.
///
/// Bytes tags (see [`tagged_bytes`]) are written as msgpack `bin`, and `bin`
/// is read back as a bytes tag. Non-string map keys are read as their JSON
/// text (`1` becomes `"1"`), as kombu's JSON would write them.
///
/// ```
/// use kombu_core::serialization::{MsgpackSerializer, Serializer};
/// let body = MsgpackSerializer.encode(&serde_json::json!({"k": [1, "x"]})).unwrap();
/// assert_eq!(body, b"\x81\xa1k\x92\x01\xa1x");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MsgpackSerializer;

impl Serializer for MsgpackSerializer {
    fn name(&self) -> &str {
        "msgpack"
    }
    fn content_type(&self) -> &str {
        "application/x-msgpack"
    }
    fn content_encoding(&self) -> &str {
        "binary"
    }
    fn encode(&self, value: &Value) -> Result<Vec<u8>> {
        rmp_serde::to_vec(&MsgpackValue(value))
            .map_err(|e| serialization_error(format!("cannot encode msgpack: {e}")).with_source(e))
    }
    fn decode(&self, body: &[u8]) -> Result<Value> {
        let mut rest = body;
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        let value = ValueSeed.deserialize(&mut de).map_err(|e| {
            serialization_error(format!("cannot decode msgpack: {e}")).with_source(e)
        })?;
        if !rest.is_empty() {
            return Err(serialization_error(format!(
                "cannot decode msgpack: {} bytes of extra data",
                rest.len()
            )));
        }
        Ok(value)
    }
}

/// Serializes a [`Value`] with bytes tags as msgpack `bin`.
struct MsgpackValue<'a>(&'a Value);

impl Serialize for MsgpackValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => {
                if let Some(bytes) = untag_bytes(self.0) {
                    return s.serialize_bytes(&bytes);
                }
                let mut out = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    out.serialize_entry(k, &MsgpackValue(v))?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    out.serialize_element(&MsgpackValue(v))?;
                }
                out.end()
            }
            other => other.serialize(s),
        }
    }
}

/// Deserializes any self-describing data into a [`Value`], turning bytes
/// into bytes tags and non-string map keys into their JSON text.
struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a msgpack value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        // NaN and infinities have no JSON form: they become null.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.into()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> std::result::Result<Value, E> {
        Ok(tagged_bytes(v))
    }
    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        ValueSeed.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(ValueSeed)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(ValueSeed)? {
            let value = map.next_value_seed(ValueSeed)?;
            out.insert(key_to_string(key).map_err(de::Error::custom)?, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::json;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    // Golden values below were produced by Python 3.11.7, kombu 5.7.0,
    // msgpack 1.2.4 and PyYAML 6.0.4 (kombu.utils.json.dumps, msgpack.packb
    // with use_bin_type=True, yaml.safe_dump).

    const MSGPACK_INTS: &str = "gaRpbnRz3AAUAH/MgMz/zQEAzf//zgABAADO/////88AAAABAAAAAP/g0N/QgNH/f9GAANL//3//0oAAAADT/////3/////P///////////TgAAAAAAAAAA=";
    const MSGPACK_STRS: &str = "85a47374727396a0bf61616161616161616161616161616161616161616161616161616161616161d9206262626262626262626262626262626262626262626262626262626262626262d9ff636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363da010064646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464a2c3a9a16693cb3ff8000000000000cb8000000000000000cb7e37e43c8800759ca16ec0a174c3a66e657374656481a178929080";
    const MSGPACK_BIN: &str = "g6NiaW7EAgD/pWFycjE23AAQAAECAwQFBgcICQoLDA0OD6VtYXAxNt4AEKEwAKExAaEyAqEzA6E0BKE1BaE2BqE3B6E4CKE5CaIxMAqiMTELojEyDKIxMw2iMTQOojE1Dw==";

    fn msgpack_strs_value() -> Value {
        json!({"strs": ["", "a".repeat(31), "b".repeat(32), "c".repeat(255), "d".repeat(256), "\u{e9}"],
               "f": [1.5, -0.0, 1e300], "n": null, "t": true, "nested": {"x": [[], {}]}})
    }

    #[test]
    fn msgpack_matches_python() {
        let ints = json!({"ints": [0, 127, 128, 255, 256, 65535, 65536, 4294967295u64, 4294967296u64,
            -1, -32, -33, -128, -129, -32768, -32769, -2147483648i64, -2147483649i64,
            u64::MAX, i64::MIN]});
        let strs = msgpack_strs_value();
        let map16: Map<String, Value> = (0..16).map(|i| (i.to_string(), json!(i))).collect();
        let bin = json!({"bin": tagged_bytes(b"\x00\xff"), "arr16": (0..16).collect::<Vec<_>>(), "map16": map16});
        for (value, golden) in [
            (ints, b64(MSGPACK_INTS)),
            (strs, hex(MSGPACK_STRS)),
            (bin, b64(MSGPACK_BIN)),
        ] {
            assert_eq!(MsgpackSerializer.encode(&value).unwrap(), golden);
            assert_eq!(MsgpackSerializer.decode(&golden).unwrap(), value);
        }
    }

    #[test]
    fn msgpack_strs_exact_prefix_and_markers() {
        // Python: str8 (0xd9) from 32 bytes, str16 (0xda) from 256, float64 (0xcb).
        let body = MsgpackSerializer.encode(&msgpack_strs_value()).unwrap();
        let find = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"\xa0\xbfaaaa"));
        assert!(find(b"\xd9\x20bbbb"));
        assert!(find(b"\xd9\xffcccc"));
        assert!(find(b"\xda\x01\x00dddd"));
        assert!(find(b"\xa2\xc3\xa9"));
        assert!(find(b"\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00"));
        assert!(find(b"\xcb\x80\x00\x00\x00\x00\x00\x00\x00"));
    }

    #[test]
    fn msgpack_rejects_garbage_and_reads_int_keys() {
        assert!(MsgpackSerializer.decode(b"\x91").is_err());
        assert!(MsgpackSerializer.decode(b"\x01\x02").is_err());
        assert!(MsgpackSerializer.decode(&[0xc1]).is_err());
        // {1: "a", None: "b"} from Python
        assert_eq!(
            MsgpackSerializer.decode(b"\x82\x01\xa1a\xc0\xa1b").unwrap(),
            json!({"1": "a", "null": "b"})
        );
    }

    /// Found by fuzzing (a consumer hung, then ran out of memory, on these
    /// 133 bytes): maps as map keys, nested; each level's JSON text escaped
    /// the one inside it, doubling it. A list or map key is refused, as in
    /// Python.
    #[test]
    fn nested_map_keys_are_refused_not_doubled() {
        let body = hex(concat!(
            "83ff6183010183b86f200d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d2b0d0d0d020d",
            "0d0d0d0d0d0d0d0d2b8181818181818181818181818181818181818181818181",
            "8181818181818181818181818181818181818181818181810d0d0d0d0d0d0d0d",
            "0d0d2d31370d0d0d0d0d73746564616e3a20310a6c6973743a205b2e322c200d",
            "0d68097b7b",
        ));
        let started = std::time::Instant::now();
        let err = MsgpackSerializer.decode(&body).unwrap_err();
        assert!(err.to_string().contains("map key is a map"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // {[1]: 1} and {{"a": 1}: 1}; bytes and scalar keys still read.
        assert!(MsgpackSerializer.decode(&hex("81910101")).is_err());
        assert!(MsgpackSerializer.decode(&hex("8181a1610101")).is_err());
        assert_eq!(
            MsgpackSerializer.decode(&hex("82c4016101c002")).unwrap(),
            json!({"{\"__type__\": \"bytes\", \"__value__\": \"a\"}": 1, "null": 2})
        );
    }
}
