//! Installing the native stand-ins: Debian packages with `apt-get`, Python
//! servers in venvs and pouchdb-server with `npm`, all under `.services/`.
//!
//! Debian packages go in with one `apt-get update` and one `apt-get install`;
//! the venv and npm installs then run in parallel, each logging to
//! `.services/<name>-install.log`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::process::tail;
use crate::services::{services_dir, Service};
use crate::Result;

/// Where a service's native server comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// A Debian package providing `binary`.
    Apt {
        /// The package name.
        package: &'static str,
        /// An absolute path the package installs; present means installed.
        binary: &'static str,
    },
    /// A Python package installed with pip into `.services/<dir>`.
    PythonVenv {
        /// The venv folder under `.services/`.
        dir: &'static str,
        /// The pip requirement, pinned.
        requirement: &'static str,
    },
    /// An npm package installed (without install scripts) in `.services/<dir>`.
    Npm {
        /// The project folder under `.services/`.
        dir: &'static str,
        /// The npm package spec, pinned.
        package: &'static str,
    },
}

/// The file recording that a venv or npm install finished, and what it installed.
const MARKER: &str = ".kombu-installed";

impl Install {
    /// Whether this is already installed (venv/npm: installed *this* version).
    pub fn is_installed(&self, root: &Path) -> bool {
        match *self {
            Install::Apt { binary, .. } => Path::new(binary).exists(),
            Install::PythonVenv {
                dir,
                requirement: spec,
            }
            | Install::Npm { dir, package: spec } => {
                let marker = services_dir(root).join(dir).join(MARKER);
                std::fs::read_to_string(marker).is_ok_and(|m| m.trim() == spec)
            }
        }
    }
}

/// Install whatever the given services are missing.
pub fn ensure_installed(root: &Path, services: &[&'static Service]) -> Result<()> {
    let missing: Vec<_> = services
        .iter()
        .copied()
        .filter(|s| !s.install.is_installed(root))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }

    let mut apt_packages: Vec<&str> = Vec::new();
    for service in &missing {
        match service.install {
            Install::Apt { package, .. } => apt_packages.push(package),
            Install::PythonVenv { .. } if !python_venv_works() => apt_packages.push("python3-venv"),
            Install::Npm { .. } if !on_path("npm") => apt_packages.push("npm"),
            _ => {}
        }
    }
    apt_packages.sort_unstable();
    apt_packages.dedup();
    if !apt_packages.is_empty() {
        apt_install(root, &apt_packages)?;
    }

    let others: Vec<_> = missing
        .iter()
        .filter(|s| !matches!(s.install, Install::Apt { .. }))
        .collect();
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = others
            .iter()
            .map(|service| scope.spawn(|| install_one(root, service)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("installer panicked".into()))
            })
            .collect()
    });
    let errors: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n").into())
    }
}

/// `apt-get update` once, then `apt-get install -y` every package.
fn apt_install(root: &Path, packages: &[&str]) -> Result<()> {
    let log = services_dir(root).join("apt-install.log");
    let started = Instant::now();
    println!("installing  {} (apt-get) ...", packages.join(" "));
    run_logged(Command::new("apt-get").arg("update"), &log, false)?;
    run_logged(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &log,
        true,
    )?;
    println!(
        "installed   {} in {:.1} s",
        packages.join(" "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Install one venv or npm service.
fn install_one(root: &Path, service: &Service) -> Result<()> {
    let log = services_dir(root).join(format!("{}-install.log", service.name));
    let started = Instant::now();
    let (dir, spec) = match service.install {
        Install::PythonVenv { dir, requirement } => {
            let venv = services_dir(root).join(dir);
            println!("installing  {requirement} (pip, venv .services/{dir}) ...");
            run_logged(
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
                &log,
                false,
            )?;
            run_logged(
                Command::new(venv.join("bin/pip")).args([
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    requirement,
                ]),
                &log,
                true,
            )?;
            (venv, requirement)
        }
        Install::Npm { dir, package } => {
            let project = services_dir(root).join(dir);
            println!("installing  {package} (npm, .services/{dir}) ...");
            std::fs::create_dir_all(&project)?;
            if !project.join("package.json").exists() {
                run_logged(
                    Command::new("npm")
                        .args(["init", "-y"])
                        .current_dir(&project),
                    &log,
                    false,
                )?;
            }
            run_logged(
                Command::new("npm")
                    .args([
                        "install",
                        "--no-audit",
                        "--no-fund",
                        "--ignore-scripts",
                        package,
                    ])
                    .current_dir(&project),
                &log,
                true,
            )?;
            (project, package)
        }
        Install::Apt { .. } => return Ok(()),
    };
    std::fs::write(dir.join(MARKER), format!("{spec}\n"))?;
    println!(
        "installed   {spec} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Run a command with stdin null and stdout+stderr appended to `log`; on
/// failure, the error quotes the log's last lines.
pub fn run_logged(command: &mut Command, log: &Path, append: bool) -> Result<()> {
    let file = File::options()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(log)?;
    let status = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .map_err(|e| format!("could not run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed ({status}); last lines of {}:\n{}",
            log.display(),
            tail(log, 20)
        )
        .into())
    }
}

/// Whether `python3 -m venv` can create a venv with pip (Debian needs
/// `python3-venv` for `ensurepip`).
fn python_venv_works() -> bool {
    Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `program` is an executable file in some `PATH` folder.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir: PathBuf| dir.join(program).is_file())
    })
}
