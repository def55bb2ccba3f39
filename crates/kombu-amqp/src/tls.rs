//! TLS for `amqps://` beyond what lapin's own settings cover: refusals said
//! in words, and `ssl_cert_reqs=CERT_NONE` (a rustls client that does not
//! verify the server, used through lapin's `Connection::connector`).
//!
//! A refusal (an unknown CA, an expired certificate, a certificate for
//! another host, a client certificate the server wants) becomes an
//! [`ErrorKind::Auth`] error saying which check failed, instead of lapin's
//! "IO error: invalid peer certificate: UnknownIssuer".

use std::error::Error as StdError;
use std::path::Path;
use std::sync::Arc;

use kombu_core::{Error, ErrorKind, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, SignatureScheme};

/// The rustls error somewhere in `err`'s chain of sources (through the I/O
/// errors that carry it, whose `source()` skips the error they wrap).
fn find_rustls<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(found) = io.get_ref().and_then(|wrapped| find_rustls(wrapped)) {
                return Some(found);
            }
        }
        next = err.source();
    }
    None
}

/// Whether the server closed the connection under the client (a reset,
/// an unexpected end, a broken pipe) somewhere in `err`'s chain.
fn closed_by_server(err: &(dyn StdError + 'static)) -> bool {
    use std::io::ErrorKind as Io;
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                Io::ConnectionReset | Io::UnexpectedEof | Io::BrokenPipe | Io::ConnectionAborted
            ) {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// What a TLS refusal means, for a person; `None` for other TLS errors.
fn refusal_reason(err: &rustls::Error, host: &str) -> Option<String> {
    use rustls::Error as E;
    Some(match err {
        E::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired (renew it on the server)".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (check the clocks)".to_owned()
            }
            CertificateError::UnknownIssuer => {
                "the server's certificate is not signed by a trusted CA (unknown issuer: \
                 give the CA that signed it with ssl_ca_certs)"
                    .to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's certificate does not name the host {host:?} (wrong hostname: \
                     connect with a name the certificate lists)"
                )
            }
            CertificateError::Revoked => "the server's certificate is revoked".to_owned(),
            other => format!("the server's certificate is refused ({other:?})"),
        },
        E::AlertReceived(
            AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure,
        ) => "the server requires a client certificate (mutual TLS: set ssl_certfile and \
              ssl_keyfile)"
            .to_owned(),
        E::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied,
        ) => "the server refused the client certificate (is it signed by a CA the server \
              trusts, and still valid?)"
            .to_owned(),
        _ => return None,
    })
}

/// `err` (from connecting to `endpoint` over TLS, whose host is `host`)
/// said in words when it is a TLS refusal; otherwise `err` unchanged.
pub(crate) fn explain(err: Error, host: &str, endpoint: &str, client_certificate: bool) -> Error {
    let reason = find_rustls(&err).and_then(|tls| refusal_reason(tls, host));
    match reason {
        Some(reason) => Error::new(
            ErrorKind::Auth,
            format!("TLS connection to {endpoint} refused: {reason}"),
        )
        .with_source(err),
        // TLS 1.3 lets a client finish its handshake before the server
        // checks its certificate: the server's alert may then be lost to
        // the reset of the connection. Retryable as it was, but said in
        // words.
        None if closed_by_server(&err) => {
            let why = if client_certificate {
                "it may have refused the client certificate (is it signed by a CA the \
                 server trusts, and still valid?)"
            } else {
                "it may require a client certificate (mutual TLS: set ssl_certfile and \
                 ssl_keyfile)"
            };
            Error::new(
                err.kind(),
                format!("TLS connection to {endpoint} closed by the server as it opened: {why}"),
            )
            .with_source(err)
        }
        None => err,
    }
}

/// The warning logged on each connection that does not verify the server.
pub(crate) fn warn_unverified(endpoint: &str) {
    tracing::warn!(
        %endpoint,
        "amqps: TLS without verifying the server's certificate (ssl_cert_reqs=CERT_NONE): \
         anyone on the path can read and change this connection's traffic"
    );
}

/// Accepts any server certificate (CERT_NONE); handshake signatures are
/// still checked, so the connection is encrypted to whoever answered.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client certificate and its key (PEM files).
pub(crate) struct ClientIdentity {
    pub(crate) certificates: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// Read `certfile` (one or more certificates) and `keyfile` (PEM).
    /// Errors name the files, never their content.
    pub(crate) fn read(certfile: &Path, keyfile: &Path) -> Result<Self> {
        let invalid = |what: &str, path: &Path, err: &dyn std::fmt::Display| {
            Error::invalid_option(format!("ssl {what}: {}: {err}", path.display()))
        };
        let certificates = CertificateDer::pem_file_iter(certfile)
            .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| invalid("certfile", certfile, &e))?;
        let key =
            PrivateKeyDer::from_pem_file(keyfile).map_err(|e| invalid("keyfile", keyfile, &e))?;
        Ok(ClientIdentity { certificates, key })
    }
}

/// A rustls client configuration that accepts any server certificate
/// (CERT_NONE), with the client certificate when given.
pub(crate) fn unverified_client(identity: Option<ClientIdentity>) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid_option(format!("ssl: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)));
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(ClientIdentity { certificates, key }) => builder
            .with_client_auth_cert(certificates, key)
            .map_err(|e| Error::invalid_option(format!("ssl certfile/keyfile: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_found_through_io_errors_and_said_in_words() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let err = Error::new(ErrorKind::ConnectionRefused, "connecting: IO error").with_source(io);
        let explained = explain(err, "127.0.0.1", "127.0.0.1:5691", false);
        assert_eq!(explained.kind(), ErrorKind::Auth);
        assert!(
            explained.to_string().contains("not signed by a trusted CA"),
            "{explained}"
        );
        let plain = Error::new(ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            explain(plain, "h", "h:1", false).kind(),
            ErrorKind::ConnectionRefused
        );
    }

    #[test]
    fn a_reset_as_the_connection_opens_hints_at_a_client_certificate() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let err =
            Error::new(ErrorKind::ConnectionRefused, "connecting: IO error").with_source(reset);
        let explained = explain(err, "h", "h:5692", false);
        assert_eq!(
            explained.kind(),
            ErrorKind::ConnectionRefused,
            "still retryable"
        );
        assert!(
            explained
                .to_string()
                .contains("may require a client certificate"),
            "{explained}"
        );
    }

    #[test]
    fn an_unverified_client_builds() {
        assert!(unverified_client(None).is_ok());
    }
}
