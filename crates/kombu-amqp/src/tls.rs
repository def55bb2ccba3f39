//! TLS for `amqps://` beyond what lapin's own settings cover: refusals said
//! in words, and `ssl_cert_reqs=CERT_NONE` (a rustls client that does not
//! verify the server, used through lapin's `Connection::connector`).
//!
//! A refusal (an unknown CA, an expired certificate, a certificate for
//! another host, a client certificate the server wants) becomes an
//! [`kombu_core::ErrorKind::Auth`] error saying which check failed, instead of lapin's
//! "IO error: invalid peer certificate: UnknownIssuer".

use std::path::Path;
use std::sync::Arc;

use kombu_core::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// `err` (from connecting to `endpoint` over TLS, whose host is `host`)
/// said in words when it is a TLS refusal ([`kombu_core::tls_refusal`]);
/// otherwise `err` unchanged.
pub(crate) fn explain(err: Error, host: &str, endpoint: &str, client_certificate: bool) -> Error {
    let connection = format!("TLS connection to {endpoint}");
    kombu_core::tls_refusal::explain(err, host, &connection, client_certificate)
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
    use kombu_core::ErrorKind;
    use rustls::CertificateError;

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
    fn an_unverified_client_builds() {
        assert!(unverified_client(None).is_ok());
    }
}
