//! `parliament backup` of a running cluster under write load, and
//! `parliament restore` of it into a new cluster, with real processes.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is its job

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{BIN, ServeCluster, eventually, set_until_ok};
use redis::Commands;

/// Clients writing while the backup is taken.
const CLIENTS: usize = 64;

/// One client's writes, in order: when each was sent and whether it was
/// acknowledged (and when). A client stops at its first error, so its
/// writes are a sequence with at most one uncertain write at the end.
struct Writes {
    client: usize,
    sent: Vec<(Instant, Option<Instant>)>,
}

fn key(client: usize, n: usize) -> String {
    format!("c{client}-{n}")
}

/// Writes `c{client}-1`, `c{client}-2`, ... to `port` until `stop`.
fn writer(client: usize, port: u16, stop: Arc<AtomicBool>) -> Writes {
    let mut writes = Writes {
        client,
        sent: Vec::new(),
    };
    let redis = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut con = redis.get_connection().unwrap();
    con.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let n = writes.sent.len() + 1;
        let sent = Instant::now();
        let ok: redis::RedisResult<()> = con.set(key(client, n), "v");
        let acked = ok.is_ok().then(Instant::now);
        writes.sent.push((sent, acked));
        if acked.is_none() {
            break;
        }
    }
    writes
}

fn keys_of(port: u16) -> BTreeSet<String> {
    eventually(&format!("node :{port} lists its keys"), || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .ok()?;
        redis::cmd("KEYS")
            .arg("*")
            .query::<Vec<String>>(&mut con)
            .ok()
            .map(|keys| keys.into_iter().collect())
    })
}

fn parliament(args: &[String]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Restores node `i + 1` of `cluster` (not started) from the backup `file`.
fn restore_member(file: &std::path::Path, cluster: &ServeCluster, i: usize) {
    let out = parliament(&[
        "restore".into(),
        "--from".into(),
        file.display().to_string(),
        "--data-dir".into(),
        cluster.arg(i, "--data-dir"),
        "--id".into(),
        (i + 1).to_string(),
        "--members".into(),
        cluster.arg(i, "--members"),
    ]);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_backup_under_load_restores_into_a_new_cluster_as_one_prefix_of_the_log() {
    let mut old = ServeCluster::start("backup-old");
    set_until_ok(old.client_ports[0], "before", "1");
    let leader = old.leader(None);
    let follower = (1..=3).find(|&id| id != leader).unwrap();

    // 64 clients write to the leader; the backup is taken from a follower.
    let stop = Arc::new(AtomicBool::new(false));
    let port = old.client_ports[leader as usize - 1];
    let writers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || writer(c, port, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let file = old.dir.0.join("cluster.backup");
    let began = Instant::now();
    let out = parliament(&[
        "backup".into(),
        "--addr".into(),
        format!("127.0.0.1:{}", old.client_ports[follower as usize - 1]),
        "--out".into(),
        file.display().to_string(),
    ]);
    let ended = Instant::now();
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let writes: Vec<Writes> = writers.into_iter().map(|w| w.join().unwrap()).collect();

    // A new cluster of three, each member restored from the file.
    let mut new = ServeCluster::prepare("backup-new");
    for i in 0..3 {
        restore_member(&file, &new, i);
    }
    for i in 0..3 {
        new.spawn(i);
    }
    let present = keys_of(new.client_ports[0]);
    assert!(present.contains("before"));

    // Every write acknowledged before the backup began is there; none sent
    // after it ended is; and what is there of each client is a prefix of
    // its writes: the state of one slot of the log.
    let (mut before, mut after) = (0, 0);
    for w in &writes {
        let mut missing_from = None;
        for (i, (sent, acked)) in w.sent.iter().enumerate() {
            let k = key(w.client, i + 1);
            let here = present.contains(&k);
            if acked.is_some_and(|a| a < began) {
                before += 1;
                assert!(
                    here,
                    "{k} was acknowledged before the backup began but is missing"
                );
            }
            if *sent > ended {
                after += 1;
                assert!(!here, "{k} was sent after the backup ended but is in it");
            }
            match (here, missing_from) {
                (false, None) => missing_from = Some(i + 1),
                (true, Some(gap)) => {
                    panic!(
                        "{k} is in the backup but the earlier {} is not",
                        key(w.client, gap)
                    )
                }
                _ => {}
            }
        }
    }
    eprintln!(
        "{before} writes acknowledged before the backup, {after} sent after it, {} keys in it",
        present.len()
    );
    assert!(
        before > 0 && after > 0,
        "the load ran across the backup: {before} before, {after} after"
    );

    // The new cluster is another cluster, and it takes writes.
    let (old_id, new_id) = (
        old.status(0).unwrap().cluster_id,
        eventually("the restored node reports", || new.status(1)).cluster_id,
    );
    assert_ne!(old_id, new_id);
    set_until_ok(new.client_ports[2], "restored", "yes");

    // A flipped bit in the file is found, and nothing is restored.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x04;
    let damaged = old.dir.0.join("damaged.backup");
    std::fs::write(&damaged, &bytes).unwrap();
    let target = old.dir.0.join("never");
    let out = parliament(&[
        "restore".into(),
        "--from".into(),
        damaged.display().to_string(),
        "--data-dir".into(),
        target.display().to_string(),
        "--id".into(),
        "1".into(),
        "--members".into(),
        "1=127.0.0.1:1".into(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("damaged"), "{err}");
    assert!(!target.exists());

    // A member restored from the backup and started in place of an old
    // member cannot take part in the old cluster: the old members refuse
    // it, and say why.
    old.kill9(2);
    let impostor = old.dir.0.join("impostor");
    let out = parliament(&[
        "restore".into(),
        "--from".into(),
        file.display().to_string(),
        "--data-dir".into(),
        impostor.display().to_string(),
        "--id".into(),
        "3".into(),
        "--members".into(),
        old.arg(2, "--members"),
    ]);
    assert!(out.status.success());
    let data_dir = old.args[2].iter().position(|a| a == "--data-dir").unwrap();
    old.args[2][data_dir + 1] = impostor.display().to_string();
    old.spawn(2);
    eventually("an old member refuses the restored one", || {
        (0..2)
            .any(|i| old.log(i).contains("a node never talks to another cluster"))
            .then_some(())
    });
    set_until_ok(old.client_ports[0], "without-3", "yes");
    std::thread::sleep(Duration::from_secs(1));
    let impostor_status = old.status(2).unwrap();
    assert_ne!(impostor_status.role, "leader");
    assert_ne!(impostor_status.cluster_id, old_id);
    let old_status = old.status(0).unwrap();
    let member_3 = old_status.members.iter().find(|m| m.id == 3).unwrap();
    assert!(
        !member_3.connected,
        "the old cluster talks to the restored node"
    );
}

#[test]
fn a_founder_with_an_empty_data_directory_cannot_join_a_restored_cluster() {
    let old = ServeCluster::start("backup-small");
    set_until_ok(old.client_ports[0], "k", "v");
    let file = old.dir.0.join("small.backup");
    let out = parliament(&[
        "backup".into(),
        "--addr".into(),
        format!("127.0.0.1:{}", old.client_ports[0]),
        "--out".into(),
        file.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Founders 1 and 2 are restored; founder 3 is started empty.
    let mut new = ServeCluster::prepare("backup-partial");
    for i in 0..2 {
        restore_member(&file, &new, i);
        new.spawn(i);
    }
    new.spawn(2);
    let status = new.procs[2].as_mut().unwrap().wait_exit();
    let log = new.log(2);
    assert!(!status.success(), "the empty founder started:\n{log}");
    assert!(log.contains("restored from a backup"), "{log}");
    // The restored two serve the backup's data meanwhile.
    assert_eq!(
        common::get_all(new.client_ports[1], &["k".to_owned()]),
        vec![Some("v".to_owned())]
    );
}
