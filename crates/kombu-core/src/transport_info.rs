//! [`TransportInfo`]: the one static description of a transport (its name,
//! URL schemes, ports, cargo feature, default login and static
//! capabilities), from which the registry, URL completion, the facade's
//! disabled-feature list and the README's transport table are made.

use crate::transport::{Capabilities, TransportKind};

/// What a transport is, known without connecting. Each transport crate
/// writes one as a `const` and returns it from
/// [`TransportFactory::info`](crate::spi::TransportFactory::info).
///
/// ```
/// use kombu_core::{TransportInfo, TransportKind};
/// const INFO: TransportInfo = TransportInfo::new("toy", &["toy", "toys"], TransportKind::Virtual)
///     .feature("toy")
///     .port(7000)
///     .tls_port(7001);
/// assert_eq!(INFO.port_for(false), Some(7000));
/// assert_eq!(INFO.port_for(true), Some(7001));
/// assert!(INFO.default_login.is_none()); // absent parts of a URL stay absent
/// assert!(INFO.static_capabilities().supports(kombu_core::ExchangeType::Topic));
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct TransportInfo {
    /// The transport's name for people (`memory`, `redis`, ...).
    pub name: &'static str,
    /// The URL schemes it serves; the first is its main one.
    pub schemes: &'static [&'static str],
    /// Native or virtual.
    pub kind: TransportKind,
    /// The cargo feature of the `kombu` crate that compiles it in.
    pub feature: &'static str,
    /// The port used when a URL gives none.
    pub default_port: Option<u16>,
    /// The port used with TLS on (`amqps://`, `ssl` option) when it differs
    /// (kombu's `default_ssl_port`).
    pub tls_port: Option<u16>,
    /// Login filled in when neither the URL nor the keyword options give
    /// one (AMQP: `guest`/`guest`). `None` for most transports: a URL
    /// without credentials logs in without any.
    pub default_login: Option<(&'static str, &'static str)>,
    /// Virtual host filled in when neither the URL nor the options give
    /// one (AMQP: `/`).
    pub default_virtual_host: Option<&'static str>,
    /// Schemes that turn TLS on by themselves (`amqps`, `rediss`).
    pub tls_schemes: &'static [&'static str],
    capabilities: fn() -> Capabilities,
}

fn default_capabilities_virtual() -> Capabilities {
    Capabilities::new(TransportKind::Virtual)
}

fn default_capabilities_native() -> Capabilities {
    Capabilities::new(TransportKind::Native)
}

impl TransportInfo {
    /// A description with no ports, no default login, the feature named
    /// like the transport and [`Capabilities::new`]`(kind)`.
    pub const fn new(
        name: &'static str,
        schemes: &'static [&'static str],
        kind: TransportKind,
    ) -> Self {
        TransportInfo {
            name,
            schemes,
            kind,
            feature: name,
            default_port: None,
            tls_port: None,
            default_login: None,
            default_virtual_host: None,
            tls_schemes: &[],
            capabilities: match kind {
                TransportKind::Native => default_capabilities_native,
                TransportKind::Virtual => default_capabilities_virtual,
            },
        }
    }

    /// Set the cargo feature.
    pub const fn feature(mut self, feature: &'static str) -> Self {
        self.feature = feature;
        self
    }

    /// Set the default port.
    pub const fn port(mut self, port: u16) -> Self {
        self.default_port = Some(port);
        self
    }

    /// Set the port used with TLS.
    pub const fn tls_port(mut self, port: u16) -> Self {
        self.tls_port = Some(port);
        self
    }

    /// Set schemes that mean TLS.
    pub const fn tls_schemes(mut self, schemes: &'static [&'static str]) -> Self {
        self.tls_schemes = schemes;
        self
    }

    /// Set the login used when none is given.
    pub const fn default_login(mut self, userid: &'static str, password: &'static str) -> Self {
        self.default_login = Some((userid, password));
        self
    }

    /// Set the virtual host used when none is given.
    pub const fn default_virtual_host(mut self, vhost: &'static str) -> Self {
        self.default_virtual_host = Some(vhost);
        self
    }

    /// Set the static capabilities (what the README's table shows; a
    /// connected transport may report less, see
    /// [`Transport::capabilities`](crate::spi::Transport::capabilities)).
    pub const fn capabilities(mut self, capabilities: fn() -> Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// The static capabilities.
    pub fn static_capabilities(&self) -> Capabilities {
        (self.capabilities)()
    }

    /// The port for a URL that gives none, with TLS on or off.
    pub fn port_for(&self, tls: bool) -> Option<u16> {
        if tls {
            self.tls_port.or(self.default_port)
        } else {
            self.default_port
        }
    }

    /// True when `scheme` turns TLS on by itself.
    pub fn is_tls_scheme(&self, scheme: &str) -> bool {
        self.tls_schemes
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme))
    }

    /// True when this transport serves `scheme`.
    pub fn serves(&self, scheme: &str) -> bool {
        self.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
    }
}
