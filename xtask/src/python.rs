//! The Python kombu peer for interop tests: a venv under `.services/pykombu`
//! with kombu 5.7 and the clients and codecs it needs, pinned.
//!
//! `cargo xtask test` makes sure it exists and exports its interpreter as
//! `KOMBU_TEST_PYTHON`; interop tests run Python snippets with it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::install::run_logged;
use crate::services::services_dir;
use crate::Result;

/// The variable interop tests read the interpreter from.
pub const ENV_VAR: &str = "KOMBU_TEST_PYTHON";

/// What goes in the venv (kombu 5.7 with py-amqp and redis-py, the
/// serializers and every compression kombu 5.7 can use on Python 3.11).
pub const REQUIREMENTS: &[&str] = &[
    "kombu==5.7.0",
    "celery==5.7.0",
    "amqp==5.4.2",
    "redis==8.1.0",
    // kombu 5.7's redis transport imports it; redis-py 8 no longer pulls it in.
    "packaging==26.4",
    "msgpack==1.2.4",
    "PyYAML==6.0.3",
    "brotli==1.2.1",
    "backports.zstd==1.8.0",
    // kombu's SQS transport: boto3, and pycurl (a manylinux wheel: no
    // compiler or libcurl headers needed) for kombu.asynchronous.http.
    "boto3==1.44.8",
    "pycurl==7.49.0",
    "urllib3==2.8.0",
    // kombu's MongoDB transport.
    "pymongo==4.20.0",
];

const MARKER: &str = ".kombu-installed";

/// The venv's folder.
pub fn venv_dir(root: &Path) -> PathBuf {
    services_dir(root).join("pykombu")
}

/// The venv's interpreter, installing the venv first when it is missing
/// or holds other versions.
pub fn ensure(root: &Path) -> Result<PathBuf> {
    let venv = venv_dir(root);
    let python = venv.join("bin/python");
    let wanted = REQUIREMENTS.join(" ");
    let marker = venv.join(MARKER);
    if python.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == wanted) {
        return Ok(python);
    }
    std::fs::create_dir_all(services_dir(root))?;
    let log = services_dir(root).join("pykombu-install.log");
    let started = Instant::now();
    println!("installing  Python peer: {wanted} (pip, venv .services/pykombu) ...");
    run_logged(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        &log,
        false,
    )?;
    run_logged(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(REQUIREMENTS),
        &log,
        true,
    )?;
    std::fs::write(&marker, format!("{wanted}\n"))?;
    println!(
        "installed   Python peer in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(python)
}
