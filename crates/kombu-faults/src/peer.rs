//! Peer processes (the `fault-peer` binary) as guarded children, and the
//! line log they write.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// An append-only line log, written unbuffered (one `write` per line) so a
/// SIGKILL loses at most the line being written.
#[derive(Debug)]
pub struct LineLog {
    file: File,
}

impl LineLog {
    /// Open `path` for appending (created when missing).
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(LineLog {
            file: OpenOptions::new().create(true).append(true).open(path)?,
        })
    }

    /// Append one line (a newline is added).
    pub fn line(&mut self, text: &str) -> io::Result<()> {
        self.file.write_all(format!("{text}\n").as_bytes())
    }
}

/// How many complete lines of `path` start with `verb ` (0 when missing).
pub fn count_lines(path: &Path, verb: &str) -> usize {
    let prefix = format!("{verb} ");
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter(|l| l.starts_with(&prefix)).count())
        .unwrap_or(0)
}

/// A running `fault-peer`; dropping it SIGKILLs it.
#[derive(Debug)]
pub struct Peer {
    name: String,
    child: Option<Child>,
    stderr: PathBuf,
}

impl Peer {
    /// Spawn `exe` with `args`, its stdout and stderr going to
    /// `<dir>/<name>.err`.
    pub fn spawn(exe: &str, name: &str, dir: &Path, args: &[String]) -> io::Result<Self> {
        let stderr = dir.join(format!("{name}.err"));
        let out = OpenOptions::new().create(true).append(true).open(&stderr)?;
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Peer {
            name: name.into(),
            child: Some(child),
            stderr,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What it wrote to stdout and stderr.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Wait up to `limit` for it to exit; `None` if it is still running.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL it and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}
