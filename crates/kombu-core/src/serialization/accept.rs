//! [`Accept`]: which content types a consumer deserializes.

use std::fmt;

use super::{SerializerRegistry, CONTENT_TYPE_DATA, CONTENT_TYPE_PICKLE};

/// Content types kombu decodes whatever the accept list says
/// (`kombu.serialization.TRUSTED_CONTENT`).
const TRUSTED_CONTENT: [&str; 2] = [CONTENT_TYPE_DATA, "application/text"];

/// Which content types a consumer deserializes, like kombu's `accept`.
///
/// Entries are serializer names or content types: `["json"]` and
/// `["application/json"]` are the same list. The rules are kombu 5.7's
/// (`kombu.serialization.loads`):
///
/// * [`Accept::default()`] is `["json"]`, the accept list Celery and most
///   kombu deployments use: json, plus `application/data` and
///   `application/text`, which kombu always trusts.
/// * [`Accept::new`] is an explicit list: only the listed types pass, plus
///   `application/data` and `application/text`. Note that `text/plain` is
///   **not** trusted: list it to receive text bodies.
/// * [`Accept::kombu_unrestricted()`] is kombu's `accept=None`: everything
///   except the serializers kombu disables by default (pickle, yaml,
///   msgpack); unknown content types come back raw.
/// * [`Accept::all()`] passes everything.
///
/// A message without a content type counts as `application/data`.
///
/// ```
/// use kombu_core::serialization::{Accept, SerializerRegistry};
/// let reg = SerializerRegistry::default();
/// assert!(Accept::default().allows("application/json", &reg));
/// assert!(!Accept::default().allows("application/x-yaml", &reg));
/// assert!(Accept::kombu_unrestricted().allows("text/plain", &reg));
/// let json = Accept::new(["json"]);
/// assert!(json.allows("application/json", &reg));
/// assert!(json.allows("application/data", &reg));
/// assert!(!json.allows("text/plain", &reg));
/// assert!(Accept::all().allows("application/x-msgpack", &reg));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    rule: AcceptRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AcceptRule {
    All,
    Only(Vec<String>),
    AllExcept(Vec<String>),
}

impl Default for Accept {
    fn default() -> Self {
        Accept::new(["json"])
    }
}

impl Accept {
    /// An explicit accept list of serializer names and/or content types.
    pub fn new<I, S>(items: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Accept {
            rule: AcceptRule::Only(items.into_iter().map(Into::into).collect()),
        }
    }

    /// kombu's `accept=None`: all but pickle, yaml and msgpack.
    pub fn kombu_unrestricted() -> Self {
        let disabled = [
            CONTENT_TYPE_PICKLE,
            "application/x-yaml",
            "application/x-msgpack",
        ];
        Accept {
            rule: AcceptRule::AllExcept(disabled.iter().map(|s| s.to_string()).collect()),
        }
    }

    /// Accept every content type.
    pub fn all() -> Self {
        Accept {
            rule: AcceptRule::All,
        }
    }

    /// Whether a body of `content_type` may be deserialized. Names in the
    /// list are resolved through `registry`; an unknown name matches nothing.
    pub fn allows(&self, content_type: &str, registry: &SerializerRegistry) -> bool {
        let listed = |items: &[String]| {
            items.iter().any(|item| {
                item == content_type
                    || (!item.contains('/')
                        && registry
                            .by_name(item)
                            .is_some_and(|s| s.content_type() == content_type))
            })
        };
        match &self.rule {
            AcceptRule::All => true,
            AcceptRule::Only(items) => TRUSTED_CONTENT.contains(&content_type) || listed(items),
            AcceptRule::AllExcept(items) => !listed(items),
        }
    }
}

impl fmt::Display for Accept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            AcceptRule::All => f.write_str("all content types"),
            AcceptRule::Only(items) => write!(f, "[{}]", items.join(", ")),
            AcceptRule::AllExcept(items) => {
                write!(f, "the default (all but {})", items.join(", "))
            }
        }
    }
}
