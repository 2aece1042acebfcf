//! Members that share a cluster secret, with real processes: a stranger
//! who knows a member id and the cluster id, but not the secret, gets
//! nothing done on a peer port; a member with another secret is refused;
//! a peer port beyond loopback needs a secret.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is its job

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use common::{BIN, Proc, ServeCluster, eventually, free_ports, get_all, set_until_ok};
use node::net::frame::{FrameKind, Handshake, put_frame, put_kind_frame};
use paxos::replica::{Message, Slot};
use paxos::{Ballot, Round};

const SECRET: &str = "a secret only the members know, 1234567890\n";

fn with_secret(c: &mut ServeCluster, i: usize, file: &Path) {
    c.args[i].push("--cluster-secret-file".into());
    c.args[i].push(file.display().to_string());
}

/// The peer port of node `i + 1`.
fn peer_port(c: &ServeCluster, i: usize) -> u16 {
    let members = c.arg(i, "--members");
    let entry = members
        .split(',')
        .find(|e| e.starts_with(&format!("{}=", i + 1)))
        .unwrap();
    entry.rsplit(':').next().unwrap().parse().unwrap()
}

/// Connects to `port` as member 1 of `cluster` offering `protocols`, sends
/// `auth` frames (if any) and then a heartbeat of a ballot no one could
/// ever exceed, and reads until the node hangs up.
fn forge(port: u16, cluster: u128, protocols: (u8, u8), auth: Option<&[u8]>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = BytesMut::new();
    let hello = Handshake {
        lowest: protocols.0,
        highest: protocols.1,
        cluster,
        from: 1,
        to: 2,
        client_addr: String::new(),
        http_addr: String::new(),
    };
    put_frame(&mut out, &hello.encode());
    if let Some(auth) = auth {
        put_frame(&mut out, auth);
    }
    let heartbeat = Message::Heartbeat {
        ballot: Ballot {
            round: Round(1 << 62),
            node: 1,
        },
        commit: Slot(1 << 40),
        seq: 1,
    };
    for _ in 0..3 {
        put_kind_frame(
            &mut out,
            FrameKind::Message,
            &storage::wire::encode_message(&heartbeat),
        );
    }
    // The node may hang up before it has read everything.
    let _ = s.write_all(&out);
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

#[test]
fn a_stranger_without_the_secret_gets_nothing_done_on_a_peer_port() {
    let mut c = ServeCluster::prepare("auth-stranger");
    let secret = c.dir.0.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    for i in 0..3 {
        with_secret(&mut c, i, &secret);
        c.spawn(i);
    }
    set_until_ok(c.client_ports[0], "k", "before");
    let leader = c.leader(None);
    let status = c.status(1).unwrap();
    let cluster = u128::from_str_radix(&status.cluster_id, 16).unwrap();
    let port = peer_port(&c, 1);

    // Offering only the protocol that cannot authenticate; offering the
    // new one but skipping the proof; and with a made-up proof.
    forge(port, cluster, (3, 3), None);
    forge(port, cluster, (3, 4), None);
    let mut made_up = vec![1u8];
    made_up.extend_from_slice(&[7u8; 16 + 32]);
    forge(port, cluster, (3, 4), Some(&made_up));

    for says in [
        "protocol 3, which cannot prove",
        "malformed authentication frame",
        "proof of the cluster secret is wrong",
    ] {
        eventually(&format!("node 2 says {says:?}"), || {
            c.log(1).contains(says).then_some(())
        });
    }
    // Nothing of the heartbeat counted: the same leader, no ballot from
    // the stranger, and the cluster serves.
    set_until_ok(c.client_ports[1], "k", "after");
    assert_eq!(c.leader(None), leader);
    for i in 0..3 {
        let ballot = c.status(i).unwrap().ballot;
        let round: u64 = ballot.split('.').next().unwrap().parse().unwrap();
        assert!(round < 1 << 62, "node {} promised {ballot}", i + 1);
        assert_eq!(
            get_all(c.client_ports[i], &["k".to_owned()]),
            vec![Some("after".to_owned())]
        );
    }
}

#[test]
fn a_member_with_another_secret_is_refused_and_both_sides_say_why() {
    let mut c = ServeCluster::prepare("auth-wrong");
    let secret = c.dir.0.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let other = c.dir.0.join("other-secret");
    std::fs::write(&other, "not the secret of this cluster at all\n").unwrap();
    for i in 0..2 {
        with_secret(&mut c, i, &secret);
    }
    with_secret(&mut c, 2, &other);
    // Node 3 would learn the cluster id from node 1; give node 1 and 2 the
    // cluster first, then start node 3 with the wrong secret.
    c.spawn(0);
    c.spawn(1);
    set_until_ok(c.client_ports[0], "k", "v");
    c.spawn(2);
    eventually("node 3 says the secrets differ", || {
        let log = c.log(2);
        (log.contains("secrets differ") || log.contains("secret is wrong")).then_some(())
    });
    eventually("node 1 says the proof was wrong", || {
        c.log(0)
            .contains("proof of the cluster secret is wrong")
            .then_some(())
    });
    let peers = c.status(0).unwrap().members;
    assert!(
        !peers.iter().any(|m| m.id == 3 && m.connected),
        "node 1 talks to node 3: {peers:?}"
    );
    set_until_ok(c.client_ports[1], "k", "w");
}

#[test]
fn a_peer_port_beyond_loopback_needs_a_secret_or_says_so() {
    let dir = common::Scratch::new("auth-exposed");
    let ports = free_ports(3);
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "serve".to_owned(),
            "--id".to_owned(),
            "1".to_owned(),
            "--data-dir".to_owned(),
            dir.0.join("node-1").display().to_string(),
            "--client-addr".to_owned(),
            format!("127.0.0.1:{}", ports[0]),
            "--http-addr".to_owned(),
            format!("127.0.0.1:{}", ports[2]),
            "--peer-addr".to_owned(),
            format!("0.0.0.0:{}", ports[1]),
            "--members".to_owned(),
            format!("1=127.0.0.1:{}", ports[1]),
        ]
        .into();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let out = std::process::Command::new(BIN)
        .args(args(&[]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without a secret: {err}");
    assert!(
        err.contains("beyond loopback") && err.contains("--cluster-secret-file"),
        "{err}"
    );
    // Either a secret or the explicit flag lets it start.
    let secret = dir.0.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let log = dir.0.join("exposed.log");
    let mut node = Proc::spawn(
        &args(&["--cluster-secret-file", &secret.display().to_string()]),
        &log,
    );
    set_until_ok(ports[0], "k", "v");
    node.kill9();
    let mut node = Proc::spawn(&args(&["--insecure-peers"]), &log);
    set_until_ok(ports[0], "k", "w");
    assert!(node.log().contains("--insecure-peers"));
    node.kill9();
}
