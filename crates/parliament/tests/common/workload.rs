//! Jepsen's client workload, shared by the tests that record a history
//! against real processes: [`CLIENTS`] threads read, write,
//! compare-and-swap and increment [`KEYS`] keys through the nodes of a
//! cluster, each recording what it sees into one
//! [`testkit::check::History`], while the test does something to the
//! cluster. [`assert_linearizable`] then judges what was recorded.
//!
//! What differs between the tests is a parameter: which node a client
//! connects to (a closure of [`Workload::start`]) and when it leaves a
//! connection for another ([`Reconnect`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use testkit::check::{self, History, Op, Outcome, Ret};

/// How many clients record at once.
pub const CLIENTS: u64 = 6;
/// How many keys they share (`k0`, `k1`, ...).
pub const KEYS: u64 = 3;

/// A tiny deterministic generator per client (xorshift).
pub struct Dice(pub u64);

impl Dice {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// One of `ports`, chosen by the dice.
    pub fn pick(&mut self, ports: &[u16]) -> u16 {
        ports[self.below(ports.len() as u64) as usize]
    }
}

/// How a request ended, as far as the client can tell.
pub enum Answer {
    Value(redis::Value),
    /// The server said no (`CLUSTERDOWN`, `BUSY`, `REMOVED`, ...): nothing
    /// was applied.
    Refused,
    /// No answer, or the server said it does not know (`UNCERTAIN`).
    Unknown,
}

pub fn ask(con: &mut redis::Connection, cmd: &redis::Cmd) -> Answer {
    match cmd.query::<redis::Value>(con) {
        Ok(v) => Answer::Value(v),
        Err(e) if e.code() == Some("UNCERTAIN") => Answer::Unknown,
        Err(e) if e.code().is_some() => Answer::Refused,
        Err(_) => Answer::Unknown,
    }
}

/// The text of a bulk or simple string reply.
pub fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// When a client leaves its connection and connects again, to a node
/// chosen anew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconnect {
    /// After no answer or an answer in doubt; a refused request keeps the
    /// connection.
    WhenUnknown,
    /// After anything but an answer: a refusal (a node that was removed,
    /// say) sends the client to another node too.
    UnlessAnswered,
}

/// The clients at work; [`Workload::stop`] ends them and returns what they
/// recorded. Dropped without `stop` (a test that fails meanwhile), it
/// tells them to stop.
pub struct Workload {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    clients: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts [`CLIENTS`] clients. Each connects to the client port
    /// `port(dice)` returns, with its own dice, whenever it needs a
    /// connection, and leaves the connection as `reconnect` says.
    pub fn start<P>(port: P, reconnect: Reconnect) -> Workload
    where
        P: Fn(&mut Dice) -> u16 + Send + Sync + 'static,
    {
        let port = Arc::new(port);
        let history = Arc::new(Mutex::new(History::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let next_process = Arc::new(AtomicU64::new(CLIENTS));
        let started = Instant::now();
        let clients = (0..CLIENTS)
            .map(|c| {
                let client = Client {
                    number: c,
                    process: c,
                    dice: Dice(0x9E37_79B9_7F4A_7C15 ^ (c + 1)),
                    counter: 0,
                    started,
                    reconnect,
                    history: history.clone(),
                    next_process: next_process.clone(),
                };
                let (port, stop) = (port.clone(), stop.clone());
                std::thread::spawn(move || client.run(&*port, &stop))
            })
            .collect();
        Workload {
            stop,
            history,
            clients,
        }
    }

    /// Tells the clients to stop, waits for them, and returns the history
    /// they recorded. Fails the test if a client did.
    pub fn stop(mut self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        for client in std::mem::take(&mut self.clients) {
            client.join().unwrap();
        }
        std::mem::take(&mut *self.history.lock().unwrap())
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One client thread's state.
struct Client {
    /// Which of the [`CLIENTS`] it is.
    number: u64,
    /// The process it records as; a new one after an operation in doubt.
    process: u64,
    dice: Dice,
    /// How many operations it made, for values no one else writes.
    counter: u64,
    started: Instant,
    reconnect: Reconnect,
    history: Arc<Mutex<History>>,
    next_process: Arc<AtomicU64>,
}

impl Client {
    fn run(mut self, port: &dyn Fn(&mut Dice) -> u16, stop: &AtomicBool) {
        let mut con: Option<redis::Connection> = None;
        while !stop.load(Ordering::Relaxed) {
            let Some(connection) = con.as_mut() else {
                let port = port(&mut self.dice);
                let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
                match client.get_connection_with_timeout(Duration::from_millis(500)) {
                    Ok(c) => {
                        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                        con = Some(c);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
                continue;
            };
            if self.operation(connection) {
                con = None;
            }
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// The next operation, chosen by the dice, sent and recorded; whether
    /// to leave the connection after it.
    fn operation(&mut self, connection: &mut redis::Connection) -> bool {
        let key = format!("k{}", self.dice.below(KEYS));
        self.counter += 1;
        let unique = format!("{}", (self.number + 1) * 1_000_000 + self.counter);
        let dice = &mut self.dice;
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
                        (dice.below(CLIENTS) + 1) * 1_000_000 + dice.below(self.counter + 1)
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
        let id = self
            .history
            .lock()
            .unwrap()
            .invoke(self.process, op.clone(), key, self.now());
        let answer = ask(connection, &cmd);
        let leave = match answer {
            Answer::Value(_) => false,
            Answer::Refused => self.reconnect == Reconnect::UnlessAnswered,
            Answer::Unknown => true,
        };
        let outcome = match (&op, answer) {
            (Op::Read, Answer::Value(redis::Value::Nil)) => Outcome::Ok(Ret::Read(None)),
            (Op::Read, Answer::Value(v)) => match text(&v) {
                Some(s) => Outcome::Ok(Ret::Read(Some(s))),
                None => panic!("GET answered {v:?}"),
            },
            (Op::Read, _) => Outcome::Fail,
            (Op::Write(_), Answer::Value(_)) => Outcome::Ok(Ret::Write),
            (Op::Cas { .. }, Answer::Value(redis::Value::Int(1))) => Outcome::Ok(Ret::Cas),
            (Op::Cas { .. }, Answer::Value(redis::Value::Int(0))) => Outcome::Fail,
            (Op::Incr(_), Answer::Value(redis::Value::Int(n))) => Outcome::Ok(Ret::Incr(n)),
            (_, Answer::Value(v)) => panic!("{op:?} answered {v:?}"),
            (_, Answer::Refused) => Outcome::Fail,
            (_, Answer::Unknown) => Outcome::Info,
        };
        let in_doubt = outcome == Outcome::Info;
        self.history
            .lock()
            .unwrap()
            .complete(id, outcome, self.now())
            .unwrap();
        if in_doubt {
            // Jepsen's rule: a process with an operation in doubt is done;
            // the client goes on as a new one.
            self.process = self.next_process.fetch_add(1, Ordering::Relaxed);
        }
        leave
    }
}

/// Prints how many operations `history` holds (and, unless it is empty,
/// `during`: what happened meanwhile), expects more than
/// `min_acknowledged` of them acknowledged, and the history linearizable.
pub fn assert_linearizable(history: &History, min_acknowledged: usize, during: &str) {
    let count = |f: fn(&Outcome) -> bool| {
        history
            .operations()
            .iter()
            .filter(|o| f(o.outcome()))
            .count()
    };
    let acknowledged = count(|o| matches!(o, Outcome::Ok(_)));
    let in_doubt = count(|o| matches!(o, Outcome::Info));
    let during = if during.is_empty() {
        String::new()
    } else {
        format!(", during: {during}")
    };
    eprintln!(
        "{} operations, {acknowledged} acknowledged, {in_doubt} in doubt{during}",
        history.len()
    );
    assert!(
        acknowledged > min_acknowledged,
        "only {acknowledged} operations were acknowledged"
    );
    let verdict = check::check_history(history, &check::Options::default());
    assert!(verdict.linearizable, "{verdict}");
}
