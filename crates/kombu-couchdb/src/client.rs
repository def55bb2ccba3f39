//! The HTTP side: one shared `reqwest` client, the database URL, the login,
//! and the mapping of transport failures and CouchDB status codes to
//! [`ErrorKind`]s. Requests never carry the password in their URL (it goes
//! in an `Authorization` header), so no error can show it.

use std::time::Duration;

use kombu_core::{Error, ErrorKind, Result, SslOptions};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::Url;

use crate::config::{CouchConfig, Credentials};

/// A CouchDB answer: its status and its JSON body (`Null` when empty or
/// not JSON).
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    /// The body of a 2xx answer, or the error the status means.
    pub fn ok(self, what: &str) -> Result<Value> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            Err(status_error(self.status, &self.body, what))
        }
    }
}

/// The error a non-2xx CouchDB status means.
pub(crate) fn status_error(status: StatusCode, body: &Value, what: &str) -> Error {
    let error = body.get("error").and_then(Value::as_str).unwrap_or("");
    let reason = body.get("reason").and_then(Value::as_str).unwrap_or("");
    let kind = match status.as_u16() {
        401 | 403 => ErrorKind::Auth,
        404 => ErrorKind::NotFound,
        409 | 412 => ErrorKind::PreconditionFailed,
        413 => ErrorKind::LimitExceeded,
        408 | 504 => ErrorKind::Timeout,
        502 | 503 => ErrorKind::ConnectionLost,
        _ => ErrorKind::Protocol,
    };
    let hint = if kind == ErrorKind::Auth {
        " (check the URL's user and password, and that the user may use this database)"
    } else {
        ""
    };
    Error::new(
        kind,
        format!("couchdb: {what}: HTTP {status} {error} {reason}{hint}")
            .trim_end()
            .replace("  ", " "),
    )
}

/// The error a failed HTTP exchange means (never with a URL in it).
fn transport_error(err: reqwest::Error, what: &str) -> Error {
    let err = err.without_url();
    let kind = if err.is_timeout() {
        ErrorKind::Timeout
    } else if err.is_connect() {
        ErrorKind::ConnectionRefused
    } else if err.is_decode() || err.is_builder() {
        ErrorKind::Protocol
    } else {
        ErrorKind::ConnectionLost
    };
    let mut message = format!("couchdb: {what}: {err}");
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    Error::new(kind, message).with_source(err)
}

/// The database's HTTP client.
pub(crate) struct CouchClient {
    http: reqwest::Client,
    db: Url,
    database: String,
    login: Option<Credentials>,
}

impl CouchClient {
    /// Connect: choose the login, create the database if it is missing.
    /// No index is made: a queue's messages are read from their id range.
    pub async fn open(config: &CouchConfig) -> Result<CouchClient> {
        let http = http_client(config)?;
        let mut db = config.server.clone();
        db.path_segments_mut()
            .map_err(|_| Error::new(ErrorKind::InvalidUrl, "couchdb: the server URL has no path"))?
            .push(&config.database);
        let client = CouchClient {
            http,
            db,
            database: config.database.clone(),
            login: config.credentials.clone(),
        };
        client.ensure_database().await?;
        Ok(client)
    }

    /// The database's name.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The URL of `segments` under the database (each one escaped).
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.db.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    /// Send a request to the database (`segments` below it); `timeout`
    /// replaces the client's request timeout.
    pub async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Reply> {
        let what = describe(&method, segments);
        let mut request = self
            .http
            .request(method, self.url(segments, query))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(login) = &self.login {
            request = request.basic_auth(&login.username, Some(&login.password));
        }
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body)?;
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(e, &what))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transport_error(e, &what))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply { status, body })
    }

    /// `GET /` on the server (its welcome), within the request timeout:
    /// any HTTP answer below 500 means it is up.
    pub async fn ping(&self) -> Result<()> {
        let mut url = self.db.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop();
        }
        let mut request = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(login) = &self.login {
            request = request.basic_auth(&login.username, Some(&login.password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(e, "GET /"))?;
        let status = response.status();
        // Read the body too: a server that stops halfway is not up.
        response
            .bytes()
            .await
            .map_err(|e| transport_error(e, "GET /"))?;
        if status.is_server_error() {
            return Err(Error::new(
                ErrorKind::ConnectionLost,
                format!("couchdb: GET /: the server answered {status}"),
            ));
        }
        Ok(())
    }

    async fn ensure_database(&self) -> Result<()> {
        let reply = self.send(Method::GET, &[], &[], None, None).await?;
        if reply.status.is_success() {
            return Ok(());
        }
        if reply.status != StatusCode::NOT_FOUND {
            return Err(reply
                .ok(&format!("open database {:?}", self.database))
                .unwrap_err());
        }
        let created = self.send(Method::PUT, &[], &[], None, None).await?;
        match created.status.as_u16() {
            // 412: another client created it first.
            201 | 202 | 412 => Ok(()),
            _ => Err(created
                .ok(&format!("create database {:?}", self.database))
                .unwrap_err()),
        }
    }
}

/// `GET _all_docs`-style description of a request, for errors.
fn describe(method: &Method, segments: &[&str]) -> String {
    match segments.first() {
        None => format!("{method} database"),
        Some(first) if first.starts_with('_') => format!("{method} {first}"),
        Some(_) => format!("{method} document"),
    }
}

fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::invalid_option(format!(
            "couchdb: cannot read {what} {}: {e}",
            path.display()
        ))
        .with_source(e)
    })
}

fn http_client(config: &CouchConfig) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("kombu-rs/", env!("CARGO_PKG_VERSION")))
        .timeout(config.request_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true);
    if let Some(timeout) = config.connect_timeout {
        builder = builder.connect_timeout(timeout);
    }
    if let SslOptions::Custom {
        ca_certs,
        certfile,
        keyfile,
        verify,
        check_hostname,
    } = &config.tls
    {
        if let Some(path) = ca_certs {
            let pem = read_file(path, "ssl_ca_certs")?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::invalid_option(format!("couchdb: ssl_ca_certs: {e}")).with_source(e)
            })? {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (certfile, keyfile) {
            (Some(cert), key) => {
                let mut pem = read_file(cert, "ssl_certfile")?;
                if let Some(key) = key {
                    pem.push(b'\n');
                    pem.extend(read_file(key, "ssl_keyfile")?);
                }
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    Error::invalid_option(format!("couchdb: client certificate: {e}"))
                        .with_source(e)
                })?;
                builder = builder.identity(identity);
            }
            (None, Some(_)) => {
                return Err(Error::invalid_option(
                    "couchdb: ssl_keyfile needs ssl_certfile",
                ))
            }
            (None, None) => {}
        }
        if !verify {
            builder = builder.danger_accept_invalid_certs(true);
        } else if !check_hostname {
            return Err(Error::unsupported(
                "couchdb: checking the certificate without checking its host name is not \
                 supported by rustls; use ssl_cert_reqs=CERT_NONE to skip verification",
            ));
        }
    }
    builder.build().map_err(|e| {
        Error::new(ErrorKind::Other, format!("couchdb: HTTP client: {e}")).with_source(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_map_to_kinds() {
        let body = json!({"error": "conflict", "reason": "Document update conflict."});
        let e = status_error(StatusCode::CONFLICT, &body, "PUT document");
        assert_eq!(e.kind(), ErrorKind::PreconditionFailed);
        assert_eq!(
            e.to_string(),
            "precondition failed: couchdb: PUT document: HTTP 409 Conflict conflict Document update conflict."
        );
        let auth = status_error(StatusCode::UNAUTHORIZED, &Value::Null, "GET database");
        assert_eq!(auth.kind(), ErrorKind::Auth);
        assert_eq!(
            status_error(StatusCode::NOT_FOUND, &Value::Null, "x").kind(),
            ErrorKind::NotFound
        );
        assert!(status_error(StatusCode::SERVICE_UNAVAILABLE, &Value::Null, "x").is_recoverable());
    }

    #[test]
    fn descriptions_name_no_document() {
        assert_eq!(describe(&Method::POST, &["_bulk_docs"]), "POST _bulk_docs");
        assert_eq!(describe(&Method::GET, &["message:1:q"]), "GET document");
        assert_eq!(describe(&Method::PUT, &[]), "PUT database");
    }
}
