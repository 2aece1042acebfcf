//! Jepsen in miniature, with real processes: clients read, write,
//! compare-and-swap and increment a few keys through every node of a
//! three-node cluster while nodes are killed with SIGKILL and restarted. The
//! history they record is checked by the project's linearizability checker,
//! in process and through `parliament check` on the written file.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is its job

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ServeCluster, eventually};
use testkit::check::{self, History, Op, Outcome, Ret};

const CLIENTS: u64 = 6;
const KEYS: u64 = 3;

/// A tiny deterministic generator per client (xorshift).
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// How a request ended, as far as the client can tell.
enum Answer {
    Value(redis::Value),
    /// The server said no: nothing was applied.
    Refused,
    /// No answer, or the server said it does not know.
    Unknown,
}

fn ask(con: &mut redis::Connection, cmd: &redis::Cmd) -> Answer {
    match cmd.query::<redis::Value>(con) {
        Ok(v) => Answer::Value(v),
        Err(e) if e.code() == Some("UNCERTAIN") => Answer::Unknown,
        Err(e) if e.code().is_some() => Answer::Refused,
        Err(_) => Answer::Unknown,
    }
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

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

    let history = Arc::new(Mutex::new(History::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let next_process = Arc::new(AtomicU64::new(CLIENTS));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (history, stop, next_process) =
                (history.clone(), stop.clone(), next_process.clone());
            let ports = ports.clone();
            std::thread::spawn(move || {
                let now = move || started.elapsed().as_nanos() as u64;
                let mut dice = Dice(0x9E37_79B9_7F4A_7C15 ^ (c + 1));
                let mut process = c;
                let mut con: Option<redis::Connection> = None;
                let mut counter = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Some(connection) = con.as_mut() else {
                        let port = ports[dice.below(ports.len() as u64) as usize];
                        let client =
                            redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
                        match client.get_connection_with_timeout(Duration::from_millis(500)) {
                            Ok(c) => {
                                c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                                con = Some(c);
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(50)),
                        }
                        continue;
                    };
                    let key = format!("k{}", dice.below(KEYS));
                    counter += 1;
                    let unique = format!("{}", (c + 1) * 1_000_000 + counter);
                    let (op, cmd) = match dice.below(10) {
                        0..=3 => (Op::Read, redis::cmd("GET").arg(&key).clone()),
                        4..=6 => (
                            Op::Write(unique.clone()),
                            redis::cmd("SET").arg(&key).arg(&unique).clone(),
                        ),
                        7 | 8 => {
                            // Compare against a value this client may have seen.
                            let expected = (dice.below(3) > 0).then(|| {
                                format!(
                                    "{}",
                                    (dice.below(CLIENTS) + 1) * 1_000_000 + dice.below(counter + 1)
                                )
                            });
                            let cmd = match &expected {
                                Some(e) => redis::cmd("CAS").arg(&key).arg(e).arg(&unique).clone(),
                                None => redis::cmd("SETNX").arg(&key).arg(&unique).clone(),
                            };
                            (
                                Op::Cas {
                                    expected,
                                    new: unique.clone(),
                                },
                                cmd,
                            )
                        }
                        _ => (Op::Incr(1), redis::cmd("INCRBY").arg(&key).arg(1).clone()),
                    };
                    let id =
                        history
                            .lock()
                            .unwrap()
                            .invoke(process, op.clone(), key.clone(), now());
                    let answer = ask(connection, &cmd);
                    let broken = matches!(answer, Answer::Unknown);
                    let outcome = match (&op, answer) {
                        (Op::Read, Answer::Value(redis::Value::Nil)) => {
                            Outcome::Ok(Ret::Read(None))
                        }
                        (Op::Read, Answer::Value(v)) => match text(&v) {
                            Some(s) => Outcome::Ok(Ret::Read(Some(s))),
                            None => panic!("GET answered {v:?}"),
                        },
                        (Op::Read, _) => Outcome::Fail,
                        (Op::Write(_), Answer::Value(_)) => Outcome::Ok(Ret::Write),
                        (Op::Cas { .. }, Answer::Value(redis::Value::Int(1))) => {
                            Outcome::Ok(Ret::Cas)
                        }
                        (Op::Cas { .. }, Answer::Value(redis::Value::Int(0))) => Outcome::Fail,
                        (Op::Incr(_), Answer::Value(redis::Value::Int(n))) => {
                            Outcome::Ok(Ret::Incr(n))
                        }
                        (_, Answer::Value(v)) => panic!("{op:?} answered {v:?}"),
                        (_, Answer::Refused) => Outcome::Fail,
                        (_, Answer::Unknown) => Outcome::Info,
                    };
                    let in_doubt = outcome == Outcome::Info;
                    history
                        .lock()
                        .unwrap()
                        .complete(id, outcome, now())
                        .unwrap();
                    if in_doubt {
                        // Jepsen's rule: a process with an operation in doubt
                        // is done; the client goes on as a new one.
                        process = next_process.fetch_add(1, Ordering::Relaxed);
                    }
                    if broken {
                        con = None; // and through a new connection
                    }
                }
            })
        })
        .collect();

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
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    let history = history.lock().unwrap();
    let acknowledged = history
        .operations()
        .iter()
        .filter(|o| matches!(o.outcome(), Outcome::Ok(_)))
        .count();
    let in_doubt = history
        .operations()
        .iter()
        .filter(|o| matches!(o.outcome(), Outcome::Info))
        .count();
    eprintln!(
        "{} operations, {acknowledged} acknowledged, {in_doubt} in doubt",
        history.len()
    );
    assert!(
        acknowledged > 100,
        "only {acknowledged} operations were acknowledged"
    );
    let verdict = check::check_history(&history, &check::Options::default());
    assert!(verdict.linearizable, "{verdict}");

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
