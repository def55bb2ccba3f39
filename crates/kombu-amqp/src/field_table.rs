//! JSON arguments and headers to AMQP field tables and back, typed as
//! py-amqp types them: integers that fit in 32 bits as long (`I`), larger
//! ones as long-long (`l`), floats as double (`d`), strings as long strings
//! (`S`), booleans (`t`), `null` as void (`V`), objects as tables (`F`) and
//! arrays as arrays (`A`).

use kombu_core::{Error, ErrorKind, Result};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

/// A field-table key or other short string (at most 255 bytes).
pub(crate) fn short_string(what: &str, text: &str) -> Result<ShortString> {
    ShortString::try_new(text).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOption,
            format!(
                "{what} is {} bytes long; AMQP allows at most 255",
                text.len()
            ),
        )
    })
}

/// A JSON object as an AMQP field table.
pub(crate) fn to_field_table(map: &Map<String, Value>) -> Result<FieldTable> {
    let mut table = FieldTable::default();
    for (key, value) in map {
        table.insert(
            short_string("a field-table key", key)?,
            to_amqp_value(value)?,
        );
    }
    Ok(table)
}

/// One JSON value as an AMQP value.
pub(crate) fn to_amqp_value(value: &Value) -> Result<AMQPValue> {
    Ok(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => number_to_amqp(n),
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items
                .iter()
                .map(to_amqp_value)
                .collect::<Result<Vec<_>>>()?,
        )),
        Value::Object(map) => AMQPValue::FieldTable(to_field_table(map)?),
    })
}

fn number_to_amqp(n: &Number) -> AMQPValue {
    if let Some(i) = n.as_i64() {
        match i32::try_from(i) {
            Ok(small) => AMQPValue::LongInt(small),
            Err(_) => AMQPValue::LongLongInt(i),
        }
    } else if let Some(u) = n.as_u64() {
        // Above i64::MAX: AMQP has no unsigned 64-bit field type; a double
        // keeps the magnitude (py-amqp refuses such integers).
        AMQPValue::Double(u as f64)
    } else {
        AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// An AMQP field table as a JSON object.
pub(crate) fn from_field_table(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(key, value)| (key.as_str().to_owned(), from_amqp_value(value)))
        .collect()
}

/// One AMQP value as JSON. Byte strings that are not UTF-8 are decoded
/// lossily; decimals become numbers; timestamps become seconds.
pub(crate) fn from_amqp_value(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => bytes_to_json(s.as_bytes()),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(from_amqp_value).collect())
        }
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(table) => Value::Object(from_field_table(table)),
        AMQPValue::ByteArray(bytes) => bytes_to_json(bytes.as_slice()),
        AMQPValue::Void => Value::Null,
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn bytes_to_json(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_follow_py_amqp() {
        let map = json!({
            "small": 10, "neg": -5, "big": 5_000_000_000i64, "f": 1.5,
            "s": "text", "b": true, "n": null,
            "nested": {"a": [1, "x", {"k": false}]}
        });
        let table = to_field_table(map.as_object().unwrap()).unwrap();
        let inner = table.inner();
        assert_eq!(inner["small"], AMQPValue::LongInt(10));
        assert_eq!(inner["neg"], AMQPValue::LongInt(-5));
        assert_eq!(inner["big"], AMQPValue::LongLongInt(5_000_000_000));
        assert_eq!(inner["f"], AMQPValue::Double(1.5));
        assert_eq!(inner["s"], AMQPValue::LongString("text".into()));
        assert_eq!(inner["b"], AMQPValue::Boolean(true));
        assert_eq!(inner["n"], AMQPValue::Void);
        assert!(matches!(inner["nested"], AMQPValue::FieldTable(_)));
        assert_eq!(Value::Object(from_field_table(&table)), map);
    }

    #[test]
    fn long_keys_are_refused() {
        let mut map = Map::new();
        map.insert("k".repeat(300), json!(1));
        let err = to_field_table(&map).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidOption);
    }

    #[test]
    fn broker_types_read_back() {
        use lapin::types::DecimalValue;
        assert_eq!(from_amqp_value(&AMQPValue::Timestamp(17)), json!(17));
        assert_eq!(
            from_amqp_value(&AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 110
            })),
            json!(1.1)
        );
        assert_eq!(from_amqp_value(&AMQPValue::ShortShortUInt(3)), json!(3));
    }
}
