//! A running `rehost disk serve` for the NBD tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::REHOST;

/// A running `rehost disk serve`.
pub struct Served {
    child: Option<Child>,
    pub uri: String,
}

impl Served {
    pub fn start(args: &[&dyn AsRef<std::ffi::OsStr>], idle_ms: Option<u64>) -> Served {
        let mut cmd = Command::new(REHOST);
        cmd.args(["disk", "serve"]);
        for a in args {
            cmd.arg(a);
        }
        if let Some(ms) = idle_ms {
            cmd.env("REHOST_NBD_IDLE_TIMEOUT_MS", ms.to_string());
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let uri = line.trim().to_owned();
        assert!(uri.starts_with("nbd"), "no URI printed: {line:?}");
        Served {
            child: Some(child),
            uri,
        }
    }

    /// Serves `img` on `dir/nbd.sock` with `extra` options.
    pub fn unix(dir: &Path, extra: &[&str], img: &Path, idle_ms: Option<u64>) -> Served {
        let addr = format!("unix:{}", dir.join("nbd.sock").display());
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--nbd", &addr];
        for e in extra {
            args.push(e);
        }
        args.push(&img);
        Served::start(&args, idle_ms)
    }

    pub fn socket(&self) -> PathBuf {
        PathBuf::from(self.uri.split("socket=").nth(1).unwrap())
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGTERM; rehost must flush and exit 0.
    pub fn stop(mut self) {
        let mut c = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = c.wait().unwrap();
        assert_eq!(status.code(), Some(0), "rehost disk serve: {status}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
