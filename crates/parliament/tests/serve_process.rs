//! The `parliament` binary as operators run it: `serve` processes driven
//! with a real Redis client, killed with SIGKILL and restarted; start-up
//! errors; and `cluster` never leaving its nodes behind.
//!
//! Every process is started with its standard input a pipe from the test
//! and `--stop-on-stdin-eof`, so it stops even if the test process dies; a
//! guard kills it when the test ends, also on failure.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is its job

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::{Proc, Scratch, ServeCluster, eventually, free_ports, get_all, set_until_ok};

#[test]
fn a_killed_leader_is_replaced_and_every_acknowledged_write_survives() {
    let mut c = ServeCluster::start("kill9");
    let old = c.leader(None);
    let mut acked = Vec::new();
    for n in 0..30 {
        let i = n % 3;
        let key = format!("before-{n}");
        set_until_ok(c.client_ports[i], &key, &format!("v{n}"));
        acked.push(key);
    }

    // SIGKILL the leader; the survivors elect another and keep serving.
    let killed = (old - 1) as usize;
    c.kill9(killed);
    let new = c.leader(Some(old));
    assert_ne!(new, old);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != killed).collect();
    for n in 0..30 {
        let i = survivors[n % 2];
        let key = format!("after-{n}");
        set_until_ok(c.client_ports[i], &key, &format!("v{n}"));
        acked.push(key);
    }

    // The killed node restarts from its log, follows the new leader and
    // serves every acknowledged write.
    c.spawn(killed);
    assert_eq!(c.leader(None), new);
    let expect: Vec<Option<String>> = acked
        .iter()
        .map(|k| Some(format!("v{}", k.rsplit('-').next().unwrap())))
        .collect();
    assert_eq!(get_all(c.client_ports[killed], &acked), expect);

    // Every log line of a node carries its id.
    let log = c.log(killed);
    assert!(log.contains("state rebuilt from the log"), "{log}");
    for line in log
        .lines()
        .filter(|l| l.contains(" INFO ") || l.contains(" WARN "))
    {
        assert!(
            line.contains(&format!("id={old}")),
            "a line without the node id: {line}"
        );
    }

    // Every process killed at once: nothing acknowledged is lost.
    for i in 0..3 {
        c.kill9(i);
    }
    for i in 0..3 {
        c.spawn(i);
    }
    c.leader(None);
    for i in 0..3 {
        assert_eq!(get_all(c.client_ports[i], &acked), expect, "node {}", i + 1);
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

#[test]
fn cluster_moves_off_taken_default_ports_and_names_what_holds_them() {
    let dir = Scratch::new("ports");
    let data = dir.0.join("data").display().to_string();
    // Port 6379 is taken: by this test if it was free, else by whoever
    // holds it (a Redis server, say).
    let _held = TcpListener::bind("127.0.0.1:6379").ok();
    let args: Vec<String> = [
        "cluster", "--nodes", "1", "--dir", &data, "--fsync", "never",
    ]
    .map(String::from)
    .into();
    let mut p = Proc::spawn(&args, &dir.0.join("moved.log"));
    let base: u16 = eventually("the cluster says where it listens", || {
        let log = p.log();
        let line = log.lines().find(|l| l.starts_with("connect:"))?;
        line.rsplit(' ').next()?.parse().ok()
    });
    assert_ne!(base, 6379);
    let log = p.log();
    assert!(
        log.contains("port 6379 (node 1's client port) is taken by"),
        "{log}"
    );
    assert!(log.contains(&format!("using ports from {base}")), "{log}");
    let recorded = std::fs::read_to_string(dir.0.join("data/ports")).unwrap();
    assert_eq!(recorded.trim(), base.to_string());
    eventually("node 1 listens", || accepting(base).then_some(()));
    let pid = p.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(p.wait_exit().success(), "{}", p.log());

    // A base given with --port that is taken: an error that names the
    // port, what it is for, and what holds it.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let other = dir.0.join("other").display().to_string();
    let args: Vec<String> = [
        "cluster",
        "--nodes",
        "1",
        "--dir",
        &other,
        "--port",
        &port.to_string(),
    ]
    .map(String::from)
    .into();
    let mut p = Proc::spawn(&args, &dir.0.join("taken.log"));
    assert!(!p.wait_exit().success());
    let log = p.log();
    assert!(
        log.contains(&format!("port {port} (node 1's client port) is taken by")),
        "{log}"
    );
    assert!(log.contains("--port"), "{log}");
}

#[test]
fn a_node_with_a_damaged_log_stops_and_rejoins_with_the_flag() {
    let mut c = ServeCluster::start("damaged");
    c.leader(None);
    let keys: Vec<String> = (0..40).map(|n| format!("k{n}")).collect();
    for (n, key) in keys.iter().enumerate() {
        set_until_ok(c.client_ports[n % 3], key, &format!("v{n}"));
    }
    // Damage an early record of a follower's log: a flipped bit in acknowledged
    // data, not a torn tail.
    let leader = c.leader(None);
    let victim = (1..=3).find(|&id| id != leader).unwrap() as usize - 1;
    c.kill9(victim);
    let wal = c.dir.0.join(format!("node-{}/wal", victim + 1));
    let segment = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[12] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();

    // Without the flag: it refuses to start, and says where and what to do.
    c.spawn(victim);
    let status = c.procs[victim].as_mut().unwrap().wait_exit();
    assert!(!status.success());
    let log = c.log(victim);
    assert!(log.contains("damaged at"), "{log}");
    assert!(log.contains("--rejoin"), "{log}");

    // With it: the damaged log goes aside, and the node re-learns everything.
    c.args[victim].push("--rejoin".into());
    c.spawn(victim);
    let expect: Vec<Option<String>> = (0..40).map(|n| Some(format!("v{n}"))).collect();
    assert_eq!(get_all(c.client_ports[victim], &keys), expect);
    let node_dir = c.dir.0.join(format!("node-{}", victim + 1));
    let aside: Vec<String> = std::fs::read_dir(&node_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("wal.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged log is kept aside");
    // It votes again once the rejoin completes.
    eventually("the rejoined node is a follower again", || {
        let s = c.status(victim)?;
        (s.role == "follower").then_some(())
    });
}
