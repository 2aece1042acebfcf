//! The runbooks of `docs/operations.md` (founding a cluster, changing the
//! members, backing up and restoring), run as written: the commands are
//! read from the document's code blocks, the example addresses (10.0.0.N
//! with ports 6379, 7379 and 8379) are mapped to free loopback ports, and
//! each command runs as a real process. A
//! `# wait for: N voter` note after `parliament member list` waits until
//! the list shows it. Were the document to name a command or flag the
//! binary does not have, these tests would fail.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is its job

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{BIN, Proc, Scratch, eventually, free_ports, get_all, set_until_ok};

const DOC: &str = include_str!("../../../docs/operations.md");

/// The commands of every code block under the heading `## {title}` or
/// `### {title}` (up to the next heading), continuation lines joined.
fn runbook(title: &str) -> Vec<String> {
    let (start, heading) = ["### ", "## "]
        .iter()
        .map(|level| format!("\n{level}{title}\n"))
        .find_map(|heading| DOC.find(&heading).map(|at| (at, heading)))
        .unwrap_or_else(|| panic!("docs/operations.md has no section '{title}'"));
    let section = &DOC[start + heading.len()..];
    let end = ["\n### ", "\n## "]
        .iter()
        .filter_map(|h| section.find(h))
        .min()
        .unwrap_or(section.len());
    let section = &section[..end];
    let mut commands = Vec::new();
    let mut inside = false;
    let mut pending = String::new();
    for line in section.lines() {
        let line = line.trim();
        if line.starts_with("```") {
            inside = !inside;
            continue;
        }
        if !inside || line.is_empty() {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head.trim_end());
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        commands.push(std::mem::take(&mut pending));
    }
    assert!(!commands.is_empty(), "no commands under '{heading}'");
    commands
}

/// Loopback ports for the example machines 10.0.0.1 to 10.0.0.5.
struct Machines {
    client: BTreeMap<u64, u16>,
    peer: BTreeMap<u64, u16>,
    http: BTreeMap<u64, u16>,
    dir: Scratch,
    nodes: BTreeMap<u64, Proc>,
}

impl Machines {
    fn new(name: &str) -> Machines {
        let ports = free_ports(15);
        let pick = |base: usize| (1..=5).map(|n| (n, ports[base + n as usize - 1])).collect();
        let m = Machines {
            client: pick(0),
            peer: pick(5),
            http: pick(10),
            dir: Scratch::new(name),
            nodes: BTreeMap::new(),
        };
        // The secret "One node of a deployment" makes, made the same way.
        std::fs::write(m.dir.0.join("secret"), "0123456789abcdef0123456789abcdef").unwrap();
        m
    }

    /// `text` with the example addresses replaced by this test's.
    fn map(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for n in 1..=5u64 {
            for (port, real) in [
                (6379, self.client[&n]),
                (7379, self.peer[&n]),
                (8379, self.http[&n]),
            ] {
                out = out.replace(&format!("10.0.0.{n}:{port}"), &format!("127.0.0.1:{real}"));
            }
        }
        let backups = self.dir.0.join("backups");
        let secret = self.dir.0.join("secret");
        out.replace("/backups/", &format!("{}/", backups.display()))
            .replace("/etc/parliament/secret", &secret.display().to_string())
    }

    /// `args` with the example data directories (`/var/lib/parliament`,
    /// and beside it `/var/lib/parliament-SUFFIX`) made node `id`'s own.
    fn data_dirs(&self, id: u64, args: &mut [String]) {
        let dir = self.dir.0.join(format!("node-{id}"));
        for a in args {
            if let Some(suffix) = a.strip_prefix("/var/lib/parliament") {
                *a = format!("{}{suffix}", dir.display());
            }
        }
    }

    fn serve(&mut self, id: u64, args: Vec<String>) {
        let mut args = args;
        self.data_dirs(id, &mut args);
        args.push("--stop-on-stdin-eof".to_owned());
        let log = self.dir.0.join(format!("node-{id}.log"));
        self.nodes.insert(id, Proc::spawn(&args, &log));
    }

    /// The founding three, each started as "One node of a deployment"
    /// starts node 1, on its own machine.
    fn found(&mut self) {
        let node_1 = runbook("One node of a deployment").remove(0);
        for id in 1..=3u64 {
            let line = node_1
                .replace("--id 1 ", &format!("--id {id} "))
                .replace("-addr 10.0.0.1:", &format!("-addr 10.0.0.{id}:"));
            self.run(&line);
        }
        set_until_ok(self.client[&1], "founded", "yes");
    }

    /// Runs one runbook line.
    fn run(&mut self, line: &str) {
        let (command, note) = match line.split_once('#') {
            Some((command, note)) => (command.trim(), note.trim()),
            None => (line.trim(), ""),
        };
        if command.is_empty() {
            // A step done by hand, described in a comment.
            if note.starts_with("stop every node") {
                // As good as SIGTERM here: every acknowledged write is on
                // disk before it is acknowledged.
                for (_, mut node) in std::mem::take(&mut self.nodes) {
                    node.kill9();
                }
            }
            return;
        }
        let words: Vec<String> = self
            .map(command)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            words[0], "parliament",
            "a runbook line that is not ours: {line}"
        );
        let mut args = words[1..].to_vec();
        let id: Option<u64> = args
            .iter()
            .position(|a| a == "--id")
            .map(|at| args[at + 1].parse().unwrap());
        if args[0] == "serve" {
            self.serve(id.unwrap(), args);
            return;
        }
        if let Some(id) = id {
            self.data_dirs(id, &mut args);
        }
        if let Some(wanted) = note.strip_prefix("wait for:") {
            let wanted: Vec<&str> = wanted.split_whitespace().collect();
            eventually(&format!("'{line}' shows {wanted:?}"), || {
                let out = Command::new(BIN).args(&args).output().ok()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.lines()
                    .any(|l| l.split_whitespace().take(2).eq(wanted.iter().copied()))
                    .then_some(())
            });
            return;
        }
        // A change may meet a leader that is still settling: retry while the
        // cluster says to.
        let out = eventually(&format!("'{line}' succeeds"), || {
            let out = Command::new(BIN).args(&args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() {
                return Some(out);
            }
            assert!(
                !args[0].starts_with("backup") && !args[0].starts_with("restore"),
                "'{line}' failed: {err}"
            );
            assert!(
                err.contains("TRYAGAIN")
                    || err.contains("CLUSTERDOWN")
                    || err.contains("in progress"),
                "'{line}' failed: {err}"
            );
            None
        });
        assert!(out.status.success());
    }

    fn voters(&self, via: u64) -> Vec<u64> {
        let out = Command::new(BIN)
            .args(["member", "list", "--addr"])
            .arg(format!("127.0.0.1:{}", self.client[&via]))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("voter"))
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect()
    }
}

#[test]
fn the_runbook_to_replace_a_dead_machine_works_as_written() {
    let mut m = Machines::new("runbook-replace");
    m.found();
    set_until_ok(m.client[&1], "before", "1");
    // Node 3 is gone for good.
    m.nodes.get_mut(&3).unwrap().kill9();
    for line in runbook("Runbook: replace a dead machine") {
        m.run(&line);
    }
    assert_eq!(m.voters(1), vec![1, 2, 4]);
    assert_eq!(
        get_all(m.client[&4], &["before".to_owned(), "founded".to_owned()]),
        vec![Some("1".to_owned()), Some("yes".to_owned())]
    );
}

#[test]
fn the_runbooks_to_grow_shrink_and_restart_work_as_written() {
    let mut m = Machines::new("runbook-grow");
    m.found();
    // "Start nodes 4 and 5 with --join as in step 1 above": step 1's
    // command, for each new machine.
    let step1 = runbook("Runbook: replace a dead machine")
        .into_iter()
        .find(|l| l.contains(" serve "))
        .unwrap();
    for n in [4u64, 5] {
        let line = step1
            .replace("--id 4", &format!("--id {n}"))
            .replace("10.0.0.4:", &format!("10.0.0.{n}:"));
        m.run(&line);
    }
    for line in runbook("Runbook: grow from three to five") {
        m.run(&line);
    }
    assert_eq!(m.voters(1), vec![1, 2, 3, 4, 5]);
    set_until_ok(m.client[&5], "grown", "yes");

    for line in runbook("Runbook: shrink") {
        m.run(&line);
    }
    assert_eq!(m.voters(1), vec![1, 2, 3]);

    // The rolling restart's commands, with node 1 leading first.
    let leader = eventually("a leader", || {
        common::node_status(m.http[&1]).and_then(|s| s.leader_id)
    });
    if leader != 1 {
        m.run(&format!(
            "parliament leader transfer --to 1 --addr 10.0.0.{leader}:6379"
        ));
    }
    for line in runbook("Runbook: rolling restart") {
        m.run(&line);
    }
    eventually("node 2 leads", || {
        (common::node_status(m.http[&1])?.leader_id == Some(2)).then_some(())
    });
    assert_eq!(
        get_all(m.client[&1], &["grown".to_owned()]),
        vec![Some("yes".to_owned())]
    );
}

#[test]
fn the_runbook_to_back_up_and_restore_works_as_written() {
    let mut m = Machines::new("runbook-backup");
    std::fs::create_dir_all(m.dir.0.join("backups")).unwrap();
    m.found();
    set_until_ok(m.client[&1], "kept", "yes");
    let old_id = eventually("node 1 reports", || common::node_status(m.http[&1])).cluster_id;
    for line in runbook("Runbook: back up and restore") {
        m.run(&line);
    }
    assert_eq!(m.voters(1), vec![1, 2, 3]);
    assert_eq!(
        get_all(m.client[&3], &["kept".to_owned(), "founded".to_owned()]),
        vec![Some("yes".to_owned()), Some("yes".to_owned())]
    );
    let new_id = eventually("node 1 reports", || common::node_status(m.http[&1])).cluster_id;
    assert_ne!(new_id, old_id, "the restored cluster is a new cluster");
    set_until_ok(m.client[&2], "after", "yes");
}
