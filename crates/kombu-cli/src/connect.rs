//! From `--url`/`KOMBU_URL`/`--option` to a connected [`Connection`], with
//! errors that name the wrong part of the input.

use kombu::{Connection, ConnectionOptions, ErrorKind};

use crate::cli::BrokerArgs;
use crate::failure::{is_bad_input, Failure, Outcome};

/// The URL used when neither `--url` nor `KOMBU_URL` gives one.
pub const DEFAULT_URL: &str = "memory://";

/// The URL to use: `--url`, else `KOMBU_URL` (clap reads both), else memory://.
fn url_of(args: &BrokerArgs) -> &str {
    match args.url.trim() {
        "" => DEFAULT_URL,
        url => url,
    }
}

/// The URL as given (defaults not filled in), passwords masked: what the
/// commands print.
pub fn display_url(args: &BrokerArgs) -> String {
    let given = url_of(args);
    match kombu::BrokerUrl::parse_list(given) {
        Ok(urls) => urls
            .iter()
            .map(|url| url.as_uri(false))
            .collect::<Vec<_>>()
            .join(";"),
        Err(_) => "(invalid URL)".to_owned(),
    }
}

/// The connection options: `--connect-timeout` and every `--option`
/// (values are strings, as in a URL query; transports convert them).
pub fn options_of(args: &BrokerArgs) -> ConnectionOptions {
    let mut options = ConnectionOptions::new();
    if let Some(timeout) = args.connect_timeout {
        options = options.connect_timeout(timeout);
    }
    for (key, value) in &args.options {
        options = options.transport_option(key.clone(), value.as_str());
    }
    options
}

/// A lazy connection: checks the URL and the scheme, does no I/O.
pub fn connection(args: &BrokerArgs) -> Outcome<Connection> {
    Connection::with_options(url_of(args), options_of(args)).map_err(|err| {
        let disabled = err.kind() == ErrorKind::FeatureDisabled;
        let mut failure = Failure::from(err);
        if disabled {
            failure.message.push_str(&format!(
                "; this kombu binary has: {}",
                kombu::default_registry().schemes().join(", ")
            ));
        }
        failure
    })
}

/// Connect now. Any failure is bad input (exit status 2): a wrong option,
/// a refused login, or a broker that does not answer, named by host:port
/// with the connect timeout.
pub async fn open(args: &BrokerArgs) -> Outcome<Connection> {
    let conn = connection(args)?;
    match conn.connect().await {
        Ok(()) => Ok(conn),
        Err(err) if is_bad_input(err.kind()) => Err(Failure::usage(err.to_string())),
        Err(err) => {
            let timeout = conn
                .options()
                .connect_timeout
                .map_or("none".to_owned(), |t| format!("{} s", t.as_secs_f64()));
            Err(Failure::usage(format!(
                "cannot connect to {} ({}, connect timeout {timeout}): {err}",
                host_port(&conn),
                display_url(args),
            )))
        }
    }
}

/// `host:port` of the URL in use (`[v6]:port` for IPv6).
pub fn host_port(conn: &Connection) -> String {
    let url = conn.url();
    let host = url.hostname().unwrap_or("localhost");
    match url.port() {
        Some(port) if host.contains(':') => format!("[{host}]:{port}"),
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}
