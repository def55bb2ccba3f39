//! TLS refusals said in words, for transports that connect with rustls
//! (feature `rustls`): an unknown CA, an expired certificate, a certificate
//! for another host, a client certificate the server wants. Each becomes an
//! [`ErrorKind::Auth`] error saying which check failed, instead of the
//! client library's "invalid peer certificate: UnknownIssuer" inside an I/O
//! error.
//!
//! ```
//! use kombu_core::{tls_refusal, Error, ErrorKind};
//!
//! let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
//! let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
//! let err = Error::new(ErrorKind::ConnectionLost, "io error").with_source(io);
//! let said = tls_refusal::explain(err, "localhost", "TLS connection to localhost:5671", false);
//! assert_eq!(said.kind(), ErrorKind::Auth);
//! assert!(said.to_string().contains("has expired"));
//! ```

use std::error::Error as StdError;
use std::sync::Arc;

use rustls::{AlertDescription, CertificateError};

use crate::{Error, ErrorKind};

/// `err` (from a TLS connection to `host`, named in messages as
/// `connection`, e.g. "TLS connection to host:5671") said in words when it
/// is a TLS refusal; otherwise `err` unchanged. `client_certificate`: one
/// was given (it picks the words for a connection the server closed as it
/// opened).
pub fn explain(err: Error, host: &str, connection: &str, client_certificate: bool) -> Error {
    let reason = find_rustls(&err).and_then(|tls| refusal_reason(tls, host));
    match reason {
        Some(reason) => {
            Error::new(ErrorKind::Auth, format!("{connection} refused: {reason}")).with_source(err)
        }
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
                format!("{connection} closed by the server as it opened: {why}"),
            )
            .with_source(err)
        }
        None => err,
    }
}

/// `err` itself, or the error an `Arc<dyn Error>` in the chain shares
/// (redis-rs keeps I/O errors so).
fn unshared<'a>(err: &'a (dyn StdError + 'static)) -> &'a (dyn StdError + 'static) {
    match err.downcast_ref::<Arc<dyn StdError + Send + Sync>>() {
        Some(shared) => &**shared,
        None => err,
    }
}

/// The rustls error somewhere in `err`'s chain of sources (through the I/O
/// errors that carry it, whose `source()` skips the error they wrap).
pub fn find_rustls<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(err) = next {
        let inner = unshared(err);
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
pub fn closed_by_server(err: &(dyn StdError + 'static)) -> bool {
    use std::io::ErrorKind as Io;
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(io) = unshared(err).downcast_ref::<std::io::Error>() {
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
pub fn refusal_reason(err: &rustls::Error, host: &str) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_found_through_io_and_shared_errors() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let shared: Arc<dyn StdError + Send + Sync> = Arc::new(io);
        let err = Error::new(ErrorKind::ConnectionLost, "boom").with_source(shared);
        let said = explain(err, "h", "TLS connection to h:1", false);
        assert_eq!(said.kind(), ErrorKind::Auth);
        assert_eq!(
            said.to_string(),
            "authentication failed: TLS connection to h:1 refused: the server's certificate \
             is not signed by a trusted CA (unknown issuer: give the CA that signed it with \
             ssl_ca_certs)"
        );
    }

    #[test]
    fn a_reset_is_said_in_words_and_other_errors_are_unchanged() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let err = Error::new(ErrorKind::ConnectionLost, "lost").with_source(reset);
        let said = explain(err, "h", "TLS connection to h:1", false);
        assert_eq!(said.kind(), ErrorKind::ConnectionLost, "still retryable");
        assert!(
            said.to_string()
                .contains("may require a client certificate"),
            "{said}"
        );
        let plain = Error::new(ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            explain(plain, "h", "TLS connection to h:1", true).kind(),
            ErrorKind::ConnectionRefused
        );
    }
}
