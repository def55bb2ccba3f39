//! TLS refusals said in words: a `rediss://` connection that rustls (or the
//! server) refused becomes an [`ErrorKind::Auth`] error saying which check
//! failed (an unknown CA, an expired certificate, a certificate for another
//! host, a client certificate the server wants), instead of the client's
//! "invalid peer certificate: UnknownIssuer" in an I/O error.

use std::error::Error as StdError;
use std::sync::Arc;

use kombu_core::{Error, ErrorKind};
use rustls::{AlertDescription, CertificateError};

/// The rustls error somewhere in `err`'s chain of sources (through the I/O
/// errors that carry it, whose `source()` skips the error they wrap).
fn find_rustls<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        // redis-rs keeps an I/O error as an `Arc<dyn Error>`.
        let inner: &(dyn StdError + 'static) =
            match err.downcast_ref::<Arc<dyn StdError + Send + Sync>>() {
                Some(shared) => &**shared,
                None => err,
            };
        if let Some(found) = inner.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
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
        let err: &(dyn StdError + 'static) =
            match err.downcast_ref::<Arc<dyn StdError + Send + Sync>>() {
                Some(shared) => &**shared,
                None => err,
            };
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
pub(crate) fn refusal_reason(err: &rustls::Error, host: &str) -> Option<String> {
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

/// `err` (from connecting to `host:port` over TLS) said in words when it
/// is a TLS refusal; otherwise `err` unchanged.
pub(crate) fn explain(err: Error, host: &str, port: u16, client_certificate: bool) -> Error {
    let reason = find_rustls(&err).and_then(|tls| refusal_reason(tls, host));
    match reason {
        Some(reason) => Error::new(
            ErrorKind::Auth,
            format!("redis: TLS connection to {host}:{port} refused: {reason}"),
        )
        .with_source(err),
        // TLS 1.3 lets a client finish its handshake before the server
        // checks its certificate: the server's alert may then be lost to
        // the reset of the connection. Retryable as it was, but said in
        // words.
        None if closed_by_server(&err) => {
            let endpoint = format!("{host}:{port}");
            let why = if client_certificate {
                "it may have refused the client certificate (is it signed by a CA the \
                 server trusts, and still valid?)"
            } else {
                "it may require a client certificate (mutual TLS: set ssl_certfile and \
                 ssl_keyfile)"
            };
            Error::new(
                err.kind(),
                format!(
                    "redis: TLS connection to {endpoint} closed by the server as it opened: {why}"
                ),
            )
            .with_source(err)
        }
        None => err,
    }
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
