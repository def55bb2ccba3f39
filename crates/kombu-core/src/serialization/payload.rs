//! [`Payload`]: a message body before serialization or after deserialization.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// A message body before serialization or after deserialization.
///
/// ```
/// use kombu_core::serialization::Payload;
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Job { id: u32 }
/// let p = Payload::serialize(&Job { id: 7 }).unwrap();
/// assert_eq!(p.deserialize::<Job>().unwrap(), Job { id: 7 });
/// assert_eq!(Payload::from("hi"), Payload::Text("hi".into()));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Payload {
    /// Structured data, sent with a serializer (json by default).
    Value(Value),
    /// Raw bytes: `application/data`, `binary`.
    Bytes(Bytes),
    /// Text: `text/plain`, `utf-8`.
    Text(String),
}

impl Payload {
    /// Structured data from anything serde can serialize.
    pub fn serialize<T: Serialize + ?Sized>(value: &T) -> Result<Payload> {
        Ok(Payload::Value(serde_json::to_value(value)?))
    }

    /// Read the payload as `T`.
    ///
    /// A [`Payload::Text`] reads as a JSON string. [`Payload::Bytes`] read as a
    /// string when they are UTF-8 and `T` takes one, otherwise as a sequence
    /// of byte values (`Vec<u8>`).
    ///
    /// ```
    /// use kombu_core::serialization::Payload;
    /// let p = Payload::from(vec![0u8, 255]);
    /// assert_eq!(p.deserialize::<Vec<u8>>().unwrap(), vec![0, 255]);
    /// assert!(p.deserialize::<String>().is_err());
    /// ```
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T> {
        match self {
            Payload::Value(v) => Ok(T::deserialize(v)?),
            Payload::Text(s) => Ok(T::deserialize(Value::String(s.clone()))?),
            Payload::Bytes(b) => {
                let as_array = || {
                    let items = b.iter().map(|x| Value::from(*x)).collect();
                    T::deserialize(Value::Array(items))
                };
                match std::str::from_utf8(b) {
                    Ok(s) => T::deserialize(Value::String(s.into())).or_else(|_| as_array()),
                    Err(_) => as_array(),
                }
                .map_err(Error::from)
            }
        }
    }
}

impl From<Value> for Payload {
    fn from(v: Value) -> Self {
        Payload::Value(v)
    }
}
impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload::Bytes(v.into())
    }
}
impl From<&[u8]> for Payload {
    fn from(v: &[u8]) -> Self {
        Payload::Bytes(Bytes::copy_from_slice(v))
    }
}
impl From<Bytes> for Payload {
    fn from(v: Bytes) -> Self {
        Payload::Bytes(v)
    }
}
impl From<String> for Payload {
    fn from(v: String) -> Self {
        Payload::Text(v)
    }
}
impl From<&str> for Payload {
    fn from(v: &str) -> Self {
        Payload::Text(v.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_conversions() {
        assert_eq!(Payload::from(json!(1)), Payload::Value(json!(1)));
        assert_eq!(Payload::from(String::from("a")), Payload::Text("a".into()));
        assert_eq!(
            Payload::from(Bytes::from_static(b"a")),
            Payload::Bytes(Bytes::from_static(b"a"))
        );
        assert_eq!(
            Payload::from(&b"a"[..]),
            Payload::Bytes(Bytes::from_static(b"a"))
        );
        assert_eq!(Payload::from("abc").deserialize::<String>().unwrap(), "abc");
        assert_eq!(
            Payload::from(b"abc".to_vec())
                .deserialize::<String>()
                .unwrap(),
            "abc"
        );
        assert_eq!(
            Payload::from(b"abc".to_vec())
                .deserialize::<Vec<u8>>()
                .unwrap(),
            b"abc"
        );
        assert!(Payload::from("abc").deserialize::<u32>().is_err());
    }
}
