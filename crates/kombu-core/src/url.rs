//! Broker URLs: `transport://userid:password@hostname:port/virtual_host?key=value`.
//!
//! The semantics are those of Python kombu's `kombu.utils.url.url_to_parts`:
//! every part is optional (`amqp://` is a valid URL), the virtual host is the
//! path after its first `/` (`amqp://localhost//foo` is the virtual host
//! `/foo`), and user, password, hostname, path and query are percent-decoded.
//!
//! The URL is split into its parts by hand, the way Python's `urlsplit` does,
//! because the WHATWG parser of the `url` crate refuses what kombu accepts
//! (`sqs://KEY:SECRET@`: credentials without a host; `amqp://:5672/`) and
//! rewrites paths (`/./a/../b`). The `url` crate still checks the hostname
//! (IPv6 literals, forbidden characters) and encodes the query.
//!
//! A password never appears in a [`BrokerUrl`]'s `Display` or `Debug`, nor in a
//! parse error, even for an input that failed to parse.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use url::{form_urlencoded, Host};

use crate::error::{Error, ErrorKind, Result};

/// What a password (or a sensitive query value) becomes in `Display` and
/// `Debug`, as in kombu's `maybe_sanitize_url`.
const MASK: &str = "**";
/// What a password becomes when a rejected input is echoed in an error.
const ERROR_MASK: &str = "****";

/// True for option and query keys whose values must not be shown: those that
/// contain `password`, `secret`, `token` or `key`, in any case.
pub(crate) fn is_sensitive_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "key"]
        .iter()
        .any(|word| key.contains(word))
}

/// What fills the parts a URL leaves out ([`BrokerUrl::completed`]): the
/// keyword options first, then the transport's defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct UrlDefaults<'a> {
    /// Host when the URL names none.
    pub hostname: Option<&'a str>,
    /// Port when the URL gives none.
    pub port: Option<u16>,
    /// User when the URL gives none.
    pub userid: Option<&'a str>,
    /// Password when the URL gives none.
    pub password: Option<&'a str>,
    /// Virtual host when the URL gives none.
    pub virtual_host: Option<&'a str>,
}

/// A parsed broker URL, in kombu's format
/// `transport://userid:password@hostname:port/virtual_host?key=value`.
///
/// ```
/// use kombu_core::BrokerUrl;
///
/// let url = BrokerUrl::parse("amqp://guest:s3cret@localhost:5672//?ssl=1")?;
/// assert_eq!(url.scheme(), "amqp");
/// assert_eq!(url.userid(), Some("guest"));
/// assert_eq!(url.password(), Some("s3cret"));
/// assert_eq!(url.hostname(), Some("localhost"));
/// assert_eq!(url.port(), Some(5672));
/// assert_eq!(url.virtual_host(), Some("/"));
/// assert_eq!(url.query_value("ssl"), Some("1"));
/// // The password is masked whenever the URL is shown.
/// assert_eq!(url.to_string(), "amqp://guest:**@localhost:5672//?ssl=1");
/// # Ok::<(), kombu_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BrokerUrl {
    scheme: String,
    userid: Option<String>,
    password: Option<String>,
    hostname: Option<String>,
    port: Option<u16>,
    /// Decoded path, empty or starting with `/`.
    path: String,
    /// Decoded query pairs, keys unique, in order of first appearance.
    query: Vec<(String, String)>,
}

/// Why a URL was refused: the wrong part, never with a password in it.
struct Refusal {
    message: String,
    source: Option<url::ParseError>,
}

impl Refusal {
    fn new(message: impl Into<String>) -> Self {
        Refusal {
            message: message.into(),
            source: None,
        }
    }

    /// The error for `input`, echoed with its password masked.
    fn into_error(self, input: &str, context: &str) -> Error {
        let error = Error::new(
            ErrorKind::InvalidUrl,
            format!("{:?}: {context}{}", mask_input(input), self.message),
        );
        match self.source {
            Some(source) => error.with_source(source),
            None => error,
        }
    }
}

impl BrokerUrl {
    /// Parse one broker URL.
    ///
    /// The error names the wrong part and echoes the input with its password
    /// masked.
    ///
    /// ```
    /// use kombu_core::{BrokerUrl, ErrorKind};
    ///
    /// let url = BrokerUrl::parse("amqp://localhost/foo")?;
    /// assert_eq!(url.virtual_host(), Some("foo"));
    ///
    /// let err = BrokerUrl::parse("amqp://guest:guest@host:99999/").unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::InvalidUrl);
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"invalid URL: "amqp://guest:****@host:99999/": port: number too large (0-65535)"#
    /// );
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn parse(input: &str) -> Result<BrokerUrl> {
        parse_parts(input.trim()).map_err(|refusal| refusal.into_error(input, ""))
    }

    /// Parse a failover list: URLs separated by `;`, in order. Items are
    /// trimmed and empty items ignored; a list without any URL is an error.
    ///
    /// ```
    /// use kombu_core::BrokerUrl;
    ///
    /// let urls = BrokerUrl::parse_list("amqp://a:5672//; amqp://b:5672//;")?;
    /// let hosts: Vec<_> = urls.iter().map(|u| u.hostname().unwrap()).collect();
    /// assert_eq!(hosts, ["a", "b"]);
    /// assert!(BrokerUrl::parse_list(" ; ").is_err());
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn parse_list(input: &str) -> Result<Vec<BrokerUrl>> {
        let items: Vec<&str> = input
            .split(';')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .collect();
        if items.is_empty() {
            return Err(
                Refusal::new("no broker URL given (expected transport://...)")
                    .into_error(input, ""),
            );
        }
        // An unencoded `;` in a password splits it over two items: echo the
        // whole list, masked as one, so that no piece of it shows.
        let context = |n: usize| format!("URL {} of {}: ", n + 1, items.len());
        items
            .iter()
            .enumerate()
            .map(|(n, item)| parse_parts(item).map_err(|r| r.into_error(input, &context(n))))
            .collect()
    }

    /// The transport scheme, lowercased (`amqp`, `redis+socket`, `mongodb+srv`).
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// assert_eq!(BrokerUrl::parse("Redis+Socket:///tmp/redis.sock")?.scheme(), "redis+socket");
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The user name, percent-decoded; `None` when absent or empty.
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// assert_eq!(BrokerUrl::parse("amqp://us%40er:pw@host")?.userid(), Some("us@er"));
    /// assert_eq!(BrokerUrl::parse("redis://:pw@host")?.userid(), None);
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn userid(&self) -> Option<&str> {
        self.userid.as_deref()
    }

    /// The real password, percent-decoded, for transports to log in with;
    /// `None` when absent or empty. Never print it.
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// assert_eq!(BrokerUrl::parse("redis://:p%2Fss@host")?.password(), Some("p/ss"));
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The hostname, percent-decoded and lowercased, without the brackets of
    /// an IPv6 address; `None` when empty.
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// assert_eq!(BrokerUrl::parse("amqp://[::1]:5672/")?.hostname(), Some("::1"));
    /// assert_eq!(BrokerUrl::parse("sqs://")?.hostname(), None);
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn hostname(&self) -> Option<&str> {
        self.hostname.as_deref()
    }

    /// The port, when given.
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// assert_eq!(BrokerUrl::parse("redis://localhost:6379/")?.port(), Some(6379));
    /// assert_eq!(BrokerUrl::parse("amqp://localhost")?.port(), None);
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The virtual host: the path after its first `/`, percent-decoded;
    /// `None` when empty. Transports give it their own meaning (Redis: the
    /// database number).
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// assert_eq!(BrokerUrl::parse("amqp://localhost//foo")?.virtual_host(), Some("/foo"));
    /// assert_eq!(BrokerUrl::parse("amqp://localhost/foo")?.virtual_host(), Some("foo"));
    /// assert_eq!(BrokerUrl::parse("amqp://localhost/%2F")?.virtual_host(), Some("/"));
    /// assert_eq!(BrokerUrl::parse("amqp://localhost/")?.virtual_host(), None);
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn virtual_host(&self) -> Option<&str> {
        self.path
            .strip_prefix('/')
            .filter(|vhost| !vhost.is_empty())
    }

    /// The whole path, percent-decoded, with its leading `/` (empty when the
    /// URL has none): a socket or file path for `redis+socket://` and the like.
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// let url = BrokerUrl::parse("redis+socket:///tmp/redis.sock")?;
    /// assert_eq!(url.path(), "/tmp/redis.sock");
    /// assert_eq!(url.hostname(), None);
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query options, percent-decoded, in order. As in kombu, a key given
    /// twice keeps its last value and keys without a value are dropped.
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// let url = BrokerUrl::parse("amqp://localhost/myvhost?ssl=1&heartbeat=10")?;
    /// let expected = [("ssl".to_string(), "1".to_string()), ("heartbeat".into(), "10".into())];
    /// assert_eq!(url.query(), expected);
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn query(&self) -> &[(String, String)] {
        &self.query
    }

    /// The value of one query option.
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// let url = BrokerUrl::parse("amqp://localhost/myvhost?ssl=1")?;
    /// assert_eq!(url.query_value("ssl"), Some("1"));
    /// assert_eq!(url.query_value("insist"), None);
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn query_value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A copy with the parts the URL leaves out taken from `defaults`; a
    /// part that neither gives stays absent (no login is invented: each
    /// transport says in its [`TransportInfo`](crate::TransportInfo) what
    /// it fills, AMQP `guest`/`guest`, most nothing).
    ///
    /// ```
    /// use kombu_core::url::{BrokerUrl, UrlDefaults};
    ///
    /// let defaults = UrlDefaults { hostname: Some("rabbit"), port: Some(1234), ..UrlDefaults::default() };
    /// let url = BrokerUrl::parse("redis://")?.completed(&defaults);
    /// assert_eq!(url.as_uri(true), "redis://rabbit:1234");
    ///
    /// let url = BrokerUrl::parse("redis://:secret@other/")?.completed(&defaults);
    /// assert_eq!((url.hostname(), url.userid(), url.password()), (Some("other"), None, Some("secret")));
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn completed(&self, defaults: &UrlDefaults<'_>) -> BrokerUrl {
        fn fill(part: &mut Option<String>, default: Option<&str>) {
            if part.is_none() {
                *part = default.filter(|d| !d.is_empty()).map(str::to_owned);
            }
        }
        let mut url = self.clone();
        fill(&mut url.hostname, defaults.hostname);
        fill(&mut url.userid, defaults.userid);
        fill(&mut url.password, defaults.password);
        url.port = url.port.or(defaults.port);
        if url.virtual_host().is_none() {
            if let Some(vhost) = defaults.virtual_host.filter(|v| !v.is_empty()) {
                url.path = format!("/{vhost}");
            }
        }
        url
    }

    /// A copy with another scheme (checked and lowercased), for a transport
    /// alias or a URL that had to be completed.
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// let url = BrokerUrl::parse("amqp://h//")?.with_scheme("AMQPS")?;
    /// assert_eq!(url.to_string(), "amqps://h//");
    /// assert!(url.with_scheme("no scheme").is_err());
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn with_scheme(&self, scheme: &str) -> Result<BrokerUrl> {
        let scheme = parse_scheme(scheme).map_err(|refusal| refusal.into_error(scheme, ""))?;
        Ok(BrokerUrl {
            scheme,
            ..self.clone()
        })
    }

    /// The URL as text, percent-encoded where needed so that it parses back
    /// to the same `BrokerUrl`. Unless `include_password`, the password and
    /// sensitive query values (keys with `password`, `secret`, `token` or
    /// `key`) are shown as `**`.
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// let url = BrokerUrl::parse("amqp://us%3Aer:p%40ss@[::1]:5672/%2Ffoo?a=b%20c")?;
    /// assert_eq!(url.as_uri(false), "amqp://us%3Aer:**@[::1]:5672//foo?a=b+c");
    /// assert_eq!(url.as_uri(true), "amqp://us%3Aer:p%40ss@[::1]:5672//foo?a=b+c");
    /// assert_eq!(BrokerUrl::parse(&url.as_uri(true))?, url);
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn as_uri(&self, include_password: bool) -> String {
        let mut uri = format!("{}://", self.scheme);
        if self.userid.is_some() || self.password.is_some() {
            uri.push_str(&percent_encode(self.userid.as_deref().unwrap_or(""), ""));
            if let Some(password) = &self.password {
                uri.push(':');
                if include_password {
                    uri.push_str(&percent_encode(password, ""));
                } else {
                    uri.push_str(MASK);
                }
            }
            uri.push('@');
        }
        if let Some(host) = &self.hostname {
            match host.parse::<Ipv6Addr>() {
                Ok(_) => uri.push_str(&format!("[{host}]")),
                Err(_) => uri.push_str(&percent_encode(host, "")),
            }
        }
        if let Some(port) = self.port {
            uri.push_str(&format!(":{port}"));
        }
        uri.push_str(&percent_encode(&self.path, "/"));
        if !self.query.is_empty() {
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (key, value) in &self.query {
                let hide = !include_password && is_sensitive_key(key);
                query.append_pair(key, if hide { MASK } else { value });
            }
            uri.push('?');
            uri.push_str(&query.finish());
        }
        uri
    }
}

impl FromStr for BrokerUrl {
    type Err = Error;

    /// Same as [`BrokerUrl::parse`].
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// let url: BrokerUrl = "redis://localhost:6379/".parse()?;
    /// assert_eq!(url.port(), Some(6379));
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    fn from_str(input: &str) -> Result<Self> {
        BrokerUrl::parse(input)
    }
}

/// The URL with its password masked (`as_uri(false)`).
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_uri(false))
    }
}

/// The parts, with the password (and sensitive query values) shown as `**`.
impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let query: Vec<(&str, &str)> = self
            .query
            .iter()
            .map(|(k, v)| (k.as_str(), if is_sensitive_key(k) { MASK } else { v }))
            .collect();
        f.debug_struct("BrokerUrl")
            .field("scheme", &self.scheme)
            .field("userid", &self.userid)
            .field("password", &self.password.as_ref().map(|_| MASK))
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("query", &query)
            .finish()
    }
}

/// Split `input` (already trimmed) like Python's `urlsplit` and decode each part.
fn parse_parts(input: &str) -> Result<BrokerUrl, Refusal> {
    if input.is_empty() {
        return Err(Refusal::new("empty URL (expected transport://...)"));
    }
    let (scheme, rest) = input
        .split_once("://")
        .ok_or_else(|| Refusal::new("missing scheme (expected transport://...)"))?;
    let scheme = parse_scheme(scheme)?;
    let rest = rest.split('#').next().unwrap_or_default();
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));

    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (userinfo, host_port),
        None => ("", authority),
    };
    let (userid, password) = match userinfo.split_once(':') {
        Some((userid, password)) => (userid, Some(password)),
        None => (userinfo, None),
    };
    let userid = decode_part(userid, "user")?;
    let password = match password {
        Some(password) => decode_part(password, "password")?,
        None => None,
    };
    let (host, port) = split_host_port(host_port)?;
    Ok(BrokerUrl {
        scheme,
        userid,
        password,
        hostname: parse_host(host)?,
        port: parse_port(port)?,
        path: percent_decode(path).map_err(|e| Refusal::new(format!("virtual host: {e}")))?,
        query: parse_query(query)?,
    })
}

/// A scheme starts with a letter and holds letters, digits, `+`, `-` and `.`.
fn parse_scheme(scheme: &str) -> Result<String, Refusal> {
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid {
        return Err(Refusal::new(
            "scheme: must start with a letter and hold only letters, digits, '+', '-' and '.'",
        ));
    }
    Ok(scheme.to_ascii_lowercase())
}

/// Split `host:port` or `[ipv6]:port`; the port is `""` when absent.
fn split_host_port(host_port: &str) -> Result<(&str, &str), Refusal> {
    if host_port.starts_with('[') {
        let end = host_port
            .find(']')
            .ok_or_else(|| Refusal::new("hostname: invalid IPv6 address (no closing ']')"))?;
        let (host, after) = host_port.split_at(end + 1);
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, port)),
            None if after.is_empty() => Ok((host, "")),
            None => Err(Refusal::new(
                "hostname: unexpected text after the IPv6 address",
            )),
        };
    }
    Ok(host_port.split_once(':').unwrap_or((host_port, "")))
}

/// Check the hostname with the `url` crate, then decode and lowercase it.
fn parse_host(host: &str) -> Result<Option<String>, Refusal> {
    if host.is_empty() {
        return Ok(None);
    }
    let parsed = Host::parse_opaque(host).map_err(|err| {
        let message = match err {
            url::ParseError::InvalidIpv6Address => "hostname: invalid IPv6 address",
            url::ParseError::InvalidDomainCharacter => "hostname: invalid character",
            _ => "hostname: invalid",
        };
        Refusal {
            message: message.to_string(),
            source: Some(err),
        }
    })?;
    let host = match parsed {
        Host::Ipv6(address) => address.to_string(),
        _ => percent_decode(host)
            .map_err(|e| Refusal::new(format!("hostname: {e}")))?
            .to_lowercase(),
    };
    Ok(Some(host).filter(|h| !h.is_empty()))
}

/// The port is not echoed: with an unencoded `/` or `#` in a password, what
/// looks like a port is a piece of the password.
fn parse_port(port: &str) -> Result<Option<u16>, Refusal> {
    if port.is_empty() {
        return Ok(None);
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::new("port: not a number (0-65535)"));
    }
    let port = port
        .parse()
        .map_err(|_| Refusal::new("port: number too large (0-65535)"))?;
    Ok(Some(port))
}

/// Decode a user or password; empty becomes `None`. The part is not echoed.
fn decode_part(raw: &str, part: &str) -> Result<Option<String>, Refusal> {
    let decoded = percent_decode(raw).map_err(|e| Refusal::new(format!("{part}: {e}")))?;
    Ok(Some(decoded).filter(|d| !d.is_empty()))
}

/// `a=1&b=2`, with `+` as a space, as Python's `dict(parse_qsl(query))`.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, Refusal> {
    let decode = |raw: &str| {
        percent_decode(&raw.replace('+', " ")).map_err(|e| Refusal::new(format!("query: {e}")))
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    for pair in query.split('&') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let (key, value) = (decode(key)?, decode(value)?);
        if key.is_empty() || value.is_empty() {
            continue;
        }
        match pairs.iter_mut().find(|(k, _)| *k == key) {
            Some(existing) => existing.1 = value,
            None => pairs.push((key, value)),
        }
    }
    Ok(pairs)
}

/// Strict percent-decoding: a `%` must start a valid escape, and the result
/// must be UTF-8.
fn percent_decode(raw: &str) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |j: usize| bytes.get(j).and_then(|&b| (b as char).to_digit(16));
            let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) else {
                return Err("invalid percent-encoding (expected %XX)");
            };
            decoded.push((high * 16 + low) as u8);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| "not UTF-8 once percent-decoded")
}

/// Percent-encode all but the unreserved characters and those in `keep`.
fn percent_encode(text: &str, keep: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        let c = byte as char;
        if c.is_ascii_alphanumeric() || "-._~".contains(c) || keep.contains(c) {
            encoded.push(c);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The input as it may be echoed in an error: everything from the first `:`
/// after `scheme://` to the last `@` is masked (a superset of the password,
/// even when an unencoded `/`, `#`, `?` or `;` in it broke the parse), and so
/// are the values of sensitive query keys.
fn mask_input(input: &str) -> String {
    let start = input.find("://").map_or(0, |i| i + 3);
    let (head, rest) = input.split_at(start);
    let mut masked = head.to_string();
    let mut tail = rest;
    if let Some(at) = rest.rfind('@') {
        if let Some(colon) = rest[..at].find(':') {
            masked.push_str(&rest[..=colon]);
            masked.push_str(ERROR_MASK);
            tail = &rest[at..];
        }
    }
    let Some((before, query)) = tail.split_once('?') else {
        masked.push_str(tail);
        return masked;
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_sensitive_key(key) => format!("{key}={ERROR_MASK}"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{masked}{before}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(input: &str) -> BrokerUrl {
        BrokerUrl::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    fn error(input: &str) -> String {
        let err = BrokerUrl::parse(input).expect_err(input);
        assert_eq!(err.kind(), ErrorKind::InvalidUrl);
        err.to_string()
    }

    type Parts<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<u16>,
        Option<&'a str>,
    );

    fn parts(url: &BrokerUrl) -> Parts<'_> {
        (
            url.scheme(),
            url.userid(),
            url.password(),
            url.hostname(),
            url.port(),
            url.virtual_host(),
        )
    }

    #[test]
    fn reference_page_examples() {
        let none = None;
        assert_eq!(
            parts(&parse("amqp://")),
            ("amqp", none, none, none, None, none)
        );
        assert_eq!(
            parts(&parse("redis://localhost:6379/")),
            ("redis", none, none, Some("localhost"), Some(6379), none)
        );
        assert_eq!(parse("amqp://localhost//foo").virtual_host(), Some("/foo"));
        assert_eq!(parse("amqp://localhost/foo").virtual_host(), Some("foo"));
        let url = parse("amqp://localhost/myvhost?ssl=1");
        assert_eq!(url.virtual_host(), Some("myvhost"));
        assert_eq!(url.query_value("ssl"), Some("1"));
        assert_eq!(
            parts(&parse("amqp://guest:guest@localhost:5672//")),
            (
                "amqp",
                Some("guest"),
                Some("guest"),
                Some("localhost"),
                Some(5672),
                Some("/")
            )
        );
    }

    #[test]
    fn virtual_host_is_the_path_after_its_first_slash() {
        for (input, vhost, path) in [
            ("amqp://localhost", None, ""),
            ("amqp://localhost/", None, "/"),
            ("amqp://localhost//", Some("/"), "//"),
            ("amqp://localhost/%2F", Some("/"), "//"),
            ("amqp://localhost/a/b", Some("a/b"), "/a/b"),
            ("amqp://localhost/./a/../b", Some("./a/../b"), "/./a/../b"),
            ("amqp://localhost?x=1", None, ""),
        ] {
            let url = parse(input);
            assert_eq!((url.virtual_host(), url.path()), (vhost, path), "{input}");
        }
    }

    #[test]
    fn special_schemes_and_missing_parts() {
        let url = parse("redis+socket:///tmp/redis.sock");
        assert_eq!(url.scheme(), "redis+socket");
        assert_eq!(url.hostname(), None);
        assert_eq!(url.path(), "/tmp/redis.sock");

        let url = parse("mongodb+srv://user:pw@cluster0.example.net/db?retryWrites=true");
        assert_eq!(url.scheme(), "mongodb+srv");
        assert_eq!(url.hostname(), Some("cluster0.example.net"));
        assert_eq!(url.query_value("retryWrites"), Some("true"));

        assert_eq!(
            parts(&parse("sqs://KEY:SECRET@")),
            ("sqs", Some("KEY"), Some("SECRET"), None, None, None)
        );
        assert_eq!(
            parts(&parse("redis://:pass@host:6379/3")),
            (
                "redis",
                None,
                Some("pass"),
                Some("host"),
                Some(6379),
                Some("3")
            )
        );
        assert_eq!(parse("amqp://user:@host").password(), None);
        assert_eq!(parse("amqp://:5672").port(), Some(5672));
        assert_eq!(parse("amqp://host:").port(), None);
        assert_eq!(parse("AMQP://LocalHost").hostname(), Some("localhost"));
        assert_eq!(parse("  amqp://h  ").hostname(), Some("h"));
        assert_eq!(parse("amqp://h/v#fragment").virtual_host(), Some("v"));
    }

    #[test]
    fn ipv6_hosts_lose_and_regain_their_brackets() {
        let url = parse("amqp://[::1]:5672/");
        assert_eq!((url.hostname(), url.port()), (Some("::1"), Some(5672)));
        assert_eq!(url.to_string(), "amqp://[::1]:5672/");
        let url = parse("amqp://u:p@[2001:DB8::1]");
        assert_eq!(url.hostname(), Some("2001:db8::1"));
        assert_eq!(url.as_uri(true), "amqp://u:p@[2001:db8::1]");
    }

    #[test]
    fn parts_are_percent_decoded() {
        let url = parse("amqp://us%40er:p%2F%3Ass%40@ho%2Dst/v%2Fh%C3%A9?k%20=v%2B1+2");
        assert_eq!(url.userid(), Some("us@er"));
        assert_eq!(url.password(), Some("p/:ss@"));
        assert_eq!(url.hostname(), Some("ho-st"));
        assert_eq!(url.virtual_host(), Some("v/hé"));
        assert_eq!(url.query_value("k "), Some("v+1 2"));
    }

    #[test]
    fn query_keeps_the_last_value_and_drops_blanks() {
        let url = parse("amqp://h/?a=1&b=&c&a=3&=x&d=4");
        let query: Vec<(&str, &str)> = url
            .query()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(query, [("a", "3"), ("d", "4")]);
    }

    #[test]
    fn failover_lists_keep_their_order() {
        let urls = BrokerUrl::parse_list(" amqp://a//;;amqp://b:1// ; redis://c/0 ;").unwrap();
        let hosts: Vec<_> = urls.iter().map(|u| u.hostname().unwrap()).collect();
        assert_eq!(hosts, ["a", "b", "c"]);
        assert_eq!(BrokerUrl::parse_list("amqp://x").unwrap().len(), 1);

        let err = BrokerUrl::parse_list(" ;; ").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidUrl);
        assert!(err.to_string().contains("no broker URL given"), "{err}");

        let err = BrokerUrl::parse_list("amqp://a//;amqp://b:x//").unwrap_err();
        assert!(err
            .to_string()
            .ends_with("URL 2 of 2: port: not a number (0-65535)"));
        // An unencoded `;` in a password: no piece of it shows.
        let err = BrokerUrl::parse_list("amqp://u:pa;ss@h//").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid URL: "amqp://u:****@h//": URL 1 of 2: port: not a number (0-65535)"#
        );
    }

    #[test]
    fn errors_name_the_wrong_part() {
        for (input, message) in [
            ("", r#""": empty URL (expected transport://...)"#),
            (
                "localhost:5672",
                r#""localhost:5672": missing scheme (expected transport://...)"#,
            ),
            (
                "1amqp://h",
                r#""1amqp://h": scheme: must start with a letter and hold only letters, digits, '+', '-' and '.'"#,
            ),
            (
                "amqp://guest:guest@host:99999/",
                r#""amqp://guest:****@host:99999/": port: number too large (0-65535)"#,
            ),
            (
                "amqp://host:-1/",
                r#""amqp://host:-1/": port: not a number (0-65535)"#,
            ),
            (
                "amqp://us%zzer:pw@h/",
                r#""amqp://us%zzer:****@h/": user: invalid percent-encoding (expected %XX)"#,
            ),
            (
                "amqp://u:pw%C3@h/",
                r#""amqp://u:****@h/": password: not UTF-8 once percent-decoded"#,
            ),
            (
                "amqp://[::1/",
                r#""amqp://[::1/": hostname: invalid IPv6 address (no closing ']')"#,
            ),
            (
                "amqp://[::g]:5672/",
                r#""amqp://[::g]:5672/": hostname: invalid IPv6 address"#,
            ),
            (
                "amqp://[::1]x/",
                r#""amqp://[::1]x/": hostname: unexpected text after the IPv6 address"#,
            ),
            (
                "amqp://a b/",
                r#""amqp://a b/": hostname: invalid character"#,
            ),
            (
                "amqp://h/%4",
                r#""amqp://h/%4": virtual host: invalid percent-encoding (expected %XX)"#,
            ),
            (
                "amqp://h/?a=%G1",
                r#""amqp://h/?a=%G1": query: invalid percent-encoding (expected %XX)"#,
            ),
        ] {
            assert_eq!(error(input), format!("invalid URL: {message}"));
        }
    }

    #[test]
    fn host_errors_keep_the_url_error_as_source() {
        let err = BrokerUrl::parse("amqp://[::g]/").unwrap_err();
        assert_eq!(
            err.source_as::<url::ParseError>(),
            Some(&url::ParseError::InvalidIpv6Address)
        );
    }

    #[test]
    fn passwords_never_show() {
        let url = parse("amqp://guest:Hunter22@localhost:5672//?sasl_password=Tok3nX&a=1");
        assert_eq!(url.password(), Some("Hunter22"));
        let shown = [url.to_string(), format!("{url:?}"), url.as_uri(false)];
        for text in &shown {
            assert!(
                !text.contains("Hunter22") && !text.contains("Tok3nX"),
                "{text}"
            );
        }
        assert_eq!(
            shown[0],
            "amqp://guest:**@localhost:5672//?sasl_password=**&a=1"
        );
        assert!(shown[1].contains(r#"password: Some("**")"#), "{}", shown[1]);
        assert!(url.as_uri(true).contains("Hunter22"));

        // Rejected inputs, even when the password broke the parse.
        for input in [
            "amqp://guest:Hunter22@host:99999/",
            "amqp://guest:Hun/ter22@host/",
            "amqp://guest:Hun#ter22@host/",
            "amqp://guest:Hun?ter22@host/",
            "amqp://guest:Hun@ter22@[::1/",
            "guest:Hunter22@host",
            "amqp://h:x/?password=Hunter22",
        ] {
            let err = BrokerUrl::parse(input).unwrap_err();
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(!text.contains("ter22"), "{text}");
            }
        }
    }

    #[test]
    fn completed_fills_only_missing_parts() {
        let none = UrlDefaults::default();
        let url = parse("redis://").completed(&none);
        assert_eq!(url.as_uri(true), "redis://");

        let amqp = UrlDefaults {
            hostname: Some("localhost"),
            port: Some(5672),
            userid: Some("guest"),
            password: Some("guest"),
            virtual_host: Some("/"),
        };
        let url = parse("amqp://").completed(&amqp);
        assert_eq!(url.as_uri(true), "amqp://guest:guest@localhost:5672//");

        let keywords = UrlDefaults {
            hostname: Some("kw-host"),
            port: Some(1111),
            userid: Some("kw-user"),
            password: Some("kw-pass"),
            virtual_host: Some("kw-vhost"),
        };
        let url = parse("amqp://").completed(&keywords);
        assert_eq!(
            url.as_uri(true),
            "amqp://kw-user:kw-pass@kw-host:1111/kw-vhost"
        );

        let url = parse("amqp://u:p@h:2//v").completed(&keywords);
        assert_eq!(url.as_uri(true), "amqp://u:p@h:2//v");

        // An ACL user without a password keeps its name and gets no password.
        let url = parse("redis://alice@h").completed(&none);
        assert_eq!((url.userid(), url.password()), (Some("alice"), None));
    }

    #[test]
    fn as_uri_round_trips() {
        for input in [
            "amqp://",
            "amqp://guest:guest@localhost:5672//",
            "amqp://localhost//foo",
            "redis://:pass@host:6379/3",
            "redis+socket:///tmp/redis.sock",
            "sqs://KEY:SECRET@",
            "amqp://a%3Ab%2F:%3B%40@[fe80::1]:1/v%3Bh?x=a%26b&y=%C3%A9+1",
            "amqp://:5672",
        ] {
            let url = parse(input);
            assert_eq!(parse(&url.as_uri(true)), url, "{input}");
        }
        assert_eq!(
            parse("amqp://localhost/%2F").as_uri(true),
            "amqp://localhost//"
        );
    }

    #[test]
    fn with_scheme_checks_the_scheme() {
        let url = parse("amqp://h//");
        assert_eq!(url.with_scheme("pyamqp").unwrap().scheme(), "pyamqp");
        let err = url.with_scheme("").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidUrl);
    }

    proptest! {
        #[test]
        fn encoded_parts_parse_back(
            user in "[^!]{1,12}",
            secret in "\\PC{0,12}",
            host in "\\PC{1,12}",
            vhost in "\\PC{1,12}",
            port in proptest::option::of(any::<u16>()),
        ) {
            let password = format!("S3cr!{secret}");
            let port_text = port.map(|p| format!(":{p}")).unwrap_or_default();
            let encode = |t: &str| percent_encode(t, "");
            let input = format!(
                "amqp://{}:{}@{}{port_text}/{}",
                encode(&user), encode(&password), encode(&host), encode(&vhost),
            );
            let url = BrokerUrl::parse(&input).unwrap();
            prop_assert_eq!(url.userid(), Some(user.as_str()));
            prop_assert_eq!(url.password(), Some(password.as_str()));
            let host = host.to_lowercase();
            prop_assert_eq!(url.hostname(), Some(host.as_str()));
            prop_assert_eq!(url.port(), port);
            prop_assert_eq!(url.virtual_host(), Some(vhost.as_str()));
            prop_assert_eq!(&BrokerUrl::parse(&url.as_uri(true)).unwrap(), &url);
            for shown in [url.to_string(), format!("{url:?}")] {
                prop_assert!(!shown.contains(&password), "{}", shown);
                prop_assert!(!shown.contains(&encode(&password)), "{}", shown);
            }
        }

        #[test]
        fn parse_never_panics_nor_leaks(secret in "[a-z]{0,6}", junk in "\\PC{0,30}") {
            let input = format!("amqp://u:S3cr!{secret}{junk}@h/");
            if let Err(err) = BrokerUrl::parse(&input) {
                prop_assert!(!err.to_string().contains("S3cr!"), "{}", err);
            }
            let _ = BrokerUrl::parse(&junk);
        }

        #[test]
        fn whatever_parses_round_trips(junk in "[a-zA-Z0-9:@/?#&=%+\\[\\]._ -]{0,30}") {
            if let Ok(url) = BrokerUrl::parse(&format!("amqp://{junk}")) {
                prop_assert_eq!(BrokerUrl::parse(&url.as_uri(true)).unwrap(), url);
            }
        }

        #[test]
        fn query_pairs_round_trip(key in "\\PC{1,8}", value in "\\PC{1,8}") {
            let url = BrokerUrl::parse("amqp://h//").unwrap();
            let input = format!(
                "{}?{}={}",
                url.as_uri(true),
                percent_encode(&key, ""),
                percent_encode(&value, "")
            );
            let url = BrokerUrl::parse(&input).unwrap();
            prop_assert_eq!(url.query_value(&key), Some(value.as_str()));
            prop_assert_eq!(BrokerUrl::parse(&url.as_uri(true)).unwrap(), url);
        }
    }
}
