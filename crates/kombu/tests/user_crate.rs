//! A crate outside the workspace builds against `kombu` and runs: it hands
//! a `kombu::Connection` and a pooled connection to the same
//! `fn(&kombu::Connection)` (tests/user-crate/src/main.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Building the user crate reuses the workspace's artifacts (same target
/// dir, same dev profile: cargo holds no lock on it while tests run); this
/// bounds a cold build on a slow machine.
const LIMIT: Duration = Duration::from_secs(420);

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_user_crate_passes_pooled_and_plain_connections_to_one_fn() {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    let work = std::env::temp_dir().join(format!("kombu-user-crate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    copy_dir(&manifest_dir.join("tests/user-crate"), &work);
    let manifest = std::fs::read_to_string(work.join("Cargo.toml.in"))
        .unwrap()
        .replace("@KOMBU@", &manifest_dir.display().to_string());
    std::fs::write(work.join("Cargo.toml"), manifest).unwrap();
    std::fs::copy(root.join("Cargo.lock"), work.join("Cargo.lock")).unwrap();
    let target: PathBuf = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["run", "--quiet", "--offline", "--manifest-path"])
        .arg(work.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cargo runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("building and running the user crate took over {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "the user crate failed: {status}\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], lines[1]);
    assert!(lines[0].starts_with("memory at memory://"), "{out}");
    let _ = std::fs::remove_dir_all(&work);
}
