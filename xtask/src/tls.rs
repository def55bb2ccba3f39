//! The TLS services (`rabbitmq-tls`, `redis-tls`): a throwaway CA and the
//! certificates made from it with the `openssl` CLI, and what each TLS
//! server is given.
//!
//! Each service is a group of three independent servers (no formation):
//!
//! * `good`: presents a certificate for `localhost` and `127.0.0.1` signed
//!   by the CA, accepts clients without a certificate, and listens on
//!   127.0.0.2 too (which the certificate does not name: the wrong-hostname
//!   test connects there);
//! * `mutual`: the same certificate, and requires a client certificate
//!   signed by the CA (mutual TLS);
//! * `expired`: presents a certificate signed by the CA that expired on
//!   2025-01-02.
//!
//! The files live in `.services/tls/` (git-ignored), made once and kept
//! while the server certificate has more than a day left:
//! `ca.pem` (the CA), `other-ca.pem` (a CA that signed nothing here: the
//! wrong-CA test), `server.pem`/`server-key.pem`,
//! `expired.pem`/`expired-key.pem` and `client.pem`/`client-key.pem`.
//!
//! The servers want a login: `kombu` with [`PASSWORD`] on RabbitMQ,
//! [`PASSWORD`] on Redis, so that the tests can check that no password
//! reaches a log line (a throwaway password for throwaway servers).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::process;
use crate::services::{services_dir, Member, Role, Service};

/// The password of the TLS servers' login (in their URLs).
pub const PASSWORD: &str = "kombu-tls-pw-7f3a";

/// `{tls}` in a service's URL stands for the certificates' folder.
pub const DIR_PLACEHOLDER: &str = "{tls}";

/// How long one `openssl` call may take.
const OPENSSL_LIMIT: Duration = Duration::from_secs(20);

/// Serializes the making of the certificates: both TLS services start at
/// once, each in a thread of its own.
static MAKING: Mutex<()> = Mutex::new(());

/// What a TLS server presents and asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsServer {
    /// The good certificate; no client certificate needed; also on 127.0.0.2.
    Good,
    /// The good certificate; a client certificate signed by the CA required.
    Mutual,
    /// The expired certificate.
    Expired,
}

impl TlsServer {
    /// The certificate and key it presents, in the certificates' folder.
    fn identity(self, dir: &Path) -> (PathBuf, PathBuf) {
        match self {
            TlsServer::Good | TlsServer::Mutual => {
                (dir.join("server.pem"), dir.join("server-key.pem"))
            }
            TlsServer::Expired => (dir.join("expired.pem"), dir.join("expired-key.pem")),
        }
    }

    /// The addresses it listens on.
    fn addresses(self) -> &'static [&'static str] {
        match self {
            TlsServer::Good => &["127.0.0.1", "127.0.0.2"],
            TlsServer::Mutual | TlsServer::Expired => &["127.0.0.1"],
        }
    }
}

/// The certificates' folder: `.services/tls/`.
pub fn dir(root: &Path) -> PathBuf {
    services_dir(root).join("tls")
}

/// `url` with [`DIR_PLACEHOLDER`] replaced by the certificates' folder.
pub fn expand(root: &Path, url: &str) -> String {
    url.replace(DIR_PLACEHOLDER, &dir(root).display().to_string())
}

/// The variables a TLS service exports besides its URL: the files, and
/// the URLs of its `mutual` and `expired` servers (the CA in the query, no
/// client certificate: the tests add it).
pub fn extra_env(root: &Path, service: &Service) -> Vec<(&'static str, String)> {
    let dir = dir(root);
    let file = |name: &str| dir.join(name).display().to_string();
    let port = |server: TlsServer| {
        service
            .members
            .iter()
            .find(|m| server_of(m) == Some(server))
            .map(|m| m.port)
    };
    let (mutual, expired) = (port(TlsServer::Mutual), port(TlsServer::Expired));
    let with_port = |p: Option<u16>| {
        p.map(|p| {
            expand(root, service.url).replace(
                &format!("127.0.0.1:{}", service.port),
                &format!("127.0.0.1:{p}"),
            )
        })
    };
    let mut vars = vec![
        ("KOMBU_TEST_TLS_CA", file("ca.pem")),
        ("KOMBU_TEST_TLS_OTHER_CA", file("other-ca.pem")),
        ("KOMBU_TEST_TLS_CLIENT_CERT", file("client.pem")),
        ("KOMBU_TEST_TLS_CLIENT_KEY", file("client-key.pem")),
    ];
    let (mutual_var, expired_var) = match service.name {
        "rabbitmq-tls" => ("KOMBU_TEST_AMQPS_MTLS_URL", "KOMBU_TEST_AMQPS_EXPIRED_URL"),
        _ => (
            "KOMBU_TEST_REDISS_MTLS_URL",
            "KOMBU_TEST_REDISS_EXPIRED_URL",
        ),
    };
    if let Some(url) = with_port(mutual) {
        vars.push((mutual_var, url));
    }
    if let Some(url) = with_port(expired) {
        vars.push((expired_var, url));
    }
    vars
}

/// The TLS server a member is, if it is one.
pub fn server_of(member: &Member) -> Option<TlsServer> {
    match member.role {
        Role::RabbitTls { server, .. } | Role::RedisTls { server } => Some(server),
        _ => None,
    }
}

/// The `openssl` configuration: no system defaults, a CA database in the
/// folder, and the extensions of server and client certificates.
const OPENSSL_CONF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = kombu-rs
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ca]
default_ca = kombu
[kombu]
database = index.txt
new_certs_dir = issued
serial = serial
default_md = sha256
policy = any
unique_subject = no
[any]
commonName = supplied
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
";

/// Every file the tests and servers use.
const FILES: &[&str] = &[
    "ca.pem",
    "other-ca.pem",
    "server.pem",
    "server-key.pem",
    "expired.pem",
    "expired-key.pem",
    "client.pem",
    "client-key.pem",
];

/// Whether every certificate file is in `.services/tls/` (a TLS group whose
/// files are gone is not up: its next start makes new ones, and restarts it).
pub fn certificates_present(root: &Path) -> bool {
    let dir = dir(root);
    FILES.iter().all(|f| dir.join(f).exists())
}

/// Make the certificates unless they are there and the server certificate
/// has more than a day left. Made in a scratch folder and moved into
/// place, so a failed run leaves no half set.
pub fn ensure_certificates(root: &Path) -> Result<(), String> {
    let _making = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = dir(root);
    if certificates_present(root) && server_cert_lasts(&dir) {
        return Ok(());
    }
    let scratch = services_dir(root).join("tls.new");
    let result = make_certificates(&scratch).and_then(|()| {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::rename(&scratch, &dir)
    });
    result.map_err(|e| {
        let _ = std::fs::remove_dir_all(&scratch);
        format!("making the TLS certificates in {}: {e}", dir.display())
    })
}

/// Whether `server.pem` is valid for at least another day.
fn server_cert_lasts(dir: &Path) -> bool {
    let mut check = Command::new("openssl");
    check
        .args(["x509", "-noout", "-checkend", "86400", "-in"])
        .arg(dir.join("server.pem"));
    process::run_bounded(&mut check, &dir.join("checkend.log"), OPENSSL_LIMIT).is_ok()
}

fn make_certificates(at: &Path) -> std::io::Result<()> {
    if at.exists() {
        std::fs::remove_dir_all(at)?;
    }
    std::fs::create_dir_all(at.join("issued"))?;
    std::fs::write(at.join("openssl.cnf"), OPENSSL_CONF)?;
    std::fs::write(at.join("index.txt"), "")?;
    std::fs::write(at.join("serial"), "1000\n")?;
    let openssl = |args: &[&str]| -> std::io::Result<()> {
        let mut command = Command::new("openssl");
        command
            .args(args)
            .current_dir(at)
            .env("OPENSSL_CONF", at.join("openssl.cnf"));
        process::run_bounded(&mut command, &at.join("openssl.log"), OPENSSL_LIMIT)
            .map(drop)
            .map_err(|e| std::io::Error::other(format!("openssl (is it installed?): {e}")))
    };
    let p256 = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for (name, cn) in [
        ("ca", "kombu-rs test CA"),
        ("other-ca", "kombu-rs other CA"),
    ] {
        let (key, cert, subj) = (
            format!("{name}-key.pem"),
            format!("{name}.pem"),
            format!("/CN={cn}"),
        );
        let mut args = vec!["req", "-config", "openssl.cnf", "-x509"];
        args.extend(p256);
        args.extend([
            "-keyout", &key, "-out", &cert, "-days", "3650", "-subj", &subj,
        ]);
        args.extend(["-extensions", "ca_ext"]);
        openssl(&args)?;
    }
    for (name, cn, extensions, validity) in [
        ("server", "localhost", "server", ["-days", "3650"]),
        (
            "expired",
            "localhost",
            "server",
            ["-startdate", "20250101000000Z"],
        ),
        (
            "client",
            "kombu-rs test client",
            "client",
            ["-days", "3650"],
        ),
    ] {
        let (key, csr, cert, subj) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("/CN={cn}"),
        );
        let mut args = vec!["req", "-config", "openssl.cnf", "-new"];
        args.extend(p256);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&args)?;
        let mut args = vec![
            "ca",
            "-batch",
            "-notext",
            "-config",
            "openssl.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca-key.pem",
            "-in",
            &csr,
            "-out",
            &cert,
            "-extensions",
            extensions,
        ];
        args.extend(validity);
        if name == "expired" {
            args.extend(["-enddate", "20250102000000Z"]);
        }
        openssl(&args)?;
    }
    {
        use std::os::unix::fs::PermissionsExt as _;
        for key in [
            "ca-key.pem",
            "other-ca-key.pem",
            "server-key.pem",
            "expired-key.pem",
            "client-key.pem",
        ] {
            std::fs::set_permissions(at.join(key), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// `redis-server` arguments for a TLS member on `port` (TLS only: no plain
/// port), data in `data`.
pub fn redis_args(root: &Path, server: TlsServer, port: u16, data: &Path) -> Vec<String> {
    let dir = dir(root);
    let (cert, key) = server.identity(&dir);
    let mut args: Vec<String> = vec![
        "--port".into(),
        "0".into(),
        "--tls-port".into(),
        port.to_string(),
    ];
    args.push("--bind".into());
    args.extend(server.addresses().iter().map(|a| a.to_string()));
    let path = |p: &Path| p.display().to_string();
    args.extend([
        "--tls-cert-file".into(),
        path(&cert),
        "--tls-key-file".into(),
        path(&key),
        "--tls-ca-cert-file".into(),
        path(&dir.join("ca.pem")),
        "--tls-auth-clients".into(),
        if server == TlsServer::Mutual {
            "yes"
        } else {
            "no"
        }
        .into(),
        "--requirepass".into(),
        PASSWORD.into(),
        "--save".into(),
        String::new(),
        "--appendonly".into(),
        "no".into(),
        "--dir".into(),
        path(data),
        "--daemonize".into(),
        "no".into(),
    ]);
    args
}

/// The `rabbitmq.conf` of a TLS node on `port`: TLS listeners only, the
/// server's certificate, and the `kombu` login.
pub fn rabbitmq_conf(root: &Path, server: TlsServer, port: u16) -> String {
    let dir = dir(root);
    let (cert, key) = server.identity(&dir);
    let mut conf = String::from("listeners.tcp = none\n");
    for (n, address) in server.addresses().iter().enumerate() {
        conf.push_str(&format!("listeners.ssl.{} = {address}:{port}\n", n + 1));
    }
    let (verify, require) = match server {
        TlsServer::Mutual => ("verify_peer", "true"),
        TlsServer::Good => ("verify_peer", "false"),
        TlsServer::Expired => ("verify_none", "false"),
    };
    conf.push_str(&format!(
        "ssl_options.cacertfile = {ca}\n\
         ssl_options.certfile = {cert}\n\
         ssl_options.keyfile = {key}\n\
         ssl_options.verify = {verify}\n\
         ssl_options.fail_if_no_peer_cert = {require}\n\
         default_user = kombu\n\
         default_pass = {PASSWORD}\n\
         log.console = true\n\
         log.file = false\n",
        ca = dir.join("ca.pem").display(),
        cert = cert.display(),
        key = key.display(),
    ));
    conf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tls_service_exports_its_files_and_other_servers() {
        let root = Path::new("/r");
        for (name, mutual, expired) in [
            (
                "rabbitmq-tls",
                "KOMBU_TEST_AMQPS_MTLS_URL",
                "KOMBU_TEST_AMQPS_EXPIRED_URL",
            ),
            (
                "redis-tls",
                "KOMBU_TEST_REDISS_MTLS_URL",
                "KOMBU_TEST_REDISS_EXPIRED_URL",
            ),
        ] {
            let service = crate::services::select(&[name.into()]).unwrap()[0];
            let url = expand(root, service.url);
            assert!(
                url.ends_with("?ssl_ca_certs=/r/.services/tls/ca.pem"),
                "{url}"
            );
            let vars = extra_env(root, service);
            let var = |v: &str| {
                vars.iter()
                    .find(|(k, _)| *k == v)
                    .map(|(_, value)| value.clone())
                    .unwrap_or_else(|| panic!("{name}: {v}"))
            };
            let port = |server: TlsServer| {
                service
                    .members
                    .iter()
                    .find(|m| server_of(m) == Some(server))
                    .unwrap()
                    .port
            };
            assert_eq!(
                var(mutual),
                url.replace(
                    &format!(":{}/", service.port),
                    &format!(":{}/", port(TlsServer::Mutual))
                )
            );
            assert!(var(expired).contains(&format!("127.0.0.1:{}/", port(TlsServer::Expired))));
            assert_eq!(
                var("KOMBU_TEST_TLS_CLIENT_KEY"),
                "/r/.services/tls/client-key.pem"
            );
            assert!(!var("KOMBU_TEST_TLS_OTHER_CA").is_empty());
        }
    }

    #[test]
    fn the_good_server_listens_on_an_address_its_certificate_does_not_name() {
        assert!(TlsServer::Good.addresses().contains(&"127.0.0.2"));
        assert!(!OPENSSL_CONF.contains("127.0.0.2"));
        let conf = rabbitmq_conf(Path::new("/r"), TlsServer::Mutual, 5692);
        assert!(conf.contains("listeners.ssl.1 = 127.0.0.1:5692"), "{conf}");
        assert!(conf.contains("fail_if_no_peer_cert = true"), "{conf}");
        let args = redis_args(Path::new("/r"), TlsServer::Expired, 6392, Path::new("/d"));
        assert!(args
            .iter()
            .any(|a| a.ends_with("/r/.services/tls/expired.pem")));
    }
}
