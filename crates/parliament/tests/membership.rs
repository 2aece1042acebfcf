//! Online membership changes with real `parliament serve` processes: a
//! cluster grows from three to five voters under `redis-benchmark`, a dead
//! node is replaced by a new id at a new address, the leader is removed and
//! hands over, a rolling restart with leadership transfers loses no write,
//! and a history recorded while the membership changes is linearizable.
//!
//! New nodes are started with `serve --join` and added with `PAXOS MEMBER
//! ADD` (or the `parliament member` command line). Every process is a
//! [`Proc`], killed when the test ends, also on failure; a failing test
//! prints the end of every node's log.
//!
//! The tests of this file take a lock and run one at a time: each starts
//! three to five nodes that fsync every write, and on a small machine
//! several clusters at once would make elections and catch-up slow enough
//! to blur what is tested.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is its job

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::workload::{Reconnect, Workload, assert_linearizable, text};
use common::{BIN, Proc, ServeCluster, eventually, free_ports, get_all, run, set_until_ok, tool};
use node::api::StatusReport;
use node::http::client::fetch_status;

/// One test of this file at a time (see the module comment).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Prints the end of every log in a directory if the test fails, before
/// the directory goes.
struct LogsOnFailure(PathBuf);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("===== {} =====\n{}", log.display(), tail.join("\n"));
        }
    }
}

/// Where a node is reached.
#[derive(Clone, Copy, Debug)]
struct At {
    id: u64,
    client: u16,
    http: u16,
}

/// The founding nodes of `c`.
fn founders(c: &ServeCluster) -> Vec<At> {
    (0..3)
        .map(|i| At {
            id: i as u64 + 1,
            client: c.client_ports[i],
            http: c.http_ports[i],
        })
        .collect()
}

/// The founders' peer ports, from the `--members` flag they were given.
fn peer_ports(c: &ServeCluster) -> Vec<u16> {
    let args = &c.args[0];
    let at = args.iter().position(|a| a == "--members").unwrap();
    args[at + 1]
        .split(',')
        .map(|entry| entry.rsplit_once(':').unwrap().1.parse().unwrap())
        .collect()
}

/// A node started with `serve --join`, at ports of its own.
struct Joiner {
    at: At,
    peer: u16,
    args: Vec<String>,
    log: PathBuf,
    proc: Proc,
    starts: u32,
}

impl Joiner {
    /// Starts node `id` with its data in `c`'s directory, asking every
    /// founder for the membership.
    fn start(c: &ServeCluster, id: u64) -> Joiner {
        let ports = free_ports(3);
        let seeds: Vec<String> = peer_ports(c)
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let args: Vec<String> = vec![
            "serve".into(),
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            c.dir.0.join(format!("joiner-{id}")).display().to_string(),
            "--client-addr".into(),
            format!("127.0.0.1:{}", ports[0]),
            "--peer-addr".into(),
            format!("127.0.0.1:{}", ports[1]),
            "--http-addr".into(),
            format!("127.0.0.1:{}", ports[2]),
            "--join".into(),
            seeds.join(","),
            "--stop-on-stdin-eof".into(),
        ];
        let log = c.dir.0.join(format!("node-{id}.joiner.log"));
        let proc = Proc::spawn(&args, &log);
        Joiner {
            at: At {
                id,
                client: ports[0],
                http: ports[2],
            },
            peer: ports[1],
            args,
            log,
            proc,
            starts: 1,
        }
    }

    /// Kills the process (SIGKILL) and starts it again with the same
    /// flags, from its data directory.
    fn restart(&mut self) {
        self.proc.kill9();
        self.starts += 1;
        let log = self.log.with_extension(format!("{}.log", self.starts));
        self.proc = Proc::spawn(&self.args, &log);
    }

    fn peer_addr(&self) -> String {
        format!("127.0.0.1:{}", self.peer)
    }

    fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.at.client)
    }

    /// `PAXOS MEMBER ADD` arguments for this node.
    fn add(&self, learner: bool) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "PAXOS".into(),
            "MEMBER".into(),
            "ADD".into(),
            self.at.id.to_string(),
            self.peer_addr(),
            self.client_addr(),
        ];
        if learner {
            args.push("LEARNER".into());
        }
        args
    }
}

/// How a request failed.
#[derive(Debug)]
enum Failure {
    /// An error reply, as `CODE detail`.
    Reply(String),
    /// No answer: the connection could not be made, broke or timed out.
    Lost(String),
}

fn failure(e: &redis::RedisError) -> Failure {
    match e.code() {
        Some(code) => Failure::Reply(format!("{code} {}", e.detail().unwrap_or_default())),
        None => Failure::Lost(e.to_string()),
    }
}

fn connect(port: u16) -> Result<redis::Connection, Failure> {
    let lost = |e: redis::RedisError| Failure::Lost(e.to_string());
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(lost)?;
    let con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .map_err(lost)?;
    // Longer than the node's own wait for a change to be chosen.
    con.set_read_timeout(Some(Duration::from_secs(45)))
        .map_err(lost)?;
    Ok(con)
}

/// One command on a fresh connection to `port`.
fn call<S: AsRef<str>>(port: u16, args: &[S]) -> Result<redis::Value, Failure> {
    let mut con = connect(port)?;
    let mut cmd = redis::cmd(args[0].as_ref());
    for arg in &args[1..] {
        cmd.arg(arg.as_ref());
    }
    cmd.query::<redis::Value>(&mut con).map_err(|e| failure(&e))
}

/// Answers worth asking again: no leader yet, a leader that changed, or a
/// change that waits for the previous one to be in force.
fn retriable(error: &str) -> bool {
    error.starts_with("TRYAGAIN")
        || error.starts_with("CLUSTERDOWN")
        || error.contains("already in progress")
}

/// Sends an admin request to the nodes at `ports` in turn until one
/// answers `+OK`; any answer other than OK or a retriable error fails the
/// test.
fn admin<S: AsRef<str> + std::fmt::Debug>(ports: &[u16], args: &[S]) {
    let mut tries = 0usize;
    eventually(&format!("{args:?} is answered OK"), || {
        let port = ports[tries % ports.len()];
        tries += 1;
        match call(port, args) {
            Ok(redis::Value::Okay) => Some(()),
            Ok(other) => panic!("{args:?} at :{port} answered {other:?}"),
            Err(Failure::Lost(_)) => None,
            Err(Failure::Reply(e)) if retriable(&e) => None,
            Err(Failure::Reply(e)) => panic!("{args:?} at :{port} was refused: {e}"),
        }
    });
}

/// A member as `PAXOS MEMBERS` lists it.
#[derive(Debug)]
struct Member {
    id: u64,
    role: String,
    peer_addr: String,
    client_addr: String,
    match_slot: Option<i64>,
    connected: String,
}

/// `PAXOS MEMBERS` at `port`, or `None` if it cannot answer now.
fn members(port: u16) -> Option<Vec<Member>> {
    let redis::Value::Array(entries) = call(port, &["PAXOS", "MEMBERS"]).ok()? else {
        return None;
    };
    entries
        .iter()
        .map(|entry| {
            let redis::Value::Array(fields) = entry else {
                panic!("a PAXOS MEMBERS entry that is not an array: {entry:?}");
            };
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|pair| text(&pair[0]).as_deref() == Some(name))
                    .map(|pair| pair[1].clone())
                    .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
            };
            let int = |name: &str| match field(name) {
                redis::Value::Int(n) => Some(n),
                redis::Value::Nil => None,
                other => panic!("{name} is {other:?}"),
            };
            let string = |name: &str| text(&field(name)).unwrap();
            Some(Member {
                id: int("id").unwrap() as u64,
                role: string("role"),
                peer_addr: string("peer_addr"),
                client_addr: string("client_addr"),
                match_slot: int("match_slot"),
                connected: string("connected"),
            })
        })
        .collect()
}

/// Waits until `PAXOS MEMBERS` at `port` names `id` with `role`.
fn wait_role(port: u16, id: u64, role: &str) {
    eventually(&format!("node {id} is a {role}"), || {
        members(port)?
            .iter()
            .any(|m| m.id == id && m.role == role)
            .then_some(())
    });
}

/// The `# Paxos` section of `INFO` at `port`, as fields.
fn info_paxos(port: u16) -> Option<BTreeMap<String, String>> {
    let mut con = connect(port).ok()?;
    let info: String = redis::cmd("INFO").arg("paxos").query(&mut con).ok()?;
    Some(
        info.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect(),
    )
}

/// `1,2,3`
fn list(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// Waits until `INFO paxos` of every node in `nodes` has `members:`
/// (the voters in force) equal to `voters`.
fn wait_voters_in_force(nodes: &[At], voters: &[u64]) {
    let want = list(voters);
    for node in nodes {
        eventually(
            &format!("node {} has voters {want} in force", node.id),
            || {
                let info = info_paxos(node.client)?;
                (info.get("members") == Some(&want)).then_some(())
            },
        );
    }
}

/// Waits until node `id` (at client port `port`) reports `role:removed`,
/// then expects it to refuse `SET key` with `REMOVED`.
fn removed(port: u16, id: u64, key: &str) {
    eventually(&format!("node {id} reports role:removed"), || {
        let info = info_paxos(port)?;
        (info.get("role").map(String::as_str) == Some("removed")).then_some(())
    });
    match call(port, &["SET", key, "x"]) {
        Err(Failure::Reply(e)) => assert!(e.starts_with("REMOVED"), "{e}"),
        other => panic!("SET on the removed node {id}: {other:?}"),
    }
}

fn status(node: &At) -> Option<StatusReport> {
    fetch_status(&format!("127.0.0.1:{}", node.http), Duration::from_secs(2)).ok()
}

/// The leader every node of `nodes` names, once they agree on one of them
/// (other than `not`).
fn agreed_leader(nodes: &[At], not: Option<u64>) -> u64 {
    eventually("the nodes agree on a leader", || {
        let mut leaders = nodes.iter().map(|n| status(n).and_then(|s| s.leader_id));
        let first = leaders.next()??;
        let agreed = leaders.all(|l| l == Some(first));
        (agreed && Some(first) != not && nodes.iter().any(|n| n.id == first)).then_some(first)
    })
}

/// Runs the `parliament` command line; returns exit success and output.
fn parliament(args: &[&str]) -> (bool, String, String) {
    run(BIN, args, "")
}

/// Stops a node the way an operator does (SIGTERM) and expects a clean exit.
fn stop_cleanly(proc: &mut Proc) {
    let pid = proc.child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let status = proc.wait_exit();
    assert!(status.success(), "{status}: {}", proc.log());
}

#[test]
fn a_cluster_grows_from_three_to_five_while_redis_benchmark_runs() {
    let _serial = serial();
    let c = ServeCluster::start("grow");
    let _logs = LogsOnFailure(c.dir.0.clone());
    c.leader(None);
    let port = c.client_ports[0];
    set_until_ok(port, "ready", "yes");

    let running = Arc::new(AtomicBool::new(true));
    let bench = {
        let running = running.clone();
        let port = port.to_string();
        std::thread::spawn(move || {
            let args = ["-p", &port, "-t", "set,get", "-n", "20000", "-c", "8", "-q"];
            let result = run(tool("redis-benchmark"), &args, "");
            running.store(false, Ordering::SeqCst);
            result
        })
    };

    let j4 = Joiner::start(&c, 4);
    let mut j5 = Joiner::start(&c, 5);
    admin(&c.client_ports, &j4.add(false));
    let added_under_load = running.load(Ordering::SeqCst);
    wait_role(port, 4, "voter");
    admin(&c.client_ports, &j5.add(false));
    wait_role(port, 5, "voter");
    let mut nodes = founders(&c);
    nodes.extend([j4.at, j5.at]);
    wait_voters_in_force(&nodes, &[1, 2, 3, 4, 5]);
    let grown_under_load = running.load(Ordering::SeqCst);

    let (ok, out, err) = bench.join().unwrap();
    let output = format!("{out}{err}");
    assert!(ok, "redis-benchmark failed: {output}");
    assert!(
        !output.to_lowercase().contains("error"),
        "redis-benchmark saw errors: {output}"
    );
    for test in ["SET", "GET"] {
        assert!(
            output
                .lines()
                .any(|l| l.contains(&format!("{test}: ")) && l.contains("requests per second")),
            "no figure for {test}: {output}"
        );
    }
    assert!(
        added_under_load,
        "redis-benchmark finished before node 4 was added; the test measured nothing"
    );
    eprintln!("the membership reached five voters while redis-benchmark ran: {grown_under_load}");

    // Every member lists the five voters, on the command line too.
    let (ok, table, err) = parliament(&["member", "list", "--addr", &j5.client_addr()]);
    assert!(ok, "{table}{err}");
    let voters: Vec<&str> = table.lines().filter(|l| l.contains(" voter ")).collect();
    assert_eq!(voters.len(), 5, "{table}");
    for line in voters {
        assert!(line.trim_end().ends_with("yes"), "{table}");
    }

    // A write on a new node is read on a founder.
    set_until_ok(j5.at.client, "from-5", "hello");
    assert_eq!(
        get_all(port, &["from-5".to_owned()]),
        vec![Some("hello".to_owned())]
    );

    // A node that joined restarts from its data (its --join is not read
    // again), votes again, and serves what it missed.
    j5.restart();
    set_until_ok(port, "while-5-restarts", "yes");
    let info = eventually("node 5 serves again", || {
        let info = info_paxos(j5.at.client)?;
        let role = info.get("role")?;
        (role == "follower" || role == "leader").then_some(info)
    });
    assert_eq!(info.get("members").unwrap(), "1,2,3,4,5", "{info:?}");
    assert_eq!(
        get_all(
            j5.at.client,
            &["from-5".to_owned(), "while-5-restarts".to_owned()]
        ),
        vec![Some("hello".to_owned()), Some("yes".to_owned())]
    );
    let log = j5.proc.log();
    assert!(log.contains("state rebuilt from the log"), "{log}");
}

#[test]
fn a_killed_node_is_replaced_by_a_new_id_at_a_new_address() {
    let _serial = serial();
    let mut c = ServeCluster::start("replace");
    let _logs = LogsOnFailure(c.dir.0.clone());
    let leader = c.leader(None);
    let mut acked = Vec::new();
    for n in 0..20 {
        let key = format!("before-{n}");
        set_until_ok(c.client_ports[n % 3], &key, &format!("v{n}"));
        acked.push(key);
    }

    // A follower dies for good.
    let dead = (1..=3).find(|&id| id != leader).unwrap();
    c.kill9((dead - 1) as usize);
    let survivors: Vec<At> = founders(&c).into_iter().filter(|n| n.id != dead).collect();
    let ports: Vec<u16> = survivors.iter().map(|n| n.client).collect();
    for n in 0..10 {
        let key = format!("after-{n}");
        set_until_ok(ports[n % 2], &key, &format!("v{n}"));
        acked.push(key);
    }

    // A new node, new id, new ports, new data, takes its place.
    let j4 = Joiner::start(&c, 4);
    admin(&ports, &j4.add(false));
    wait_role(ports[0], 4, "voter");
    let mut nodes = survivors.clone();
    nodes.push(j4.at);
    // One change at a time: the promotion must be in force first.
    wait_voters_in_force(&nodes, &[1, 2, 3, 4]);
    let (ok, out, err) = parliament(&[
        "member",
        "remove",
        &dead.to_string(),
        "--addr",
        &format!("127.0.0.1:{}", ports[1]),
    ]);
    assert!(ok, "member remove {dead}: {out}{err}");

    let mut voters: Vec<u64> = survivors.iter().map(|n| n.id).collect();
    voters.push(4);
    wait_voters_in_force(&nodes, &voters);
    // PAXOS MEMBERS (asked of the new node, answered by the leader) names
    // each voter at its addresses, connected and with its progress.
    let listed = eventually("every member is listed connected", || {
        let listed = members(j4.at.client)?;
        listed
            .iter()
            .all(|m| m.connected == "yes" && m.match_slot.is_some())
            .then_some(listed)
    });
    let ids: Vec<u64> = listed.iter().map(|m| m.id).collect();
    assert_eq!(ids, voters, "{listed:?}");
    let peers = peer_ports(&c);
    for m in &listed {
        assert_eq!(m.role, "voter", "{listed:?}");
        let (peer, client) = if m.id == 4 {
            (j4.peer, j4.at.client)
        } else {
            let i = (m.id - 1) as usize;
            (peers[i], c.client_ports[i])
        };
        assert_eq!(m.peer_addr, format!("127.0.0.1:{peer}"), "{listed:?}");
        assert_eq!(m.client_addr, format!("127.0.0.1:{client}"), "{listed:?}");
    }
    let report = status(&j4.at).unwrap();
    assert_eq!(report.voters, voters);
    assert!(report.learners.is_empty(), "{report:?}");

    // Every acknowledged write, on the new node.
    let expect: Vec<Option<String>> = acked
        .iter()
        .map(|k| Some(format!("v{}", k.rsplit('-').next().unwrap())))
        .collect();
    assert_eq!(get_all(j4.at.client, &acked), expect);
    // The three voters keep serving writes.
    set_until_ok(j4.at.client, "after-replace", "yes");
    assert_eq!(
        get_all(ports[0], &["after-replace".to_owned()]),
        vec![Some("yes".to_owned())]
    );

    // The dead id can never come back, over RESP or the command line.
    let dead_peer = format!("127.0.0.1:{}", peer_ports(&c)[(dead - 1) as usize]);
    let dead_client = format!("127.0.0.1:{}", c.client_ports[(dead - 1) as usize]);
    let answer = call(
        ports[0],
        &[
            "PAXOS",
            "MEMBER",
            "ADD",
            &dead.to_string(),
            &dead_peer,
            &dead_client,
        ],
    );
    match answer {
        Err(Failure::Reply(e)) => assert!(e.starts_with("ERR") && e.contains("removed"), "{e}"),
        other => panic!("re-adding node {dead}: {other:?}"),
    }
    let (ok, out, err) = parliament(&[
        "member",
        "add",
        &dead.to_string(),
        &dead_peer,
        &dead_client,
        "--addr",
        &j4.client_addr(),
    ]);
    assert!(!ok, "re-adding node {dead} succeeded: {out}");
    assert!(err.contains("removed"), "{out}{err}");
    // The dead node comes back from its data after all: it learns that it
    // was removed, sends clients elsewhere, and the three voters go on.
    let old = (dead - 1) as usize;
    c.spawn(old);
    removed(c.client_ports[old], dead, "on-the-returned");
    set_until_ok(ports[0], "after-return", "yes");
    assert_eq!(
        get_all(
            j4.at.client,
            &["after-return".to_owned(), "on-the-returned".to_owned()]
        ),
        vec![Some("yes".to_owned()), None]
    );
    wait_voters_in_force(&nodes, &voters);

    // A new process that tries to join under the dead id is turned away.
    let mut again = Joiner::start(&c, dead);
    let status = again.proc.wait_exit();
    assert!(!status.success());
    let log = again.proc.log();
    assert!(
        log.contains(&format!(
            "node {dead} was removed from this cluster; a new node needs a new id"
        )),
        "{log}"
    );
}

#[test]
fn removing_the_leader_hands_over_and_the_cluster_keeps_serving() {
    let _serial = serial();
    let c = ServeCluster::start("remove-leader");
    let _logs = LogsOnFailure(c.dir.0.clone());
    c.leader(None);
    set_until_ok(c.client_ports[0], "ready", "yes");
    let j4 = Joiner::start(&c, 4);
    admin(&c.client_ports, &j4.add(false));
    let mut nodes = founders(&c);
    nodes.push(j4.at);
    wait_voters_in_force(&nodes, &[1, 2, 3, 4]);

    let leader = agreed_leader(&nodes, None);
    let old = *nodes.iter().find(|n| n.id == leader).unwrap();
    let rest: Vec<At> = nodes.iter().copied().filter(|n| n.id != leader).collect();
    let via = rest[0];
    match call(
        via.client,
        &["PAXOS", "MEMBER", "REMOVE", &leader.to_string()],
    ) {
        Ok(redis::Value::Okay) => {}
        other => panic!("PAXOS MEMBER REMOVE {leader} at node {}: {other:?}", via.id),
    }

    // Another voter leads, and the three left serve reads and writes.
    let new = agreed_leader(&rest, Some(leader));
    assert!(rest.iter().any(|n| n.id == new));
    let remaining: Vec<u64> = rest.iter().map(|n| n.id).collect();
    wait_voters_in_force(&rest, &remaining);
    let keys: Vec<String> = rest.iter().map(|n| format!("after-{}", n.id)).collect();
    for (node, key) in rest.iter().zip(&keys) {
        set_until_ok(node.client, key, "v");
    }
    for node in &rest {
        assert_eq!(
            get_all(node.client, &keys),
            vec![Some("v".to_owned()); keys.len()],
            "node {}",
            node.id
        );
    }

    // The old leader knows it was removed and sends clients elsewhere.
    removed(old.client, leader, "on-the-removed");
    assert_eq!(
        get_all(rest[1].client, &["on-the-removed".to_owned()]),
        vec![None]
    );
}

/// What the writer of the rolling restart saw.
#[derive(Default)]
struct Writes {
    /// Keys whose SET was answered OK (the value is `v` + the key's number).
    acked: Vec<String>,
    /// Answers no client should get from a planned restart.
    failures: Vec<String>,
    /// Connections lost (the write may or may not have happened), and why.
    lost: Vec<String>,
}

const NONE: usize = usize::MAX;

#[test]
fn a_rolling_restart_with_leadership_transfer_loses_no_write() {
    let _serial = serial();
    let mut c = ServeCluster::start("rolling");
    let _logs = LogsOnFailure(c.dir.0.clone());
    c.leader(None);
    set_until_ok(c.client_ports[0], "ready", "yes");
    let nodes = founders(&c);

    // The writer writes through one node at a time, never the one taken out
    // of rotation (as a load balancer drains a node before its restart), and
    // moves to the next node every so often.
    let stop = Arc::new(AtomicBool::new(false));
    let drained = Arc::new(AtomicUsize::new(NONE));
    let seen = Arc::new(AtomicUsize::new(NONE));
    let acked_count = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, drained, seen, acked_count) = (
            stop.clone(),
            drained.clone(),
            seen.clone(),
            acked_count.clone(),
        );
        let ports = c.client_ports.clone();
        std::thread::spawn(move || {
            let mut w = Writes::default();
            let mut con: Option<redis::Connection> = None;
            let mut current = 0usize;
            let mut n = 0u64;
            let mut since_move = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let out = drained.load(Ordering::SeqCst);
                if con.is_none() || current == out || since_move >= 200 {
                    con = None;
                    since_move = 0;
                    current = (current + 1) % ports.len();
                    if current == out {
                        current = (current + 1) % ports.len();
                    }
                    match connect(ports[current]) {
                        Ok(fresh) => {
                            fresh
                                .set_read_timeout(Some(Duration::from_secs(10)))
                                .unwrap();
                            con = Some(fresh);
                        }
                        Err(Failure::Lost(e) | Failure::Reply(e)) => {
                            w.lost
                                .push(format!("connecting to node {}: {e}", current + 1));
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    }
                }
                // From here on this writer stays off the drained node.
                seen.store(out, Ordering::SeqCst);
                n += 1;
                since_move += 1;
                let key = format!("w-{n}");
                let reply = redis::cmd("SET")
                    .arg(&key)
                    .arg(format!("v{n}"))
                    .query::<redis::Value>(con.as_mut().unwrap());
                match reply {
                    Ok(redis::Value::Okay) => {
                        w.acked.push(key);
                        acked_count.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(other) => w.failures.push(format!(
                        "SET {key} through node {} answered {other:?}",
                        current + 1
                    )),
                    Err(e) => match failure(&e) {
                        Failure::Reply(e) => w
                            .failures
                            .push(format!("SET {key} through node {}: {e}", current + 1)),
                        Failure::Lost(e) => {
                            w.lost
                                .push(format!("SET {key} through node {}: {e}", current + 1));
                            con = None;
                        }
                    },
                }
            }
            w
        })
    };

    for i in 0..3 {
        let id = i as u64 + 1;
        // Take it out of rotation.
        drained.store(i, Ordering::SeqCst);
        eventually(&format!("the writer leaves node {id}"), || {
            (seen.load(Ordering::SeqCst) == i).then_some(())
        });
        let leader = agreed_leader(&nodes, None);
        if leader == id {
            let to = (id % 3) + 1;
            let other = nodes.iter().find(|n| n.id != id && n.id != to).unwrap();
            let (ok, out, err) = parliament(&[
                "leader",
                "transfer",
                "--to",
                &to.to_string(),
                "--addr",
                &format!("127.0.0.1:{}", other.client),
            ]);
            assert!(ok, "leader transfer --to {to}: {out}{err}");
            assert_eq!(out.trim(), "OK");
            assert_eq!(agreed_leader(&nodes, None), to);
        }
        let before = acked_count.load(Ordering::SeqCst);
        stop_cleanly(c.procs[i].as_mut().unwrap());
        // The other two go on without it; it has that much to catch up on.
        eventually(
            &format!("writes are acknowledged while node {id} is down"),
            || (acked_count.load(Ordering::SeqCst) >= before + 200).then_some(()),
        );
        c.spawn(i);
        // Back as a follower that has every write the leader had by then.
        let leader = agreed_leader(&nodes, None);
        assert_ne!(leader, id, "the restarted node {id} took the leadership");
        let target = status(&nodes[(leader - 1) as usize]).unwrap().commit_slot;
        eventually(&format!("node {id} has caught up"), || {
            let s = status(&nodes[i])?;
            (s.role == "follower" && s.commit_slot >= target).then_some(())
        });
        drained.store(NONE, Ordering::SeqCst);
    }
    // Some writes through the restarted nodes too.
    let last = acked_count.load(Ordering::SeqCst);
    eventually("the writer goes on", || {
        (acked_count.load(Ordering::SeqCst) > last + 300).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let w = writer.join().unwrap();
    eprintln!(
        "{} writes acknowledged, {} failures, connections lost: {:#?}",
        w.acked.len(),
        w.failures.len(),
        w.lost
    );
    assert!(
        w.failures.is_empty(),
        "a client saw errors during a planned rolling restart: {:#?}",
        w.failures
    );
    let expect: Vec<Option<String>> = w
        .acked
        .iter()
        .map(|k| Some(format!("v{}", k.rsplit('-').next().unwrap())))
        .collect();
    for node in &nodes {
        assert_eq!(
            get_all(node.client, &w.acked),
            expect,
            "node {} lost acknowledged writes",
            node.id
        );
    }
}

// ----- a history recorded while the membership changes --------------------

/// Waits until node `at` has every slot the leader `leader` had chosen
/// when asked.
fn wait_caught_up(at: &At, leader: &At) {
    let target = eventually("the leader reports its commit point", || status(leader)).commit_slot;
    eventually(&format!("node {} has caught up", at.id), || {
        (status(at)?.commit_slot >= target).then_some(())
    });
}

#[test]
fn a_history_recorded_during_membership_changes_is_linearizable() {
    let _serial = serial();
    let c = ServeCluster::start("history-members");
    let _logs = LogsOnFailure(c.dir.0.clone());
    c.leader(None);
    set_until_ok(c.client_ports[0], "warm", "up");
    let mut nodes = founders(&c);

    // Clients connect to the nodes in `ports`, read anew for each
    // connection, and try another node after anything but an answer.
    let ports = Arc::new(Mutex::new(c.client_ports.clone()));
    let workload = {
        let ports = ports.clone();
        Workload::start(
            move |dice| dice.pick(&ports.lock().unwrap()),
            Reconnect::UnlessAnswered,
        )
    };
    let pause = || std::thread::sleep(Duration::from_millis(700));
    let client_ports = |nodes: &[At]| nodes.iter().map(|n| n.client).collect::<Vec<u16>>();
    let mut changes = Vec::new();

    // Node 4 joins as a learner, catches up and is promoted by hand.
    pause();
    let j4 = Joiner::start(&c, 4);
    admin(&client_ports(&nodes), &j4.add(true));
    wait_role(nodes[0].client, 4, "learner");
    let leader = agreed_leader(&nodes, None);
    wait_caught_up(&j4.at, &nodes[(leader - 1) as usize]);
    admin(&client_ports(&nodes), &["PAXOS", "MEMBER", "PROMOTE", "4"]);
    nodes.push(j4.at);
    wait_voters_in_force(&nodes, &[1, 2, 3, 4]);
    ports.lock().unwrap().push(j4.at.client);
    changes.push("add learner 4, promote 4".to_owned());

    // The leadership moves to the new node.
    pause();
    admin(&client_ports(&nodes), &["PAXOS", "LEADER", "TRANSFER", "4"]);
    assert_eq!(agreed_leader(&nodes, None), 4);
    changes.push("transfer to 4".to_owned());

    // A founder that does not lead leaves (clients may still ask it).
    pause();
    let gone = nodes[0];
    admin(
        &client_ports(&nodes[1..]),
        &["PAXOS", "MEMBER", "REMOVE", "1"],
    );
    nodes.remove(0);
    wait_voters_in_force(&nodes, &[2, 3, 4]);
    changes.push("remove 1".to_owned());

    // Node 5 is added as a voter straight away.
    pause();
    let j5 = Joiner::start(&c, 5);
    admin(&client_ports(&nodes), &j5.add(false));
    nodes.push(j5.at);
    wait_voters_in_force(&nodes, &[2, 3, 4, 5]);
    ports.lock().unwrap().push(j5.at.client);
    changes.push("add 5".to_owned());

    // The leader is removed and hands over.
    pause();
    let leader = agreed_leader(&nodes, None);
    let rest: Vec<At> = nodes.iter().copied().filter(|n| n.id != leader).collect();
    admin(
        &client_ports(&rest),
        &["PAXOS", "MEMBER", "REMOVE", &leader.to_string()],
    );
    let voters: Vec<u64> = rest.iter().map(|n| n.id).collect();
    wait_voters_in_force(&rest, &voters);
    let new = agreed_leader(&rest, Some(leader));
    changes.push(format!("remove the leader {leader}, {new} leads"));

    pause();
    let history = workload.stop();
    // The removed nodes say so.
    removed(gone.client, gone.id, "k0");
    removed(
        nodes.iter().find(|n| n.id == leader).unwrap().client,
        leader,
        "k0",
    );

    assert_linearizable(&history, 200, &changes.join("; "));
}
