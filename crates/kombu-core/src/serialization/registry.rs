//! [`SerializerRegistry`]: the serializers of a connection, and kombu's
//! `dumps`/`loads` on top of them.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::{
    pickle_unsupported, serialization_error, tagged_bytes, Accept, JsonSerializer,
    MsgpackSerializer, Payload, Serializer, YamlSerializer, CONTENT_TYPE_DATA, CONTENT_TYPE_PICKLE,
    CONTENT_TYPE_TEXT,
};
use crate::error::{Error, ErrorKind, Result};

/// Content encodings that mean "bytes, do not decode to text".
const SKIP_DECODE: [&str; 2] = ["binary", "ascii-8bit"];

/// The serializers known to a connection, found by name or content type.
///
/// ```
/// use kombu_core::serialization::{Accept, Payload, SerializerRegistry};
/// let reg = SerializerRegistry::default();
/// let (body, ct, ce) = reg.encode("json", &serde_json::json!([1])).unwrap();
/// assert_eq!((body.as_slice(), ct.as_str(), ce.as_str()), (&b"[1]"[..], "application/json", "utf-8"));
/// let p = reg.decode(Some(&ct), Some(&ce), &body, &Accept::default()).unwrap();
/// assert_eq!(p, Payload::Value(serde_json::json!([1])));
/// ```
#[derive(Clone)]
pub struct SerializerRegistry {
    serializers: Vec<Arc<dyn Serializer>>,
}

impl Default for SerializerRegistry {
    /// json, msgpack and yaml.
    fn default() -> Self {
        SerializerRegistry {
            serializers: vec![
                Arc::new(JsonSerializer),
                Arc::new(MsgpackSerializer),
                Arc::new(YamlSerializer),
            ],
        }
    }
}

impl fmt::Debug for SerializerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.serializers.iter().map(|s| s.name()))
            .finish()
    }
}

impl SerializerRegistry {
    /// A registry with no serializers (raw bytes and text still work).
    pub fn empty() -> Self {
        SerializerRegistry {
            serializers: Vec::new(),
        }
    }

    /// Add a serializer, replacing one with the same name.
    pub fn register(&mut self, serializer: Arc<dyn Serializer>) {
        self.serializers.retain(|s| s.name() != serializer.name());
        self.serializers.push(serializer);
    }

    /// The serializer called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<dyn Serializer>> {
        self.serializers.iter().rev().find(|s| s.name() == name)
    }

    /// The serializer for `content_type`.
    pub fn by_content_type(&self, content_type: &str) -> Option<&Arc<dyn Serializer>> {
        self.serializers
            .iter()
            .rev()
            .find(|s| s.content_type() == content_type)
    }

    /// Serialize `value` with the serializer called `name`: the body, its
    /// content type and its content encoding.
    pub fn encode(&self, name: &str, value: &Value) -> Result<(Vec<u8>, String, String)> {
        let serializer = self.by_name(name).ok_or_else(|| {
            if name == "pickle" {
                pickle_unsupported()
            } else {
                serialization_error(format!("no encoder installed for {name}"))
            }
        })?;
        let body = serializer.encode(value)?;
        Ok((
            body,
            serializer.content_type().into(),
            serializer.content_encoding().into(),
        ))
    }

    /// Serialize a payload as kombu's `dumps(data, serializer)` does.
    ///
    /// * `Some("raw")`: bytes as `application/data` + `binary`, text (or a JSON
    ///   string value) as `application/data` + `utf-8`.
    /// * `None` (or `Some("text")` for text): [`Payload::Bytes`] as
    ///   `application/data` + `binary`, [`Payload::Text`] as `text/plain` +
    ///   `utf-8`, [`Payload::Value`] with json.
    /// * `Some(name)`: that serializer, for any payload (bytes become a bytes
    ///   tag, text a string).
    ///
    /// ```
    /// use kombu_core::serialization::{Payload, SerializerRegistry};
    /// let reg = SerializerRegistry::default();
    /// let (body, ct, ce) = reg.encode_payload(&Payload::from("hé"), None).unwrap();
    /// assert_eq!((body, ct.as_str(), ce.as_str()), ("hé".as_bytes().to_vec(), "text/plain", "utf-8"));
    /// let (_, ct, ce) = reg.encode_payload(&Payload::from(vec![0u8]), None).unwrap();
    /// assert_eq!((ct.as_str(), ce.as_str()), ("application/data", "binary"));
    /// let (body, ct, _) = reg.encode_payload(&Payload::from("hi"), Some("json")).unwrap();
    /// assert_eq!((body, ct.as_str()), (b"\"hi\"".to_vec(), "application/json"));
    /// ```
    pub fn encode_payload(
        &self,
        payload: &Payload,
        serializer: Option<&str>,
    ) -> Result<(Vec<u8>, String, String)> {
        let raw = |body: &[u8], encoding: &str| {
            Ok((body.to_vec(), CONTENT_TYPE_DATA.into(), encoding.into()))
        };
        match (serializer, payload) {
            (Some("raw"), Payload::Bytes(b)) => raw(b, "binary"),
            (Some("raw"), Payload::Text(s)) => raw(s.as_bytes(), "utf-8"),
            (Some("raw"), Payload::Value(Value::String(s))) => raw(s.as_bytes(), "utf-8"),
            (Some("raw"), Payload::Value(_)) => Err(serialization_error(
                "the raw serializer needs bytes or text, not structured data",
            )),
            (None, Payload::Bytes(b)) => raw(b, "binary"),
            (None | Some("text"), Payload::Text(s)) => Ok((
                s.as_bytes().to_vec(),
                CONTENT_TYPE_TEXT.into(),
                "utf-8".into(),
            )),
            (name, Payload::Value(v)) => self.encode(name.unwrap_or("json"), v),
            (Some(name), Payload::Text(s)) => self.encode(name, &Value::String(s.clone())),
            (Some(name), Payload::Bytes(b)) => self.encode(name, &tagged_bytes(b)),
        }
    }

    /// Deserialize a body as kombu's `loads` does.
    ///
    /// A missing content type means `application/data`; a missing content
    /// encoding means `utf-8`. The content type must pass `accept`
    /// ([`ErrorKind::ContentDisallowed`] otherwise). Then a serializer for the
    /// content type decodes it into [`Payload::Value`]; without one the body
    /// is [`Payload::Bytes`] when the encoding is `binary` (or `ascii-8bit`)
    /// and [`Payload::Text`] otherwise (`utf-8`, `ascii`, `latin-1`). An empty
    /// body is returned as empty [`Payload::Bytes`], as kombu returns it as is.
    ///
    /// ```
    /// use kombu_core::{ErrorKind, serialization::{Accept, Payload, SerializerRegistry}};
    /// let reg = SerializerRegistry::default();
    /// let p = reg.decode(Some("text/plain"), Some("utf-8"), b"hi", &Accept::all()).unwrap();
    /// assert_eq!(p, Payload::Text("hi".into()));
    /// let err = reg.decode(Some("application/x-yaml"), None, b"a: 1", &Accept::new(["json"])).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::ContentDisallowed);
    /// ```
    pub fn decode(
        &self,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        body: &[u8],
        accept: &Accept,
    ) -> Result<Payload> {
        let content_type = content_type
            .filter(|s| !s.is_empty())
            .unwrap_or(CONTENT_TYPE_DATA);
        if !accept.allows(content_type, self) {
            let shown = match self.by_content_type(content_type) {
                Some(s) => format!("{} ({content_type})", s.name()),
                None => content_type.to_string(),
            };
            return Err(Error::new(
                ErrorKind::ContentDisallowed,
                format!("refusing to deserialize content of type {shown}; accepted: {accept}"),
            ));
        }
        if body.is_empty() {
            return Ok(Payload::Bytes(Bytes::new()));
        }
        if let Some(serializer) = self.by_content_type(content_type) {
            return serializer.decode(body).map(Payload::Value);
        }
        if content_type == CONTENT_TYPE_PICKLE {
            return Err(pickle_unsupported());
        }
        let encoding = content_encoding
            .filter(|s| !s.is_empty())
            .unwrap_or("utf-8")
            .to_ascii_lowercase();
        if SKIP_DECODE.contains(&encoding.as_str()) {
            return Ok(Payload::Bytes(Bytes::copy_from_slice(body)));
        }
        decode_text(body, &encoding).map(Payload::Text)
    }
}

/// Decode text in one of the charsets kombu-rs knows.
fn decode_text(body: &[u8], encoding: &str) -> Result<String> {
    let bad =
        |e: &dyn fmt::Display| serialization_error(format!("cannot decode {encoding} text: {e}"));
    match encoding.replace('_', "-").as_str() {
        "utf-8" | "utf8" | "u8" => String::from_utf8(body.to_vec()).map_err(|e| bad(&e)),
        "ascii" | "us-ascii" => match body.iter().position(|b| !b.is_ascii()) {
            Some(i) => Err(bad(&format!("byte {:#04x} at {i} is not ASCII", body[i]))),
            None => Ok(body.iter().map(|&b| b as char).collect()),
        },
        "latin-1" | "latin1" | "iso-8859-1" | "iso8859-1" => {
            Ok(body.iter().map(|&b| b as char).collect())
        }
        other => Err(serialization_error(format!(
            "unsupported content encoding {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::json;

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    // Golden values below were produced by Python 3.11.7, kombu 5.7.0,
    // msgpack 1.2.4 and PyYAML 6.0.4 (kombu.utils.json.dumps, msgpack.packb
    // with use_bin_type=True, yaml.safe_dump).

    #[test]
    fn encode_payload_follows_kombu_dumps() {
        let reg = SerializerRegistry::default();
        let enc = |p: Payload, s: Option<&str>| reg.encode_payload(&p, s).unwrap();
        let t = |b: &[u8], ct: &str, ce: &str| (b.to_vec(), ct.to_string(), ce.to_string());
        assert_eq!(
            enc(b"\x00\x01\xffraw".to_vec().into(), None),
            t(b"\x00\x01\xffraw", "application/data", "binary")
        );
        assert_eq!(
            enc("h\u{e9}llo".into(), None),
            t("h\u{e9}llo".as_bytes(), "text/plain", "utf-8")
        );
        assert_eq!(
            enc("h".into(), Some("text")),
            t(b"h", "text/plain", "utf-8")
        );
        assert_eq!(
            enc("text".into(), Some("raw")),
            t(b"text", "application/data", "utf-8")
        );
        assert_eq!(
            enc(b"ab".to_vec().into(), Some("raw")),
            t(b"ab", "application/data", "binary")
        );
        assert_eq!(
            enc(json!({"hello": "world", "n": 1}).into(), None),
            t(
                br#"{"hello": "world", "n": 1}"#,
                "application/json",
                "utf-8"
            )
        );
        assert_eq!(
            enc(b"ab".to_vec().into(), Some("json")),
            t(
                br#"{"__type__": "bytes", "__value__": "ab"}"#,
                "application/json",
                "utf-8"
            )
        );
        // Python: dumps({"k": [1, "x", 1.5, b"\x00\xff"]}, serializer="msgpack")
        let v = json!({"k": [1, "x", 1.5, tagged_bytes(b"\x00\xff")]});
        assert_eq!(
            enc(v.into(), Some("msgpack")),
            t(
                &b64("gaFrlAGheMs/+AAAAAAAAMQCAP8="),
                "application/x-msgpack",
                "binary"
            )
        );
        let err = reg
            .encode_payload(&json!(1).into(), Some("pickle"))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Serialization);
        assert!(err.to_string().contains("pickle"), "{err}");
        assert!(reg.encode_payload(&json!(1).into(), Some("nope")).is_err());
        assert!(reg.encode_payload(&json!([1]).into(), Some("raw")).is_err());
    }

    #[test]
    fn decode_follows_kombu_loads() {
        let reg = SerializerRegistry::default();
        let dflt = Accept::kombu_unrestricted();
        let dec = |ct: Option<&str>, ce: Option<&str>, body: &[u8], accept: &Accept| {
            reg.decode(ct, ce, body, accept)
        };
        assert_eq!(
            dec(Some("application/data"), Some("binary"), b"\x00\xff", &dflt).unwrap(),
            Payload::Bytes(Bytes::from_static(b"\x00\xff"))
        );
        assert_eq!(
            dec(None, Some("binary"), b"x", &Accept::new(["json"])).unwrap(),
            Payload::Bytes(Bytes::from_static(b"x"))
        );
        assert_eq!(
            dec(Some("application/data"), Some("utf-8"), b"text", &dflt).unwrap(),
            Payload::Text("text".into())
        );
        assert_eq!(
            dec(Some("text/plain"), None, "h\u{e9}".as_bytes(), &dflt).unwrap(),
            Payload::Text("h\u{e9}".into())
        );
        assert_eq!(
            dec(Some("text/plain"), Some("latin-1"), b"h\xe9", &dflt).unwrap(),
            Payload::Text("h\u{e9}".into())
        );
        assert!(dec(Some("text/plain"), Some("utf-8"), b"\xff", &dflt).is_err());
        assert!(dec(Some("text/plain"), Some("klingon"), b"x", &dflt).is_err());
        assert_eq!(
            dec(Some("application/json"), Some("utf-8"), b"", &dflt).unwrap(),
            Payload::Bytes(Bytes::new())
        );
        // The accept list: names and content types are the same thing.
        for accept in [
            Accept::new(["msgpack"]),
            Accept::new(["application/x-msgpack"]),
            Accept::all(),
        ] {
            assert_eq!(
                dec(
                    Some("application/x-msgpack"),
                    Some("binary"),
                    b"\x01",
                    &accept
                )
                .unwrap(),
                Payload::Value(json!(1))
            );
        }
        let err = dec(
            Some("application/x-msgpack"),
            Some("binary"),
            b"\x01",
            &dflt,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ContentDisallowed);
        assert!(
            err.message().contains("msgpack (application/x-msgpack)"),
            "{err}"
        );
        let err = dec(Some("text/plain"), None, b"x", &Accept::new(["json"])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ContentDisallowed);
        assert!(
            err.message().contains("text/plain") && err.message().contains("[json]"),
            "{err}"
        );
        let err = dec(
            Some(CONTENT_TYPE_PICKLE),
            Some("binary"),
            b"\x80\x04",
            &Accept::all(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Serialization);
        assert!(err.to_string().contains("pickle"));
        assert_eq!(
            dec(Some(CONTENT_TYPE_PICKLE), None, b"x", &dflt)
                .unwrap_err()
                .kind(),
            ErrorKind::ContentDisallowed
        );
        assert_eq!(
            dec(Some("application/json"), None, b"{", &dflt)
                .unwrap_err()
                .kind(),
            ErrorKind::Serialization
        );
    }

    #[test]
    fn registry_register_and_lookup() {
        struct Upper;
        impl Serializer for Upper {
            fn name(&self) -> &str {
                "upper"
            }
            fn content_type(&self) -> &str {
                "application/x-upper"
            }
            fn content_encoding(&self) -> &str {
                "utf-8"
            }
            fn encode(&self, v: &Value) -> Result<Vec<u8>> {
                Ok(v.to_string().to_uppercase().into_bytes())
            }
            fn decode(&self, b: &[u8]) -> Result<Value> {
                Ok(Value::String(String::from_utf8_lossy(b).into()))
            }
        }
        let mut reg = SerializerRegistry::default();
        reg.register(Arc::new(Upper));
        assert_eq!(
            reg.by_content_type("application/x-upper").unwrap().name(),
            "upper"
        );
        assert_eq!(reg.encode("upper", &json!("a")).unwrap().0, b"\"A\"");
        assert!(Accept::new(["upper"]).allows("application/x-upper", &reg));
        assert!(Accept::kombu_unrestricted().allows("application/x-upper", &reg));
        assert!(SerializerRegistry::empty().by_name("json").is_none());
        assert_eq!(
            format!("{reg:?}"),
            r#"["json", "msgpack", "yaml", "upper"]"#
        );
    }
}
