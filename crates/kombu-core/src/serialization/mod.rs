//! Message body serializers, as in Python kombu's `kombu.serialization`.
//!
//! A body travels as bytes plus a content type and a content encoding. The
//! built-in [`Serializer`]s use kombu's names and content types:
//!
//! | name      | content type            | content encoding |
//! |-----------|-------------------------|------------------|
//! | `json`    | `application/json`      | `utf-8`          |
//! | `msgpack` | `application/x-msgpack` | `binary`         |
//! | `yaml`    | `application/x-yaml`    | `utf-8`          |
//!
//! Two content types never need a serializer: raw bytes are sent as
//! `application/data` + `binary`, text as `text/plain` + `utf-8` (see
//! [`SerializerRegistry::encode_payload`]). `pickle`
//! (`application/x-python-serialize`) is not supported: encoding or decoding
//! it is an [`ErrorKind::Serialization`] error that says so.
//!
//! # kombu's JSON type tags
//!
//! kombu's JSON encoder writes some Python types as tagged objects, and its
//! decoder turns them back into Python objects. Here they stay plain objects
//! `{"__type__": T, "__value__": V}` in the decoded [`Value`]:
//!
//! | `__type__`  | `__value__`                                   | build it with        |
//! |-------------|-----------------------------------------------|----------------------|
//! | `datetime`  | ISO 8601, `"2024-01-02T03:04:05.678901+00:00"` | [`tagged_datetime`] |
//! | `date`      | `"2024-01-02"`                                | [`tag`]              |
//! | `time`      | `"03:04:05"`                                  | [`tag`]              |
//! | `decimal`   | `"1.10"`                                      | [`tag`]              |
//! | `uuid`      | `{"hex": "12345678123456781234567812345678"}` | [`tag`]              |
//! | `bytes`     | the bytes as a UTF-8 string                   | [`tagged_bytes`]     |
//! | `base64`    | the bytes in base64 (bytes that are not UTF-8) | [`tagged_bytes`]    |
//!
//! [`untag_bytes`] reads the two bytes tags back. msgpack carries bytes natively
//! (`bin`): a decoded `bin` becomes a bytes tag and a bytes tag is encoded as
//! `bin`, so the same [`Value`] works with both serializers.

mod accept;
mod json;
mod msgpack;
mod payload;
mod registry;
mod yaml;

pub use accept::Accept;
pub use json::{tag, tagged_bytes, tagged_datetime, to_kombu_json, untag_bytes, JsonSerializer};
pub(crate) use json::{to_kombu_json_of, write_kombu_json};
pub use msgpack::MsgpackSerializer;
pub use payload::Payload;
pub use registry::SerializerRegistry;
pub use yaml::YamlSerializer;

use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

/// kombu's content type for raw bytes.
pub const CONTENT_TYPE_DATA: &str = "application/data";
/// The content type of a text body published without a serializer.
pub const CONTENT_TYPE_TEXT: &str = "text/plain";
/// The content type of Python pickle, which kombu-rs refuses to handle.
pub const CONTENT_TYPE_PICKLE: &str = "application/x-python-serialize";

fn serialization_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Serialization, message)
}

fn pickle_unsupported() -> Error {
    serialization_error(
        "pickle (application/x-python-serialize) is not supported by kombu-rs; \
         use json, msgpack or yaml",
    )
}

/// Turns values into body bytes and back.
///
/// Implement it to add a serializer, then [`SerializerRegistry::register`] it.
///
/// ```
/// use kombu_core::serialization::{JsonSerializer, Serializer};
/// let json = JsonSerializer;
/// let body = json.encode(&serde_json::json!({"n": 1.0})).unwrap();
/// assert_eq!(body, br#"{"n": 1.0}"#);
/// assert_eq!(json.decode(&body).unwrap(), serde_json::json!({"n": 1.0}));
/// ```
pub trait Serializer: Send + Sync {
    /// The name used to pick it (`serializer="json"` in kombu).
    fn name(&self) -> &str;
    /// The MIME type written in the message's `content-type`.
    fn content_type(&self) -> &str;
    /// The `content-encoding`: a charset such as `utf-8`, or `binary`.
    fn content_encoding(&self) -> &str;
    /// Serialize a value into body bytes.
    fn encode(&self, value: &Value) -> Result<Vec<u8>>;
    /// Deserialize body bytes.
    fn decode(&self, body: &[u8]) -> Result<Value>;
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn msgpack_and_yaml_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = MsgpackSerializer.decode(&bytes);
            let _ = YamlSerializer.decode(&bytes);
            let _ = JsonSerializer.decode(&bytes);
        }
    }
}
