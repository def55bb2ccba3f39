//! [`TransportOptions`]: the free-form options of one transport.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::value::{as_bool, as_duration, as_f64, as_u64, invalid_value, BOOL, SECONDS};
use crate::error::{Error, Result};
use crate::url::is_sensitive_key;

/// Options for one transport, by name (kombu's `transport_options`): an
/// ordered map of JSON values. Keys a transport does not know are refused by
/// [`check_known`](Self::check_known); values of keys that look secret
/// (`password`, `secret`, `token`, `key`) are shown as `**` by `Debug`.
///
/// ```
/// use kombu_core::TransportOptions;
/// use std::time::Duration;
///
/// let options = TransportOptions::new()
///     .set("visibility_timeout", 3600)
///     .set("polling_interval", "0.5")
///     .set("supports_fanout", "no");
/// assert_eq!(options.get_u64("visibility_timeout")?, Some(3600));
/// assert_eq!(options.get_duration_secs("polling_interval")?, Some(Duration::from_millis(500)));
/// assert_eq!(options.get_bool("supports_fanout")?, Some(false));
/// assert_eq!(options.get_bool("missing")?, None);
/// # Ok::<(), kombu_core::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TransportOptions(Map<String, Value>);

impl TransportOptions {
    /// No options.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// assert!(TransportOptions::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder style: with `key` set to `value`.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("region", "eu-west-1").set("max_retries", 3);
    /// assert_eq!(options.len(), 2);
    /// ```
    pub fn set(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Set `key` to `value`, returning the value it replaces.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let mut options = TransportOptions::new();
    /// assert_eq!(options.insert("max_retries", 3), None);
    /// assert_eq!(options.insert("max_retries", 5), Some(3.into()));
    /// ```
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        self.0.insert(key.into(), value.into())
    }

    /// Remove `key`, returning its value.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let mut options = TransportOptions::new().set("a", 1);
    /// assert_eq!(options.remove("a"), Some(1.into()));
    /// assert!(options.is_empty());
    /// ```
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.0.shift_remove(key)
    }

    /// The raw value of `key`.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("a", true);
    /// assert_eq!(options.get("a"), Some(&true.into()));
    /// ```
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(value) => convert(value)
                .map(Some)
                .ok_or_else(|| invalid_value(key, value, expected)),
        }
    }

    /// `key` as a string; another JSON type is an error.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("region", "eu-west-1").set("n", 1);
    /// assert_eq!(options.get_str("region")?, Some("eu-west-1"));
    /// assert!(options.get_str("n").is_err());
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", Value::as_str)
    }

    /// `key` as a non-negative integer, from a JSON number or a string.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("a", 7).set("b", "8").set("c", "-1");
    /// assert_eq!(options.get_u64("a")?, Some(7));
    /// assert_eq!(options.get_u64("b")?, Some(8));
    /// assert_eq!(
    ///     options.get_u64("c").unwrap_err().to_string(),
    ///     r#"invalid option: c: "-1" is not a non-negative integer"#
    /// );
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", as_u64)
    }

    /// `key` as a finite number, from a JSON number or a string.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("a", 0.25).set("b", "1e3");
    /// assert_eq!(options.get_f64("a")?, Some(0.25));
    /// assert_eq!(options.get_f64("b")?, Some(1000.0));
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", as_f64)
    }

    /// `key` as a boolean: a JSON bool, `0`/`1`, or one of the strings
    /// `1`/`true`/`yes`/`on` and `0`/`false`/`no`/`off` (any case).
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("a", "Yes").set("b", false).set("c", "maybe");
    /// assert_eq!(options.get_bool("a")?, Some(true));
    /// assert_eq!(options.get_bool("b")?, Some(false));
    /// assert!(options.get_bool("c").is_err());
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, BOOL, as_bool)
    }

    /// `key` as a duration given in seconds (a number or a string, may be
    /// fractional, not negative).
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// # use std::time::Duration;
    /// let options = TransportOptions::new().set("a", 1.5).set("b", "abc");
    /// assert_eq!(options.get_duration_secs("a")?, Some(Duration::from_millis(1500)));
    /// assert_eq!(
    ///     options.get_duration_secs("b").unwrap_err().to_string(),
    ///     r#"invalid option: b: "abc" is not a number of seconds"#
    /// );
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn get_duration_secs(&self, key: &str) -> Result<Option<Duration>> {
        self.typed(key, SECONDS, as_duration)
    }

    /// The keys, in order.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("b", 1).set("a", 2);
    /// assert_eq!(options.keys().collect::<Vec<_>>(), ["b", "a"]);
    /// ```
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The options, in order.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("a", 1);
    /// assert_eq!(options.iter().next(), Some(("a", &1.into())));
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// How many options there are.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// assert_eq!(TransportOptions::new().set("a", 1).len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is no option.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// assert!(TransportOptions::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Refuse keys that `transport` does not know, naming every unknown key
    /// and listing the known ones.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("visibility_timeout", 60).set("polling", 1);
    /// assert!(options.check_known(&["visibility_timeout", "polling", "region"], "sqs").is_ok());
    /// let err = options.check_known(&["visibility_timeout", "region"], "sqs").unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"invalid option: unknown transport option for sqs: "polling" (known: "visibility_timeout", "region")"#
    /// );
    /// ```
    pub fn check_known(&self, known: &[&str], transport: &str) -> Result<()> {
        let unknown: Vec<&str> = self.keys().filter(|key| !known.contains(key)).collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let quoted = |keys: &[&str]| {
            let keys: Vec<String> = keys.iter().map(|key| format!("{key:?}")).collect();
            keys.join(", ")
        };
        let known = match known {
            [] => "none".to_string(),
            known => quoted(known),
        };
        Err(Error::invalid_option(format!(
            "unknown transport option{} for {transport}: {} (known: {known})",
            if unknown.len() == 1 { "" } else { "s" },
            quoted(&unknown),
        )))
    }

    /// Copy every option of `other` into `self`; `other` wins.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let mut options = TransportOptions::new().set("a", 1).set("b", 2);
    /// options.merge_from(&TransportOptions::new().set("b", 3).set("c", 4));
    /// assert_eq!(options, TransportOptions::new().set("a", 1).set("b", 3).set("c", 4));
    /// ```
    pub fn merge_from(&mut self, other: &TransportOptions) {
        for (key, value) in &other.0 {
            self.0.insert(key.clone(), value.clone());
        }
    }
}

/// The options, with the values of secret-looking keys shown as `"**"`.
impl fmt::Debug for TransportOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let masked = Value::from("**");
        f.debug_map()
            .entries(self.0.iter().map(|(key, value)| {
                let value = if is_sensitive_key(key) {
                    &masked
                } else {
                    value
                };
                (key, value)
            }))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::json;

    fn error_of(result: Result<impl fmt::Debug>) -> String {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidOption);
        err.message().to_string()
    }

    #[test]
    fn typed_getters_accept_json_and_strings() {
        let options = TransportOptions::new()
            .set("n", 5)
            .set("ns", " 6 ")
            .set("f", 0.5)
            .set("fs", "2.25")
            .set("b", true)
            .set("bs", "OFF")
            .set("b1", 1)
            .set("s", "text");
        assert_eq!(options.get_u64("n").unwrap(), Some(5));
        assert_eq!(options.get_u64("ns").unwrap(), Some(6));
        assert_eq!(options.get_f64("f").unwrap(), Some(0.5));
        assert_eq!(options.get_f64("n").unwrap(), Some(5.0));
        assert_eq!(options.get_f64("fs").unwrap(), Some(2.25));
        assert_eq!(options.get_bool("b").unwrap(), Some(true));
        assert_eq!(options.get_bool("bs").unwrap(), Some(false));
        assert_eq!(options.get_bool("b1").unwrap(), Some(true));
        assert_eq!(options.get_str("s").unwrap(), Some("text"));
        assert_eq!(
            options.get_duration_secs("fs").unwrap(),
            Some(Duration::from_millis(2250))
        );
        assert_eq!(options.get_u64("absent").unwrap(), None);
    }

    #[test]
    fn typed_getters_name_the_key_and_value() {
        let options = TransportOptions::new()
            .set("f", 1.5)
            .set("neg", -1)
            .set("inf", "inf")
            .set("b", "maybe")
            .set("n", 3)
            .set("api_token", "abc");
        assert_eq!(
            error_of(options.get_u64("f")),
            "f: 1.5 is not a non-negative integer"
        );
        assert_eq!(
            error_of(options.get_duration_secs("neg")),
            "neg: -1 is not a number of seconds"
        );
        assert_eq!(
            error_of(options.get_f64("inf")),
            r#"inf: "inf" is not a number"#
        );
        assert!(error_of(options.get_bool("b")).starts_with(r#"b: "maybe" is not a boolean"#));
        assert_eq!(error_of(options.get_str("n")), "n: 3 is not a string");
        assert_eq!(
            error_of(options.get_u64("api_token")),
            r#"api_token: "**" is not a non-negative integer"#
        );
    }

    #[test]
    fn check_known_lists_unknown_and_known_keys() {
        let options = TransportOptions::new().set("a", 1).set("x", 2).set("y", 3);
        assert!(options.check_known(&["a", "x", "y", "z"], "redis").is_ok());
        assert_eq!(
            error_of(options.check_known(&["a"], "redis")),
            r#"unknown transport options for redis: "x", "y" (known: "a")"#
        );
        assert_eq!(
            error_of(options.check_known(&[], "memory")),
            r#"unknown transport options for memory: "a", "x", "y" (known: none)"#
        );
    }

    #[test]
    fn merge_serde_and_order() {
        let mut options = TransportOptions::new().set("b", 1).set("a", json!([1, 2]));
        options.merge_from(
            &TransportOptions::new()
                .set("a", "new")
                .set("c", json!({"k": 1})),
        );
        assert_eq!(options.keys().collect::<Vec<_>>(), ["b", "a", "c"]);
        assert_eq!(options.get("a"), Some(&json!("new")));
        let text = serde_json::to_string(&options).unwrap();
        assert_eq!(text, r#"{"b":1,"a":"new","c":{"k":1}}"#);
        let back: TransportOptions = serde_json::from_str(&text).unwrap();
        assert_eq!(back, options);
        assert_eq!(options.remove("b"), Some(json!(1)));
        assert_eq!(options.len(), 2);
    }
}
