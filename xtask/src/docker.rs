//! The Docker path: when a Docker engine answers, `services up` runs the
//! official images from `docker-compose.yml` instead of the native recipes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::services::Service;
use crate::state::State;
use crate::Result;

/// How long `docker info` may take before we decide there is no engine.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `docker info` exits 0 within a few seconds (a client with no
/// engine behind it fails or hangs).
pub fn engine_answers() -> bool {
    let Ok(mut child) = Command::new("docker")
        .arg("info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// A `docker compose` command on the workspace's compose file.
fn compose(root: &Path) -> Command {
    let mut command = Command::new("docker");
    command
        .arg("compose")
        .arg("--file")
        .arg(root.join("docker-compose.yml"))
        .current_dir(root)
        .stdin(Stdio::null());
    command
}

/// `docker compose up -d --wait NAME...`, then record each as Docker-started.
pub fn compose_up(root: &Path, services: &[&'static Service]) -> Result<()> {
    let names: Vec<&str> = services.iter().map(|s| s.name).collect();
    println!("starting    {} with docker compose ...", names.join(" "));
    let started = Instant::now();
    // Compose's progress goes to stderr; keep stdout for our own lines.
    let status = compose(root)
        .args(["up", "--detach", "--wait"])
        .args(&names)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("could not run docker compose: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`docker compose up --detach --wait {}` failed ({status}); see `docker compose logs`",
            names.join(" ")
        )
        .into());
    }
    for service in services {
        State::docker(root, service).save_as(root, service.name)?;
        println!(
            "{:<10} started on 127.0.0.1:{} (docker compose, {:.1} s)",
            service.name,
            service.port,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `docker compose rm --stop --force NAME...` for services we started.
pub fn compose_down(root: &Path, services: &[&'static Service]) -> Result<()> {
    let names: Vec<&str> = services.iter().map(|s| s.name).collect();
    let status = compose(root)
        .args(["rm", "--stop", "--force"])
        .args(&names)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("could not run docker compose: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`docker compose rm --stop --force` failed ({status})").into())
    }
}
