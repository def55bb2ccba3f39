//! [`SslOptions`]: the TLS settings of a connection.

use std::path::PathBuf;

/// TLS settings of a connection (kombu's `ssl` keyword: `True` or a dict).
///
/// ```
/// use kombu_core::SslOptions;
/// use std::path::PathBuf;
///
/// assert_eq!(SslOptions::default(), SslOptions::Disabled);
/// let ssl = SslOptions::Custom {
///     ca_certs: Some(PathBuf::from("/etc/ssl/ca.pem")),
///     certfile: None,
///     keyfile: None,
///     verify: true,
///     check_hostname: true,
/// };
/// assert!(ssl.is_enabled());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslOptions {
    /// Plain TCP.
    #[default]
    Disabled,
    /// TLS with the system's root certificates, verifying the server.
    Enabled,
    /// TLS with explicit files and checks.
    Custom {
        /// CA bundle to verify the server with (system roots when `None`).
        ca_certs: Option<PathBuf>,
        /// Client certificate, for mutual TLS.
        certfile: Option<PathBuf>,
        /// Private key of the client certificate.
        keyfile: Option<PathBuf>,
        /// Verify the server's certificate (`ssl_cert_reqs=CERT_REQUIRED`).
        verify: bool,
        /// Check that the certificate names the host.
        check_hostname: bool,
    },
}

impl SslOptions {
    /// True unless [`SslOptions::Disabled`].
    ///
    /// ```
    /// # use kombu_core::SslOptions;
    /// assert!(SslOptions::Enabled.is_enabled());
    /// assert!(!SslOptions::Disabled.is_enabled());
    /// ```
    pub fn is_enabled(&self) -> bool {
        !matches!(self, SslOptions::Disabled)
    }
}
