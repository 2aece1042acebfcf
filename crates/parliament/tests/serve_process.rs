//! The `parliament` binary as operators run it: `serve` processes killed
//! with SIGKILL and restarted, start-up errors, and `cluster` never leaving
//! its nodes behind.
//!
//! Every process is started with its standard input a pipe from the test
//! and `--stop-on-stdin-eof`, so it stops even if the test process dies; a
//! guard kills it when the test ends, also on failure.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is its job

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_parliament");
const PATIENCE: Duration = Duration::from_secs(30);

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
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
struct Proc {
    child: Child,
    _stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Proc {
    fn spawn(args: &[String], log: &Path) -> Proc {
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit on its own.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
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

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `n` ports free right now (the OS picks them).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The leader ids a node's log announced, in order.
fn leaders_announced(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("leader elected"))
        .filter_map(|l| {
            let rest = l.split("leader=").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

struct ServeCluster {
    procs: Vec<Option<Proc>>,
    args: Vec<Vec<String>>,
    dir: Scratch,
}

impl ServeCluster {
    fn start(name: &str) -> ServeCluster {
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
        let mut cluster = ServeCluster {
            procs: Vec::new(),
            args,
            dir,
        };
        for i in 0..3 {
            let p = cluster.spawn(i, 0);
            cluster.procs.push(Some(p));
        }
        cluster
    }

    fn spawn(&self, i: usize, generation: u32) -> Proc {
        let log = self.dir.0.join(format!("node-{}.{generation}.log", i + 1));
        Proc::spawn(&self.args[i], &log)
    }

    fn log(&self, i: usize) -> String {
        self.procs[i].as_ref().map(Proc::log).unwrap_or_default()
    }

    /// The leader the running nodes' logs last announced, once they agree.
    fn agreed_leader(&self, except: Option<u64>) -> u64 {
        eventually("the nodes announce the same leader", || {
            let last: Vec<Option<u64>> = (0..3)
                .filter(|&i| self.procs[i].is_some())
                .map(|i| leaders_announced(&self.log(i)).last().copied())
                .collect();
            let first = last.first().copied().flatten()?;
            (last.iter().all(|l| *l == Some(first)) && Some(first) != except).then_some(first)
        })
    }
}

#[test]
fn a_killed_leader_is_replaced_and_rejoins_with_its_log() {
    let mut c = ServeCluster::start("kill9");
    let old = c.agreed_leader(None);
    let i = (old - 1) as usize;
    if let Some(mut p) = c.procs[i].take() {
        p.kill9();
    }
    let new = c.agreed_leader(Some(old));
    assert_ne!(new, old);

    // The killed node comes back, replays its log (at least the first
    // leader's no-op was chosen and durable there) and follows the new leader.
    let p = c.spawn(i, 1);
    c.procs[i] = Some(p);
    eventually("the restarted node follows the new leader", || {
        let log = c.log(i);
        let rebuilt = log
            .lines()
            .find(|l| l.contains("state rebuilt from the log"))?
            .split("applied=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()?;
        let follows = leaders_announced(&log).last() == Some(&new);
        (rebuilt >= 1 && follows).then_some(())
    });
    // The survivors did not change leader when it came back.
    assert_eq!(c.agreed_leader(None), new);
    // Every log line of a node carries its id.
    let log = c.log(i);
    let node_lines = log
        .lines()
        .filter(|l| l.contains(" INFO ") || l.contains(" WARN "));
    for line in node_lines {
        assert!(
            line.contains(&format!("id={old}")),
            "line without the node id: {line}"
        );
    }
}

#[test]
fn start_up_errors_are_one_clear_line_and_a_failure_exit() {
    let dir = Scratch::new("errors");
    let ports = free_ports(3);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let base = |id: u64, data: &str, client: u16| -> Vec<String> {
        vec![
            "serve".into(),
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            dir.0.join(data).display().to_string(),
            "--client-addr".into(),
            format!("127.0.0.1:{client}"),
            "--http-addr".into(),
            format!("127.0.0.1:{}", ports[1]),
            "--members".into(),
            format!("1=127.0.0.1:{},2=127.0.0.1:{}", ports[2], ports[2]),
        ]
    };
    let run = |args: Vec<String>, name: &str| -> (std::process::ExitStatus, String) {
        let mut p = Proc::spawn(&args, &dir.0.join(name));
        let status = p.wait_exit();
        (status, p.log())
    };

    let (status, log) = run(base(1, "a", taken_port), "port.log");
    assert!(!status.success());
    assert!(
        log.contains(&format!(
            "error: cannot bind the client address 127.0.0.1:{taken_port}"
        )),
        "{log}"
    );

    // Node 1 takes a directory; node 2 may not use it.
    std::fs::create_dir_all(dir.0.join("owned")).unwrap();
    std::fs::write(dir.0.join("owned/node-id"), "1\n").unwrap();
    let (status, log) = run(base(2, "owned", ports[0]), "owner.log");
    assert!(!status.success());
    assert!(log.contains("belongs to node 1, not node 2"), "{log}");

    // An unreadable data directory: a file where the directory should be.
    std::fs::write(dir.0.join("file"), "not a directory").unwrap();
    let (status, log) = run(base(1, "file", ports[0]), "file.log");
    assert!(!status.success());
    assert!(log.contains("error: cannot start node 1"), "{log}");

    let mut bad = base(1, "b", ports[0]);
    bad[10] = "1=nowhere".into();
    let (status, log) = run(bad, "members.log");
    assert!(!status.success());
    assert!(log.contains("expected ID=HOST:PORT"), "{log}");
    drop(taken);
}

/// A base port with `nodes` free ports at it, 1000 above and 2000 above.
fn free_cluster_base(nodes: u16) -> u16 {
    let mut candidate = 20_000 + (std::process::id() % 5_000) as u16 * 2;
    loop {
        let all_free = (0..nodes).all(|i| {
            [0, 1000, 2000]
                .iter()
                .all(|off| TcpListener::bind(("127.0.0.1", candidate + off + i)).is_ok())
        });
        if all_free {
            return candidate;
        }
        candidate += 7;
        assert!(candidate < 30_000, "no free ports");
    }
}

fn accepting(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn cluster_nodes_never_outlive_the_cluster_process() {
    let dir = Scratch::new("cluster");
    let base = free_cluster_base(2);
    let args: Vec<String> = vec![
        "cluster".into(),
        "--nodes".into(),
        "2".into(),
        "--dir".into(),
        dir.0.join("data").display().to_string(),
        "--port".into(),
        base.to_string(),
        "--fsync".into(),
        "never".into(),
    ];
    let peers = [base + 1000, base + 1001];

    // Killed with SIGKILL: the nodes see their standard input close and stop.
    let mut p = Proc::spawn(&args, &dir.0.join("first.log"));
    eventually("both nodes listen", || {
        peers.iter().all(|&port| accepting(port)).then_some(())
    });
    let printed = p.log();
    assert!(
        printed.contains(&format!("redis-cli -p {base}")),
        "{printed}"
    );
    p.kill9();
    eventually("the nodes are gone", || {
        peers.iter().all(|&port| !accepting(port)).then_some(())
    });

    // Again on the same data, stopped with SIGTERM: a clean exit, and the
    // nodes found their logs.
    let mut p = Proc::spawn(&args, &dir.0.join("second.log"));
    eventually("both nodes listen again", || {
        let log = p.log();
        let rebuilt = log
            .lines()
            .filter(|l| l.contains("state rebuilt from the log"))
            .count();
        (rebuilt == 2 && peers.iter().all(|&port| accepting(port))).then_some(())
    });
    let pid = p.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = p.wait_exit();
    assert!(status.success(), "{status}: {}", p.log());
    assert!(
        peers.iter().all(|&port| !accepting(port)),
        "a node outlived the cluster"
    );
    assert!(!p.log().contains("exited unexpectedly"), "{}", p.log());
}
