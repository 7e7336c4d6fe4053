//! [`Server`]: a `uminfer serve --grpc --http` child process for tests that
//! talk to it over the network.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Longest the server may take to load its model and listen.
const START_DEADLINE: Duration = Duration::from_secs(120);

/// A `uminfer serve --grpc 127.0.0.1:0 --http 127.0.0.1:0` child; killed on drop.
pub struct Server {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts the server serving `tiny` with `args`, under a descriptor limit of `nofile`.
    pub fn start(tag: &str, nofile: u64, args: &[&str]) -> Self {
        Self::start_on(tag, "127.0.0.1", nofile, args)
    }

    /// [`start`](Self::start) listening on `ip` (port 0).
    pub fn start_on(tag: &str, ip: &str, nofile: u64, args: &[&str]) -> Self {
        let (grpc, http) = (format!("{ip}:0"), format!("{ip}:0"));
        let log = std::env::temp_dir().join(format!("uminfer-serve-{tag}-{}.log", std::process::id()));
        let tiny = format!("tiny={}", super::model_path("tiny.pt").display());
        let mut cmd = Command::new(super::uminfer_bin());
        cmd.args(["serve", "--grpc", &grpc, "--http", &http, "--model", &tiny])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("creating the server log file"));
        // SAFETY: setrlimit(2) is async-signal-safe and touches only the child's limits.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let mut child = cmd.spawn().expect("starting `uminfer serve --grpc`");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line.ok().and_then(|l| tx.send(l).ok()).is_none() {
                    return;
                }
            }
        });
        let mut addr = |key: &str| {
            let line = rx.recv_timeout(START_DEADLINE).unwrap_or_default();
            match line.strip_prefix(key).and_then(|r| r.strip_prefix('=')).and_then(|a| a.parse().ok()) {
                Some(a) => a,
                None => {
                    let _ = child.kill();
                    panic!("the server did not report its {key} address (stdout {line:?}); log:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
                }
            }
        };
        let (grpc, http) = (addr("grpc"), addr("http"));
        Self { child, grpc, http, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn assert_running(&mut self) {
        assert!(matches!(self.child.try_wait(), Ok(None)), "the server died:\n{}", self.log());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
