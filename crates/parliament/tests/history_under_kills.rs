//! Jepsen in miniature, with real processes: clients read, write,
//! compare-and-swap and increment a few keys through every node of a
//! three-node cluster while nodes are killed with SIGKILL and restarted. The
//! history they record is checked by the project's linearizability checker,
//! in process and through `parliament check` on the written file.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is its job

mod common;

use std::time::Duration;

use common::workload::{Dice, Reconnect, Workload, assert_linearizable};
use common::{ServeCluster, eventually};

#[test]
fn a_history_recorded_while_nodes_are_killed_is_linearizable() {
    let mut cluster = ServeCluster::start("history");
    let ports = cluster.client_ports.clone();
    eventually("the cluster accepts a write", || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", ports[0])).ok()?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        redis::cmd("SET")
            .arg("warm")
            .arg("up")
            .query::<()>(&mut con)
            .ok()
    });

    let workload = Workload::start(move |dice| dice.pick(&ports), Reconnect::WhenUnknown);

    // The nemesis: kill -9 a random node, let the others carry on, restart it.
    let mut dice = Dice(42);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1500));
        let victim = dice.below(3) as usize;
        cluster.kill9(victim);
        std::thread::sleep(Duration::from_millis(1000));
        cluster.spawn(victim);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let history = workload.stop();
    assert_linearizable(&history, 100, "");

    // The same verdict from the command line, on the written file.
    let path = cluster.dir.0.join("history.jsonl");
    history
        .to_jsonl(std::io::BufWriter::new(
            std::fs::File::create(&path).unwrap(),
        ))
        .unwrap();
    let out = std::process::Command::new(common::BIN)
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
