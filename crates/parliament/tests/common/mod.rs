//! What the process-level tests share: scratch directories, child
//! processes that die with the test, polling, free ports, and a cluster of
//! `parliament serve` processes driven over loopback; in [`workload`], the
//! clients that record a history to check for linearizability.
//!
//! Each test crate uses a different part of it.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // a test fails loudly, which is its job

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use node::api::StatusReport;
use node::http::client::fetch_status;
use redis::Commands;

pub mod workload;

pub const BIN: &str = env!("CARGO_BIN_EXE_parliament");
pub const PATIENCE: Duration = Duration::from_secs(30);
/// How long a client tool run by [`run`] may take: generous, so a loaded
/// 2-core machine does not fail the tests.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(120);

/// Copies directory `from` to `to`, as a copy of a stopped node's data
/// directory would.
pub fn copy_dir(from: &Path, to: &Path) {
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

pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("parliament-proc-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process with its output in a file; killed on drop.
pub struct Proc {
    pub child: Child,
    _stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(args: &[String], log: &Path) -> Proc {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        Proc {
            child,
            _stdin: stdin,
            log: log.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `n` ports free right now, below the range the OS hands out for port 0
/// (so that tests binding port 0 meanwhile cannot take them), starting at
/// a place that differs between test processes.
pub fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let spread = u64::from(std::process::id()) * 97 + NEXT.fetch_add(1, Ordering::Relaxed) * 31;
    let mut port = 10_000 + (spread % 9_000) as u16;
    let mut held = Vec::new();
    while held.len() < n {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
        port = if port >= 19_999 { 10_000 } else { port + 1 };
    }
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub struct ServeCluster {
    pub procs: Vec<Option<Proc>>,
    pub args: Vec<Vec<String>>,
    pub client_ports: Vec<u16>,
    pub http_ports: Vec<u16>,
    pub generation: u32,
    pub dir: Scratch,
}

impl ServeCluster {
    pub fn start(name: &str) -> ServeCluster {
        let mut cluster = ServeCluster::prepare(name);
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster
    }

    /// A cluster of three on free ports, none of them started yet.
    pub fn prepare(name: &str) -> ServeCluster {
        let dir = Scratch::new(name);
        let ports = free_ports(9);
        let members: Vec<String> = (0..3)
            .map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[3 + i]))
            .collect();
        let members = members.join(",");
        let args: Vec<Vec<String>> = (0..3)
            .map(|i| {
                vec![
                    "serve".into(),
                    "--id".into(),
                    (i + 1).to_string(),
                    "--data-dir".into(),
                    dir.0.join(format!("node-{}", i + 1)).display().to_string(),
                    "--client-addr".into(),
                    format!("127.0.0.1:{}", ports[i]),
                    "--http-addr".into(),
                    format!("127.0.0.1:{}", ports[6 + i]),
                    "--members".into(),
                    members.clone(),
                    "--stop-on-stdin-eof".into(),
                ]
            })
            .collect();
        ServeCluster {
            procs: (0..3).map(|_| None).collect(),
            args,
            client_ports: ports[0..3].to_vec(),
            http_ports: ports[6..9].to_vec(),
            generation: 0,
            dir,
        }
    }

    /// The value of `flag` in node `i + 1`'s arguments.
    pub fn arg(&self, i: usize, flag: &str) -> String {
        let args = &self.args[i];
        let at = args
            .iter()
            .position(|a| a == flag)
            .expect("the flag is given");
        args[at + 1].clone()
    }

    /// Starts node `i + 1` (again), logging to a fresh file.
    pub fn spawn(&mut self, i: usize) {
        self.generation += 1;
        let log = self
            .dir
            .0
            .join(format!("node-{}.{}.log", i + 1, self.generation));
        self.procs[i] = Some(Proc::spawn(&self.args[i], &log));
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            p.kill9();
        }
    }

    pub fn log(&self, i: usize) -> String {
        self.procs[i].as_ref().map(Proc::log).unwrap_or_default()
    }

    pub fn status(&self, i: usize) -> Option<StatusReport> {
        let addr = format!("127.0.0.1:{}", self.http_ports[i]);
        fetch_status(&addr, Duration::from_secs(2)).ok()
    }

    /// The leader every running node's HTTP status names, once they agree.
    pub fn leader(&self, not: Option<u64>) -> u64 {
        eventually("the running nodes agree on a leader", || {
            let mut leaders = (0..3)
                .filter(|&i| self.procs[i].is_some())
                .map(|i| self.status(i).and_then(|s| s.leader_id));
            let first = leaders.next()??;
            let agreed = leaders.all(|l| l == Some(first));
            (agreed && Some(first) != not && self.procs[(first - 1) as usize].is_some())
                .then_some(first)
        })
    }
}

/// `SET key value` on node `port`, retried (on a new connection) while the
/// cluster cannot take it. SET is idempotent, so a retry after an uncertain
/// answer is harmless.
pub fn set_until_ok(port: u16, key: &str, value: &str) {
    eventually(&format!("SET {key} is acknowledged by :{port}"), || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .ok()?;
        con.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
        let reply: redis::RedisResult<()> = con.set(key, value);
        reply.ok()
    });
}

/// Linearizable `GET`s of `keys` from node `port`, retried while it cannot
/// answer.
pub fn get_all(port: u16, keys: &[String]) -> Vec<Option<String>> {
    eventually(&format!("node :{port} answers reads"), || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .ok()?;
        con.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
        keys.iter()
            .map(|k| con.get::<_, Option<String>>(k).ok())
            .collect::<Option<Vec<_>>>()
    })
}

/// The path of a redis-tools program; fails the test when it is missing.
pub fn tool(name: &str) -> &str {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "{name} is not installed: install Debian's redis-tools (apt-get install -y redis-tools)"
    );
    name
}

/// Kills the child if the test ends before it does.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs a program with `input` on stdin; returns its exit success, stdout
/// and stderr. Fails the test if it runs longer than a generous timeout.
pub fn run(program: &str, args: &[&str], input: &str) -> (bool, String, String) {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    if let Some(mut stdin) = child.0.stdin.take() {
        stdin.write_all(input.as_bytes()).unwrap();
    }
    // Drain the pipes on threads so a chatty child cannot block on them.
    let mut stdout = child.0.stdout.take().unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).map(|_| text)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < PROCESS_TIMEOUT,
            "{program} {args:?} did not finish in {PROCESS_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap().unwrap();
    let err = err.join().unwrap().unwrap();
    (status.success(), out, err)
}

/// The `/status` of the node serving HTTP on `http_port`, if it answers.
pub fn node_status(http_port: u16) -> Option<StatusReport> {
    fetch_status(&format!("127.0.0.1:{http_port}"), Duration::from_secs(2)).ok()
}
