//! Opening the Redis connections: one multiplexed, self-reconnecting
//! connection for every command, and a client for the PUB/SUB subscriber.

use kombu_core::{Error, ErrorKind, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use crate::config::{Address, Credentials, RedisConfig};
use crate::conn::RedisConn;
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
    if insecure {
        crate::tls::warn_unverified(host, port);
    }
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

/// A cluster connection through the seed node `config.address` (the
/// client learns every node from it), with the URL's login; commands
/// answer within the response timeout, retried a few times while the
/// cluster moves a slot or promotes a replica.
async fn cluster(config: &RedisConfig) -> Result<(RedisConn, Vec<redis::Client>)> {
    let Address::Tcp { host, port } = &config.address else {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "rediscluster://: TLS and unix sockets are not supported yet (plain TCP only)",
        ));
    };
    let seed = ConnectionAddr::Tcp(host.clone(), *port)
        .into_connection_info()
        .map_err(map_redis)?;
    let mut builder = redis::cluster::ClusterClient::builder(vec![seed])
        .connection_timeout(config.connect_timeout())
        .response_timeout(config.response_timeout())
        .overall_response_timeout(Some(config.response_timeout()))
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(50)
        .max_retry_wait(1000);
    if let Some(c) = &config.credentials {
        if let Some(user) = &c.username {
            builder = builder.username(user);
        }
        builder = builder.password(&c.password);
    }
    let client = builder.build().map_err(map_redis)?;
    let bound = config.connect_timeout() + config.response_timeout();
    let open = async {
        let conn = client.get_async_connection().await.map_err(map_redis)?;
        let mut conn = RedisConn::Cluster(conn);
        conn.ping().await.map_err(map_redis)?;
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .map_err(map_redis)?;
        Ok::<_, Error>((conn, nodes))
    };
    let (conn, nodes) = tokio::time::timeout(bound, open)
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!("rediscluster: no connection through {host}:{port} within {bound:?}"),
            ))
        })
        .map_err(|err| auth_error(err, config.credentials.as_ref()))?;
    // PUB/SUB reaches every node of a cluster: the subscriber connects to
    // the first node that answers, the seed first.
    let mut subscribers = vec![self::client(config, config.credentials.as_ref())?];
    for (node_host, node_port) in cluster_nodes(&nodes) {
        if (node_host.as_str(), node_port) == (host.as_str(), *port) {
            continue;
        }
        let mut node = config.clone();
        node.address = Address::Tcp {
            host: node_host,
            port: node_port,
        };
        subscribers.push(self::client(&node, config.credentials.as_ref())?);
    }
    tracing::debug!(
        seed = %format!("{host}:{port}"),
        nodes = subscribers.len(),
        "connected to a redis cluster"
    );
    Ok((conn, subscribers))
}

/// How often a cluster command is retried (MOVED, ASK, a node lost)
/// before it fails and kombu-core reconnects.
const CLUSTER_RETRIES: u32 = 4;

/// The `host:port` of every node `CLUSTER NODES` lists that is not failed.
fn cluster_nodes(listing: &str) -> Vec<(String, u16)> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.nth(1)?;
            let flags = fields.next()?;
            if flags.contains("fail") || flags.contains("noaddr") {
                return None;
            }
            let address = address.split('@').next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// An authentication failure said in words (which login was refused).
fn auth_error(err: Error, creds: Option<&Credentials>) -> Error {
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
}

/// The command connection and the clients for PUB/SUB (tried in order),
/// with the login the URL gives (sent as written, on the first attempt).
/// A `sentinel://` URL is resolved to its master first (on every open, so
/// a reconnect follows a failover); a `rediscluster://` URL opens a
/// cluster connection.
pub(crate) async fn open(config: &RedisConfig) -> Result<(RedisConn, Vec<redis::Client>)> {
    if config.cluster {
        return cluster(config).await;
    }
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
    let conn = manager(&client, config)
        .await
        .map_err(|err| auth_error(err, creds));
    #[cfg(feature = "tls")]
    let conn = match &config.address {
        Address::Tls {
            host,
            port,
            certfile,
            ..
        } => conn.map_err(|err| crate::tls::explain(err, host, *port, certfile.is_some())),
        _ => conn,
    };
    Ok((RedisConn::Single(conn?), vec![client]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_skips_failed_ones() {
        let listing = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 master,fail - 0 0 2 connected
c3 127.0.0.1:7004@17004 slave a1 0 0 1 connected
";
        assert_eq!(
            cluster_nodes(listing),
            [
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7004)
            ]
        );
    }
}
