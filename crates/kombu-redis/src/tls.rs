//! TLS refusals said in words: a `rediss://` connection that rustls (or the
//! server) refused becomes an [`kombu_core::ErrorKind::Auth`] error saying which check
//! failed (an unknown CA, an expired certificate, a certificate for another
//! host, a client certificate the server wants), instead of the client's
//! "invalid peer certificate: UnknownIssuer" in an I/O error.

use kombu_core::Error;

/// `err` (from connecting to `host:port` over TLS) said in words when it
/// is a TLS refusal ([`kombu_core::tls_refusal`]); otherwise `err`
/// unchanged.
pub(crate) fn explain(err: Error, host: &str, port: u16, client_certificate: bool) -> Error {
    let connection = format!("redis: TLS connection to {host}:{port}");
    kombu_core::tls_refusal::explain(err, host, &connection, client_certificate)
}

/// The warning logged on each connection that does not verify the server
/// (`ssl_cert_reqs=CERT_NONE` or `ssl_check_hostname=false`).
pub(crate) fn warn_unverified(host: &str, port: u16) {
    tracing::warn!(
        endpoint = %format!("{host}:{port}"),
        "rediss: TLS without verifying the server's certificate \
         (ssl_cert_reqs=CERT_NONE or ssl_check_hostname=false): anyone on the path \
         can read and change this connection's traffic"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use kombu_core::ErrorKind;
    use rustls::CertificateError;

    #[test]
    fn refusals_are_found_through_io_errors_and_said_in_words() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::Expired);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let err = Error::new(ErrorKind::ConnectionLost, "redis: boom").with_source(io);
        let explained = explain(err, "127.0.0.1", 6390, false);
        assert_eq!(explained.kind(), ErrorKind::Auth);
        assert!(explained.to_string().contains("expired"), "{explained}");
        let plain = Error::new(ErrorKind::ConnectionRefused, "redis: refused");
        assert_eq!(
            explain(plain, "h", 1, false).kind(),
            ErrorKind::ConnectionRefused,
            "not a TLS refusal: unchanged"
        );
    }
}
