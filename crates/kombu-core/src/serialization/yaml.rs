//! kombu's `yaml` serializer.

use serde_json::Value;

use super::json::key_to_string;
use super::{serialization_error, Serializer};
use crate::error::Result;

/// kombu's `yaml` serializer (`application/x-yaml`, `utf-8`).
///
/// Decoding reads what PyYAML's `safe_dump` writes: non-string keys become
/// their JSON text, timestamps stay strings and `!!binary` values come back
/// as their base64 text (kombu-rs' YAML reader does not see core tags). Encoding sorts keys as `safe_dump` does and gives the same text
/// for plain data; quoting and float style may differ in corner cases
/// (PyYAML escapes non-ASCII text, kombu-rs writes UTF-8), which every YAML
/// reader, PyYAML included, reads back to the same values.
///
/// ```
/// use kombu_core::serialization::{Serializer, YamlSerializer};
/// let body = YamlSerializer.encode(&serde_json::json!({"n": 1, "l": ["x"]})).unwrap();
/// assert_eq!(body, b"l:\n- x\nn: 1\n");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct YamlSerializer;

impl Serializer for YamlSerializer {
    fn name(&self) -> &str {
        "yaml"
    }
    fn content_type(&self) -> &str {
        "application/x-yaml"
    }
    fn content_encoding(&self) -> &str {
        "utf-8"
    }
    fn encode(&self, value: &Value) -> Result<Vec<u8>> {
        serde_norway::to_string(&sorted_keys(value))
            .map(String::into_bytes)
            .map_err(|e| serialization_error(format!("cannot encode YAML: {e}")).with_source(e))
    }
    fn decode(&self, body: &[u8]) -> Result<Value> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null); // PyYAML: an empty document is None
        }
        let yaml: serde_norway::Value = serde_norway::from_slice(body)
            .map_err(|e| serialization_error(format!("cannot decode YAML: {e}")).with_source(e))?;
        yaml_to_json(yaml)
    }
}

fn sorted_keys(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted_keys).collect()),
        other => other.clone(),
    }
}

fn yaml_to_json(yaml: serde_norway::Value) -> Result<Value> {
    use serde_norway::Value as Y;
    Ok(match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => {
            Value::Array(items.into_iter().map(yaml_to_json).collect::<Result<_>>()?)
        }
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| Ok((key_to_string(yaml_to_json(k)?)?, yaml_to_json(v)?)))
                .collect::<Result<_>>()?,
        ),
        // Local tags (`!thing`) are dropped; `!!binary` reaches us untagged
        // (serde_norway resolves core-schema tags), as its base64 text.
        Y::Tagged(tagged) => yaml_to_json(tagged.value)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Golden values below were produced by Python 3.11.7, kombu 5.7.0,
    // msgpack 1.2.4 and PyYAML 6.0.4 (kombu.utils.json.dumps, msgpack.packb
    // with use_bin_type=True, yaml.safe_dump).

    #[test]
    fn yaml_matches_pyyaml_for_plain_data() {
        let v = json!({"hello": "world", "n": 1, "f": 1.5, "l": [1, "x", null, true], "nested": {"b": {}, "a": []}});
        let golden =
            "f: 1.5\nhello: world\nl:\n- 1\n- x\n- null\n- true\nn: 1\nnested:\n  a: []\n  b: {}\n";
        assert_eq!(
            String::from_utf8(YamlSerializer.encode(&v).unwrap()).unwrap(),
            golden
        );
        assert_eq!(YamlSerializer.decode(golden.as_bytes()).unwrap(), v);
        let golden = "- 1\n- 2\n- a: 2\n  z: 1\n";
        assert_eq!(
            YamlSerializer
                .encode(&json!([1, 2, {"z": 1, "a": 2}]))
                .unwrap(),
            golden.as_bytes()
        );
    }

    #[test]
    fn yaml_reads_pyyaml_output() {
        let py = "big: 1.0e+20\ncolon: 'a: b'\ne: ''\nm: 'multi\n\n  line'\nneg: -3\none: 1.0\nq: '''q'''\ns: 'yes'\nt: '123'\nu: \"h\\xE9llo\"\n";
        assert_eq!(
            YamlSerializer.decode(py.as_bytes()).unwrap(),
            json!({"big": 1e20, "colon": "a: b", "e": "", "m": "multi\nline", "neg": -3, "one": 1.0,
                   "q": "'q'", "s": "yes", "t": "123", "u": "h\u{e9}llo"})
        );
        assert_eq!(
            YamlSerializer.decode(b"just a string\n...\n").unwrap(),
            json!("just a string")
        );
        let special = "dt: 2024-01-02 03:04:05\nd: 2024-01-02\nb: !!binary |\n  AP8=\n1: boolkey\nnull: nullkey\n1.5: fk\n";
        assert_eq!(
            YamlSerializer.decode(special.as_bytes()).unwrap(),
            json!({"dt": "2024-01-02 03:04:05", "d": "2024-01-02", "b": "AP8=\n",
                   "1": "boolkey", "null": "nullkey", "1.5": "fk"})
        );
        assert_eq!(YamlSerializer.decode(b"\n").unwrap(), Value::Null);
        assert!(YamlSerializer.decode(b"a: [1").is_err());
    }

    /// The same bomb as msgpack's (found by fuzzing there): mappings as
    /// mapping keys, nested. Refused, as PyYAML refuses unhashable keys.
    #[test]
    fn nested_mapping_keys_are_refused_not_doubled() {
        let mut body = String::from("1");
        for _ in 0..60 {
            body = format!("{{? {body}: 1}}");
        }
        let started = std::time::Instant::now();
        let err = YamlSerializer.decode(body.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("map key is a map"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(YamlSerializer.decode(b"? [1, 2]\n: x\n").is_err());
        assert_eq!(
            YamlSerializer.decode(b"1: a\nnull: b\n").unwrap(),
            json!({"1": "a", "null": "b"})
        );
    }
}
