//! Opening the Redis connections: one multiplexed, self-reconnecting
//! connection for every command, and a client for the PUB/SUB subscriber.

use kombu_core::{Error, ErrorKind, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use crate::config::{Address, Credentials, RedisConfig};
use crate::error::{map_redis, needs_auth};

fn client(config: &RedisConfig, credentials: Option<&Credentials>) -> Result<redis::Client> {
    let mut settings = RedisConnectionInfo::default().set_db(config.db);
    if let Some(c) = credentials {
        if let Some(user) = &c.username {
            settings = settings.set_username(user);
        }
        settings = settings.set_password(&c.password);
    }
    let addr = match &config.address {
        Address::Tcp { host, port } => ConnectionAddr::Tcp(host.clone(), *port),
        Address::Unix(path) => ConnectionAddr::Unix(path.clone()),
        Address::Tls {
            host,
            port,
            insecure,
            ..
        } => tls_addr(host, *port, *insecure)?,
    };
    let info = addr
        .into_connection_info()
        .map_err(map_redis)?
        .set_redis_settings(settings);
    match &config.address {
        #[cfg(feature = "tls")]
        Address::Tls {
            ca_certs,
            certfile,
            keyfile,
            ..
        } if ca_certs.is_some() || certfile.is_some() => {
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|e| {
                    Error::invalid_option(format!("cannot read {}: {e}", path.display()))
                })
            };
            let root_cert = ca_certs.as_deref().map(read).transpose()?;
            let client_tls = match (certfile, keyfile) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                    client_cert: read(cert)?,
                    client_key: read(key)?,
                }),
                (Some(_), None) | (None, Some(_)) => {
                    return Err(Error::invalid_option(
                        "ssl_certfile and ssl_keyfile go together",
                    ))
                }
                (None, None) => None,
            };
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
            .map_err(map_redis)
        }
        _ => redis::Client::open(info).map_err(map_redis),
    }
}

#[cfg(feature = "tls")]
fn tls_addr(host: &str, port: u16, insecure: bool) -> Result<ConnectionAddr> {
    // Several crates may enable rustls providers; pick ring explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(ConnectionAddr::TcpTls {
        host: host.to_owned(),
        port,
        insecure,
        tls_params: None,
    })
}

#[cfg(not(feature = "tls"))]
fn tls_addr(_: &str, _: u16, _: bool) -> Result<ConnectionAddr> {
    Err(Error::new(
        ErrorKind::FeatureDisabled,
        "rediss:// needs the `tls` feature of kombu-redis",
    ))
}

async fn manager(client: &redis::Client, config: &RedisConfig) -> Result<ConnectionManager> {
    // Every command returns at once (no blocking pops), so a response
    // timeout bounds how long a stopped server can hold a call. No retries
    // of its own: one attempt (a wrong password is sent once), and a
    // failure goes to kombu-core, which owns reconnecting (a lost
    // transport is replaced; `ensure_connection` retries as its policy says).
    let cfg = ConnectionManagerConfig::new()
        .set_response_timeout(Some(config.response_timeout()))
        .set_connection_timeout(Some(config.connect_timeout()))
        .set_number_of_retries(0);
    let bound = config.connect_timeout() + config.response_timeout();
    let open = async {
        let mut conn = client
            .get_connection_manager_with_config(cfg)
            .await
            .map_err(map_redis)?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(map_redis)?;
        Ok(conn)
    };
    tokio::time::timeout(bound, open).await.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::Timeout,
            format!("redis: no connection within {bound:?}"),
        ))
    })
}

/// The master's address, from the sentinel `config.address` names
/// (`SENTINEL get-master-addr-by-name`), within the connect timeout.
async fn master_address(config: &RedisConfig, master: &str) -> Result<Address> {
    let Address::Tcp { host, port } = &config.address else {
        return Err(Error::invalid_option(
            "sentinel://: a sentinel is reached over TCP (host:port)",
        ));
    };
    let bound = config.connect_timeout() + config.response_timeout();
    let ask = async {
        let client = redis::Client::open(
            ConnectionAddr::Tcp(host.clone(), *port)
                .into_connection_info()
                .map_err(map_redis)?,
        )
        .map_err(map_redis)?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(map_redis)?;
        let answer: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master)
            .query_async(&mut conn)
            .await
            .map_err(map_redis)?;
        answer.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("redis sentinel {host}:{port} monitors no master named {master:?}"),
            )
        })
    };
    let (master_host, master_port) = tokio::time::timeout(bound, ask)
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!("redis sentinel {host}:{port}: no answer within {bound:?}"),
            ))
        })
        .map_err(|err| {
            Error::new(
                err.kind(),
                format!("asking sentinel {host}:{port} for master {master:?}: {err}"),
            )
        })?;
    tracing::debug!(
        sentinel = %format!("{host}:{port}"),
        master,
        address = %format!("{master_host}:{master_port}"),
        "redis sentinel named the master"
    );
    Ok(Address::Tcp {
        host: master_host,
        port: master_port,
    })
}

/// The command connection and the client (for PUB/SUB), with the login
/// the URL gives (sent as written, on the first attempt). A `sentinel://`
/// URL is resolved to its master first (on every open, so a reconnect
/// follows a failover).
pub(crate) async fn open(config: &RedisConfig) -> Result<(ConnectionManager, redis::Client)> {
    let resolved;
    let config = match &config.master_name {
        Some(master) => {
            let mut direct = config.clone();
            direct.address = master_address(config, master).await?;
            resolved = direct;
            &resolved
        }
        None => config,
    };
    let creds = config.credentials.as_ref();
    let client = client(config, creds)?;
    let conn = manager(&client, config).await.map_err(|err| {
        if err.source_as::<redis::RedisError>().is_some_and(needs_auth) {
            let who = match creds {
                None => "no login was given (the server wants one)".to_owned(),
                Some(Credentials {
                    username: Some(user),
                    ..
                }) => format!("user {user:?}, check the URL's user and password"),
                Some(_) => "the default user, check the URL's password".to_owned(),
            };
            Error::new(
                ErrorKind::Auth,
                format!("redis: authentication failed ({who})"),
            )
        } else {
            err
        }
    })?;
    Ok((conn, client))
}
