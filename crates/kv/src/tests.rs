//! Behaviour tests of the state machine against Redis semantics, sessions,
//! encoding and snapshots.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(b(s))
}

fn err(text: &str) -> Reply {
    Reply::Error(text.to_owned())
}

fn set(key: &str, value: &str) -> Command {
    Command::Set {
        key: b(key),
        value: b(value),
        condition: SetCondition::None,
        get: false,
    }
}

fn set_with(key: &str, value: &str, condition: SetCondition, get: bool) -> Command {
    Command::Set {
        key: b(key),
        value: b(value),
        condition,
        get,
    }
}

fn get(key: &str) -> Command {
    Command::Get(b(key))
}

fn keys(list: &[&str]) -> Vec<Bytes> {
    list.iter().map(|k| b(k)).collect()
}

/// A store plus the next log index to apply at.
struct Node {
    store: Store,
    index: u64,
}

impl Node {
    fn new() -> Node {
        Node::with(Store::new())
    }

    fn with(store: Store) -> Node {
        Node { store, index: 1 }
    }

    fn request(&mut self, request: &Request) -> Reply {
        let index = self.index;
        self.index += 1;
        self.store.apply(index, request)
    }

    fn run(&mut self, command: Command) -> Reply {
        self.request(&Request::anonymous(command))
    }

    fn session(&mut self, client: u64, seq: u64, ack_below: u64, command: Command) -> Reply {
        self.request(&Request {
            client: ClientId(client),
            seq: Seq(seq),
            ack_below: Seq(ack_below),
            command,
        })
    }

    fn version(&self, key: &str) -> u64 {
        self.store.version(&b(key))
    }
}

// ---- command semantics ----

#[test]
fn get_and_set() {
    let mut n = Node::new();
    assert_eq!(n.run(get("a")), Reply::Nil);
    assert_eq!(n.run(set("a", "1")), Reply::ok());
    assert_eq!(n.run(get("a")), bulk("1"));
    assert_eq!(n.run(set("a", "2")), Reply::ok());
    assert_eq!(n.store.read(&get("a")), bulk("2"));
    assert_eq!(n.run(set("", "empty key")), Reply::ok());
    assert_eq!(n.run(get("")), bulk("empty key"));
}

#[test]
fn set_conditions_and_get_flag() {
    use SetCondition::{Nx, Xx};
    let mut n = Node::new();
    // XX on an absent key: not set, nil.
    assert_eq!(n.run(set_with("k", "x", Xx, false)), Reply::Nil);
    assert_eq!(n.run(get("k")), Reply::Nil);
    // NX on an absent key: set.
    assert_eq!(n.run(set_with("k", "1", Nx, false)), Reply::ok());
    // NX on a present key: nil, unchanged.
    assert_eq!(n.run(set_with("k", "2", Nx, false)), Reply::Nil);
    assert_eq!(n.run(get("k")), bulk("1"));
    // XX on a present key: set.
    assert_eq!(n.run(set_with("k", "3", Xx, false)), Reply::ok());
    assert_eq!(n.run(get("k")), bulk("3"));
    // GET returns the old value, whether or not the condition held.
    assert_eq!(
        n.run(set_with("k", "4", SetCondition::None, true)),
        bulk("3")
    );
    assert_eq!(n.run(set_with("k", "5", Nx, true)), bulk("4"));
    assert_eq!(n.run(get("k")), bulk("4"));
    assert_eq!(
        n.run(set_with("new", "v", SetCondition::None, true)),
        Reply::Nil
    );
    assert_eq!(n.run(get("new")), bulk("v"));
    assert_eq!(n.run(set_with("absent", "v", Xx, true)), Reply::Nil);
    assert_eq!(n.run(get("absent")), Reply::Nil);
    assert_eq!(n.run(set_with("fresh", "v", Nx, true)), Reply::Nil);
    assert_eq!(n.run(get("fresh")), bulk("v"));
}

#[test]
fn setnx_getset_getdel() {
    let mut n = Node::new();
    assert_eq!(n.run(Command::SetNx(b("k"), b("1"))), Reply::Integer(1));
    assert_eq!(n.run(Command::SetNx(b("k"), b("2"))), Reply::Integer(0));
    assert_eq!(n.run(get("k")), bulk("1"));
    assert_eq!(n.run(Command::GetSet(b("k"), b("3"))), bulk("1"));
    assert_eq!(n.run(Command::GetSet(b("g"), b("x"))), Reply::Nil);
    assert_eq!(n.run(get("g")), bulk("x"));
    assert_eq!(n.run(Command::GetDel(b("k"))), bulk("3"));
    assert_eq!(n.run(get("k")), Reply::Nil);
    assert_eq!(n.run(Command::GetDel(b("k"))), Reply::Nil);
}

#[test]
fn del_and_exists_count() {
    let mut n = Node::new();
    n.run(Command::MSet(vec![(b("a"), b("1")), (b("b"), b("2"))]));
    // EXISTS counts a repeated key each time.
    assert_eq!(
        n.run(Command::Exists(keys(&["a", "a", "b", "c"]))),
        Reply::Integer(3)
    );
    // DEL counts each removed key once.
    assert_eq!(
        n.run(Command::Del(keys(&["a", "a", "c"]))),
        Reply::Integer(1)
    );
    assert_eq!(n.run(Command::Del(keys(&["a", "b"]))), Reply::Integer(1));
    assert_eq!(n.run(Command::DbSize), Reply::Integer(0));
    assert_eq!(n.run(Command::Del(vec![])), Reply::Integer(0));
}

#[test]
fn incr_family() {
    let mut n = Node::new();
    let incr = |k: &str, d: i64| Command::IncrBy {
        key: b(k),
        delta: d,
    };
    assert_eq!(n.run(incr("c", 1)), Reply::Integer(1));
    assert_eq!(n.run(incr("c", 41)), Reply::Integer(42));
    assert_eq!(n.run(incr("c", -50)), Reply::Integer(-8));
    assert_eq!(n.run(get("c")), bulk("-8"));
    // Non-integers, including forms Redis rejects.
    for bad in ["abc", "1.5", " 1", "01", "+1", "", "99999999999999999999"] {
        n.run(set("s", bad));
        assert_eq!(n.run(incr("s", 1)), err(errors::NOT_AN_INTEGER), "{bad:?}");
        assert_eq!(n.run(get("s")), bulk(bad), "value unchanged");
    }
    // Overflow in both directions leaves the value alone.
    n.run(set("max", &i64::MAX.to_string()));
    assert_eq!(n.run(incr("max", 1)), err(errors::OVERFLOW));
    assert_eq!(n.run(get("max")), bulk("9223372036854775807"));
    n.run(set("min", &i64::MIN.to_string()));
    assert_eq!(n.run(incr("min", -1)), err(errors::OVERFLOW));
    assert_eq!(n.run(incr("min", 1)), Reply::Integer(i64::MIN + 1));
    assert_eq!(n.run(incr("zero", i64::MIN)), Reply::Integer(i64::MIN));
    assert_eq!(n.run(get("zero")), bulk("-9223372036854775808"));
    // DECRBY i64::MIN cannot be expressed as an increment.
    assert_eq!(
        Command::decr_by(b("x"), i64::MIN),
        Err(err("ERR decrement would overflow"))
    );
    let decr = Command::decr_by(b("d"), 5).expect("representable");
    assert_eq!(n.run(decr), Reply::Integer(-5));
}

#[test]
fn append_and_strlen() {
    let mut n = Node::new();
    assert_eq!(n.run(Command::Strlen(b("k"))), Reply::Integer(0));
    assert_eq!(
        n.run(Command::Append(b("k"), b("Hello"))),
        Reply::Integer(5)
    );
    assert_eq!(
        n.run(Command::Append(b("k"), b(" World"))),
        Reply::Integer(11)
    );
    assert_eq!(n.run(get("k")), bulk("Hello World"));
    assert_eq!(n.run(Command::Strlen(b("k"))), Reply::Integer(11));
    assert_eq!(n.run(Command::Append(b("e"), b(""))), Reply::Integer(0));
    assert_eq!(n.run(Command::Exists(keys(&["e"]))), Reply::Integer(1));
}

#[test]
fn mget_and_mset() {
    let mut n = Node::new();
    assert_eq!(
        n.run(Command::MSet(vec![
            (b("a"), b("1")),
            (b("b"), b("2")),
            (b("a"), b("3")),
        ])),
        Reply::ok()
    );
    assert_eq!(
        n.run(Command::MGet(keys(&["a", "b", "c"]))),
        Reply::Array(vec![bulk("3"), bulk("2"), Reply::Nil])
    );
    // Every key of one MSET carries the same version: one atomic write.
    assert_eq!(n.version("a"), n.version("b"));
}

#[test]
fn compare_and_swap() {
    let mut n = Node::new();
    let cas = |expected: Option<&str>, new: &str| Command::Cas {
        key: b("k"),
        expected: expected.map(b),
        new: b(new),
    };
    assert_eq!(n.run(cas(Some("x"), "1")), Reply::Integer(0));
    assert_eq!(n.run(get("k")), Reply::Nil);
    assert_eq!(n.run(cas(None, "1")), Reply::Integer(1));
    assert_eq!(n.run(cas(None, "2")), Reply::Integer(0));
    assert_eq!(n.run(cas(Some("2"), "3")), Reply::Integer(0));
    assert_eq!(n.run(cas(Some("1"), "3")), Reply::Integer(1));
    assert_eq!(n.run(get("k")), bulk("3"));
}

#[test]
fn flushall_dbsize_keys() {
    let mut n = Node::new();
    for k in ["user:2", "user:1", "session:9", "user:10"] {
        n.run(set(k, "v"));
    }
    assert_eq!(n.run(Command::DbSize), Reply::Integer(4));
    assert_eq!(
        n.run(Command::Keys(b("user:*"))),
        Reply::Array(vec![bulk("user:1"), bulk("user:10"), bulk("user:2")])
    );
    assert_eq!(
        n.run(Command::Keys(b("user:?"))),
        Reply::Array(vec![bulk("user:1"), bulk("user:2")])
    );
    assert_eq!(n.run(Command::FlushAll), Reply::ok());
    assert_eq!(n.run(Command::DbSize), Reply::Integer(0));
    assert_eq!(n.run(Command::Keys(b("*"))), Reply::Array(vec![]));
}

#[test]
fn read_path_rejects_writes() {
    let mut n = Node::new();
    n.run(set("k", "v"));
    let before = n.store.clone();
    assert_eq!(
        n.store.read(&set("k", "w")),
        err(errors::WRITE_ON_READ_PATH)
    );
    assert_eq!(n.store, before);
    assert_eq!(n.store.read(&get("k")), bulk("v"));
    for c in [get("k"), Command::DbSize, Command::Version(b("k"))] {
        assert!(c.is_read_only());
    }
    for c in [set("k", "v"), Command::FlushAll, Command::GetDel(b("k"))] {
        assert!(!c.is_read_only());
    }
}

// ---- versions and transactions ----

#[test]
fn versions_change_exactly_on_modification() {
    let mut n = Node::new();
    let absent = n.version("k");
    n.run(set("k", "1"));
    let v1 = n.version("k");
    assert_ne!(v1, absent);
    n.run(set("other", "x"));
    assert_eq!(n.version("k"), v1, "unrelated write");
    n.run(set_with("k", "2", SetCondition::Nx, false));
    assert_eq!(n.version("k"), v1, "a failed SET NX is no modification");
    n.run(Command::IncrBy {
        key: b("k"),
        delta: 1,
    });
    let v2 = n.version("k");
    assert!(v2 > v1);
    assert_eq!(
        n.run(Command::Version(b("k"))),
        Reply::Integer(i64::try_from(v2).expect("small"))
    );
    n.run(Command::Del(keys(&["k"])));
    assert_ne!(n.version("k"), v2);
}

fn exec(watches: Vec<(Bytes, u64)>, commands: Vec<Command>) -> Command {
    Command::Exec { watches, commands }
}

#[test]
fn exec_applies_all_when_watches_hold() {
    let mut n = Node::new();
    n.run(set("k", "1"));
    let v = n.version("k");
    let reply = n.run(exec(
        vec![(b("k"), v)],
        vec![
            Command::IncrBy {
                key: b("k"),
                delta: 1,
            },
            get("k"),
            set("j", "x"),
            Command::IncrBy {
                key: b("j"),
                delta: 1,
            },
        ],
    ));
    assert_eq!(
        reply,
        Reply::Array(vec![
            Reply::Integer(2),
            bulk("2"),
            Reply::ok(),
            err(errors::NOT_AN_INTEGER),
        ])
    );
    assert_eq!(n.run(get("j")), bulk("x"));
}

#[test]
fn exec_aborts_when_watched_key_changes() {
    let mut n = Node::new();
    n.run(set("k", "1"));
    let v = n.version("k");
    n.run(set("k", "1"));
    let reply = n.run(exec(vec![(b("k"), v)], vec![set("k", "tx")]));
    assert_eq!(reply, Reply::NilArray);
    assert_eq!(n.run(get("k")), bulk("1"));
}

#[test]
fn exec_aborts_when_watched_absent_key_is_created() {
    let mut n = Node::new();
    let v = n.version("k");
    n.run(set("k", "other client"));
    let reply = n.run(exec(vec![(b("k"), v)], vec![set("k", "tx")]));
    assert_eq!(reply, Reply::NilArray);
    assert_eq!(n.run(get("k")), bulk("other client"));

    // Watching an absent key is not disturbed by unrelated sets.
    let v = n.version("absent");
    n.run(set("unrelated", "x"));
    let reply = n.run(exec(vec![(b("absent"), v)], vec![set("absent", "tx")]));
    assert_eq!(reply, Reply::Array(vec![Reply::ok()]));
}

#[test]
fn exec_aborts_when_watched_key_is_deleted_or_recreated() {
    let mut n = Node::new();
    n.run(set("k", "1"));
    let v = n.version("k");
    n.run(Command::Del(keys(&["k"])));
    assert_eq!(
        n.run(exec(vec![(b("k"), v)], vec![get("k")])),
        Reply::NilArray
    );

    n.run(set("k", "1"));
    let v = n.version("k");
    n.run(Command::Del(keys(&["k"])));
    n.run(set("k", "1"));
    assert_eq!(
        n.run(exec(vec![(b("k"), v)], vec![get("k")])),
        Reply::NilArray
    );

    // Absent, created, deleted again: back to absent, but a new version.
    let v = n.version("z");
    n.run(set("z", "1"));
    n.run(Command::Del(keys(&["z"])));
    assert_eq!(
        n.run(exec(vec![(b("z"), v)], vec![get("z")])),
        Reply::NilArray
    );

    // FLUSHALL changes every version.
    n.run(set("f", "1"));
    let present = n.version("f");
    let absent = n.version("nothing");
    n.run(Command::FlushAll);
    assert_eq!(
        n.run(exec(vec![(b("f"), present)], vec![])),
        Reply::NilArray
    );
    assert_eq!(
        n.run(exec(vec![(b("nothing"), absent)], vec![])),
        Reply::NilArray
    );
}

#[test]
fn exec_rejects_nesting_and_reads_via_read_path() {
    let mut n = Node::new();
    n.run(set("k", "1"));
    let inner = exec(vec![], vec![set("k", "2")]);
    assert_eq!(
        n.run(exec(vec![], vec![set("j", "1"), inner.clone()])),
        Reply::Array(vec![Reply::ok(), err(errors::NESTED_MULTI)])
    );
    assert_eq!(n.run(get("k")), bulk("1"));
    let read_tx = exec(
        vec![(b("k"), n.version("k"))],
        vec![get("k"), Command::DbSize],
    );
    assert!(read_tx.is_read_only());
    assert_eq!(
        n.store.read(&read_tx),
        Reply::Array(vec![bulk("1"), Reply::Integer(2)])
    );
    assert!(!exec(vec![], vec![inner]).is_read_only());
    let stale = exec(vec![(b("k"), n.version("k") + 100)], vec![get("k")]);
    assert_eq!(n.store.read(&stale), Reply::NilArray);
}

// ---- sessions ----

#[test]
fn retried_seq_returns_original_reply_without_reapplying() {
    let mut n = Node::new();
    let incr = || Command::IncrBy {
        key: b("c"),
        delta: 1,
    };
    assert_eq!(n.session(7, 1, 0, incr()), Reply::Integer(1));
    assert_eq!(n.session(7, 1, 0, incr()), Reply::Integer(1));
    assert_eq!(n.session(7, 1, 0, incr()), Reply::Integer(1));
    assert_eq!(n.run(get("c")), bulk("1"));
    // Another client's seq 1 is its own.
    assert_eq!(n.session(8, 1, 0, incr()), Reply::Integer(2));
    // Pipelined: seq 3 reaches the log before seq 2.
    assert_eq!(n.session(7, 3, 0, incr()), Reply::Integer(3));
    assert_eq!(n.session(7, 2, 0, incr()), Reply::Integer(4));
    assert_eq!(n.session(7, 3, 0, incr()), Reply::Integer(3));
    assert_eq!(n.run(get("c")), bulk("4"));
    // Client 0 has no session: applied every time.
    assert_eq!(n.session(0, 1, 0, incr()), Reply::Integer(5));
    assert_eq!(n.session(0, 1, 0, incr()), Reply::Integer(6));
}

#[test]
fn ack_below_prunes_cached_replies() {
    let mut n = Node::new();
    for seq in 1..=3 {
        n.session(1, seq, 0, set("k", &seq.to_string()));
    }
    // Acknowledging below 3 drops seqs 1 and 2.
    assert_eq!(n.session(1, 4, 3, set("k", "4")), Reply::ok());
    let sessions = &n.store.sessions.by_client;
    let cached: Vec<u64> = sessions[&ClientId(1)].replies.keys().map(|s| s.0).collect();
    assert_eq!(cached, vec![3, 4]);
    // A late duplicate of an acknowledged seq is refused and changes nothing.
    assert_eq!(n.session(1, 2, 3, set("k", "late")), err(errors::DUPLICATE));
    assert_eq!(n.run(get("k")), bulk("4"));
    // Seq 3 is still answered from the cache.
    assert_eq!(n.session(1, 3, 3, set("k", "again")), Reply::ok());
    assert_eq!(n.run(get("k")), bulk("4"));
}

#[test]
fn per_client_reply_cache_is_bounded() {
    let mut n = Node::with(Store::with_limits(SessionLimits {
        max_sessions: 10,
        max_replies: 4,
    }));
    for seq in 1..=10 {
        n.session(1, seq, 0, set("k", &seq.to_string()));
    }
    let session = &n.store.sessions.by_client[&ClientId(1)];
    assert_eq!(session.replies.len(), 4);
    assert_eq!(session.pruned_below, Seq(7));
    // Dropped replies count as acknowledged: a retry is refused, not re-applied.
    assert_eq!(
        n.session(1, 3, 0, set("k", "retry")),
        err(errors::DUPLICATE)
    );
    assert_eq!(n.run(get("k")), bulk("10"));
}

#[test]
fn session_count_is_bounded_with_lru_eviction() {
    let mut n = Node::with(Store::with_limits(SessionLimits {
        max_sessions: 2,
        max_replies: 8,
    }));
    let incr = || Command::IncrBy {
        key: b("c"),
        delta: 1,
    };
    n.session(1, 1, 0, incr());
    n.session(2, 1, 0, incr());
    // Client 1 is used again, so client 2 is now the least recent.
    assert_eq!(n.session(1, 1, 0, incr()), Reply::Integer(1));
    n.session(3, 1, 0, incr());
    assert_eq!(n.store.session_count(), 2);
    let clients: Vec<u64> = n.store.sessions.by_client.keys().map(|c| c.0).collect();
    assert_eq!(clients, vec![1, 3]);
    assert_eq!(n.store.sessions.lru.len(), 2);
    // Client 1's retry is still deduplicated.
    assert_eq!(n.session(1, 1, 0, incr()), Reply::Integer(1));
    // The evicted client 2 is forgotten: its retry applies again (the
    // documented cost of eviction).
    assert_eq!(n.session(2, 1, 0, incr()), Reply::Integer(4));
    assert_eq!(n.store.session_count(), 2);
}

#[test]
#[should_panic(expected = "indices must increase")]
fn apply_rejects_non_increasing_index() {
    let mut store = Store::new();
    store.apply(5, &Request::anonymous(get("k")));
    store.apply(5, &Request::anonymous(get("k")));
}

// ---- random generation (deterministic) ----

/// The project's seeded generator, so failures reproduce.
struct Gen(paxos::rng::Rng);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn key(&mut self) -> Bytes {
        Bytes::from(format!("k{}", self.below(12)))
    }

    fn value(&mut self) -> Bytes {
        match self.below(4) {
            0 => Bytes::from(self.below(100).to_string()),
            1 => Bytes::new(),
            2 => Bytes::from(
                (0..self.below(20))
                    .map(|_| self.next() as u8)
                    .collect::<Vec<u8>>(),
            ),
            _ => Bytes::from(format!("v{}", self.below(1000))),
        }
    }

    fn keys(&mut self) -> Vec<Bytes> {
        (0..self.below(4)).map(|_| self.key()).collect()
    }

    fn u64(&mut self) -> u64 {
        match self.below(3) {
            0 => self.below(10),
            1 => u64::MAX - self.below(3),
            _ => self.next(),
        }
    }

    fn command(&mut self, depth: usize) -> Command {
        let kinds = if depth == 0 { 21 } else { 20 };
        match self.below(kinds) {
            0 => Command::Get(self.key()),
            1 => Command::Set {
                key: self.key(),
                value: self.value(),
                condition: [SetCondition::None, SetCondition::Nx, SetCondition::Xx]
                    [self.below(3) as usize],
                get: self.below(2) == 1,
            },
            2 => Command::SetNx(self.key(), self.value()),
            3 => Command::GetSet(self.key(), self.value()),
            4 => Command::GetDel(self.key()),
            5 => Command::Del(self.keys()),
            6 => Command::Exists(self.keys()),
            7 => Command::IncrBy {
                key: self.key(),
                delta: [1, -1, i64::MAX, i64::MIN, self.next() as i64][self.below(5) as usize],
            },
            8 => Command::Append(self.key(), self.value()),
            9 => Command::Strlen(self.key()),
            10 => Command::MGet(self.keys()),
            11 => Command::MSet(
                (0..self.below(4))
                    .map(|_| (self.key(), self.value()))
                    .collect(),
            ),
            12 => Command::Cas {
                key: self.key(),
                expected: if self.below(2) == 0 {
                    None
                } else {
                    Some(self.value())
                },
                new: self.value(),
            },
            13 => {
                if self.below(10) == 0 {
                    Command::FlushAll
                } else {
                    Command::Del(self.keys())
                }
            }
            14 => Command::DbSize,
            15 => Command::Keys(Bytes::from_static(b"k[0-5]*")),
            16 => Command::Scan {
                cursor: self.u64(),
                pattern: if self.below(2) == 0 {
                    None
                } else {
                    Some(Bytes::from_static(b"k1*"))
                },
                count: self.u64() as usize,
            },
            17 => Command::Version(self.key()),
            18 | 19 => Command::Set {
                key: self.key(),
                value: self.value(),
                condition: SetCondition::None,
                get: false,
            },
            _ => Command::Exec {
                watches: (0..self.below(3))
                    .map(|_| (self.key(), self.below(40)))
                    .collect(),
                commands: (0..self.below(4))
                    .map(|_| self.command(depth + 1))
                    .collect(),
            },
        }
    }

    fn request(&mut self) -> Request {
        Request {
            client: ClientId(self.below(4)),
            seq: Seq(self.below(30)),
            ack_below: Seq(self.below(10)),
            command: self.command(0),
        }
    }
}

// ---- encoding ----

#[test]
fn requests_round_trip() {
    let mut g = Gen(paxos::rng::Rng::new(0x1234_5678_9abc_def1));
    let mut tags = BTreeSet::new();
    for _ in 0..5000 {
        let r = g.request();
        let encoded = r.encode();
        assert_eq!(encoded[0], REQUEST_FORMAT);
        tags.insert(encoded[4..].first().copied());
        assert_eq!(Request::decode(&encoded), Ok(r.clone()), "{r:?}");
    }
    // The generator reaches every command tag (1 through 19).
    assert_eq!(tags, (1..=19).map(Some).collect::<BTreeSet<_>>());
    // Extremes of the fixed fields.
    let r = Request {
        client: ClientId(u64::MAX),
        seq: Seq(u64::MAX),
        ack_below: Seq(0),
        command: Command::Scan {
            cursor: u64::MAX,
            pattern: Some(Bytes::new()),
            count: usize::MAX,
        },
    };
    assert_eq!(Request::decode(&r.encode()), Ok(r));
}

#[test]
fn replies_round_trip() {
    let replies = vec![
        Reply::ok(),
        err(errors::OVERFLOW),
        Reply::Integer(i64::MIN),
        Reply::Integer(i64::MAX),
        Reply::Bulk(Bytes::from_static(&[0, 255, 10])),
        Reply::Nil,
        Reply::NilArray,
        Reply::Array(vec![]),
        Reply::Array(vec![
            Reply::Nil,
            Reply::Array(vec![bulk("x"), Reply::Integer(3)]),
        ]),
    ];
    for r in replies {
        assert_eq!(decode_reply(&encode_reply(&r)), Ok(r));
    }
}

#[test]
fn every_truncation_fails_to_decode() {
    let mut g = Gen(paxos::rng::Rng::new(99));
    for _ in 0..300 {
        let encoded = g.request().encode();
        for cut in 0..encoded.len() {
            assert!(
                Request::decode(&encoded[..cut]).is_err(),
                "prefix {cut} of {encoded:?} decoded"
            );
        }
        let mut longer = encoded.to_vec();
        longer.push(0);
        assert_eq!(Request::decode(&longer), Err(DecodeError::TrailingBytes(1)));
    }
}

#[test]
fn garbage_never_panics_and_lengths_are_checked() {
    assert_eq!(Request::decode(&[]), Err(DecodeError::Empty("request")));
    assert_eq!(
        Request::decode(&[9]),
        Err(DecodeError::UnknownFormat {
            what: "request",
            found: 9,
            expected: REQUEST_FORMAT
        })
    );
    // A GET whose key claims to be 2^62 bytes long.
    let mut forged = vec![REQUEST_FORMAT, 0, 0, 0, 1];
    forged.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
    assert!(matches!(
        Request::decode(&forged),
        Err(DecodeError::LengthTooLong { .. })
    ));
    // A varint that never ends.
    let endless = [
        REQUEST_FORMAT,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0x01,
    ];
    assert!(matches!(
        Request::decode(&endless),
        Err(DecodeError::VarintOverflow(_))
    ));
    // Exec nested past the limit.
    let mut deep = vec![REQUEST_FORMAT, 0, 0, 0];
    for _ in 0..=MAX_NESTING + 1 {
        deep.extend_from_slice(&[18, 0, 1]);
    }
    deep.push(15);
    assert_eq!(
        Request::decode(&deep),
        Err(DecodeError::TooDeep(MAX_NESTING))
    );
    // Out-of-range flag bytes in a SET.
    let valid = Request::anonymous(set("k", "v")).encode().to_vec();
    let n = valid.len();
    let mut bad_condition = valid.clone();
    bad_condition[n - 2] = 3;
    assert!(matches!(
        Request::decode(&bad_condition),
        Err(DecodeError::UnknownTag { .. })
    ));
    let mut bad_flag = valid.clone();
    bad_flag[n - 1] = 2;
    assert!(matches!(
        Request::decode(&bad_flag),
        Err(DecodeError::UnknownTag { .. })
    ));
    let mut bad_tag = valid;
    bad_tag[4] = 200;
    assert!(matches!(
        Request::decode(&bad_tag),
        Err(DecodeError::UnknownTag { .. })
    ));
    // Random bytes, and random mutations of valid requests.
    let mut g = Gen(paxos::rng::Rng::new(7));
    for _ in 0..20_000 {
        let len = g.below(40) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| g.next() as u8).collect();
        if let Some(first) = bytes.first_mut() {
            *first = REQUEST_FORMAT;
        }
        let _ = Request::decode(&bytes);
        let mut valid = g.request().encode().to_vec();
        let at = g.below(valid.len() as u64) as usize;
        valid[at] = g.next() as u8;
        let _ = Request::decode(&valid);
    }
}

// ---- snapshots ----

/// A store that went through many random requests, with sessions.
fn busy_store(seed: u64, requests: usize) -> (Store, Gen) {
    let mut g = Gen(paxos::rng::Rng::new(seed));
    let mut n = Node::with(Store::with_limits(SessionLimits {
        max_sessions: 3,
        max_replies: 5,
    }));
    for _ in 0..requests {
        let r = g.request();
        n.request(&r);
    }
    (n.store, g)
}

fn snapshot(store: &Store) -> Vec<u8> {
    let mut out = Vec::new();
    store.snapshot_to(&mut out).expect("writing to memory");
    out
}

#[test]
fn replicas_applying_the_same_log_are_identical() {
    let (a, _) = busy_store(42, 2000);
    let (b, _) = busy_store(42, 2000);
    assert_eq!(a, b);
    assert_eq!(snapshot(&a), snapshot(&b));
    assert!(!a.is_empty());
    assert!(a.session_count() > 0);
}

#[test]
fn snapshot_round_trip() {
    for seed in [1, 2, 3] {
        let (store, mut g) = busy_store(seed, 1500);
        let image = snapshot(&store);
        assert_eq!(&image[..8], &SNAPSHOT_MAGIC);
        let restored = Store::restore_from(&mut image.as_slice()).expect("valid snapshot");
        assert_eq!(restored, store);
        // The restored store keeps behaving identically.
        let mut a = Node::with(store);
        let mut b = Node::with(restored);
        a.index = a.store.last_applied().map_or(1, |i| i + 1);
        b.index = a.index;
        for _ in 0..500 {
            let r = g.request();
            assert_eq!(a.request(&r), b.request(&r));
        }
        assert_eq!(a.store, b.store);
    }
    let empty = Store::new();
    let restored = Store::restore_from(&mut snapshot(&empty).as_slice()).expect("valid");
    assert_eq!(restored, empty);
}

#[test]
fn snapshot_corruption_is_detected() {
    let mut n = Node::new();
    n.run(set("alpha", "1"));
    n.run(set("beta", "two"));
    n.session(
        5,
        1,
        0,
        Command::IncrBy {
            key: b("n"),
            delta: 3,
        },
    );
    n.session(5, 2, 0, Command::MGet(keys(&["alpha", "zzz"])));
    let image = snapshot(&n.store);
    for i in 0..image.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = image.clone();
            bad[i] ^= flip;
            assert!(
                Store::restore_from(&mut bad.as_slice()).is_err(),
                "flipping byte {i} with {flip:#x} went unnoticed"
            );
        }
    }
    for cut in 0..image.len() {
        assert!(
            Store::restore_from(&mut &image[..cut]).is_err(),
            "truncation at {cut} went unnoticed"
        );
    }
    assert!(matches!(
        Store::restore_from(&mut &image[..image.len() - 1]),
        Err(SnapshotError::Truncated)
    ));
    let mut longer = image.clone();
    longer.push(0);
    assert!(matches!(
        Store::restore_from(&mut longer.as_slice()),
        Err(SnapshotError::TrailingData)
    ));
    let mut wrong = image.clone();
    wrong[0] = b'X';
    assert!(matches!(
        Store::restore_from(&mut wrong.as_slice()),
        Err(SnapshotError::BadMagic)
    ));
}

/// Reads and writes at most one byte per call, as a slow socket or pipe may.
struct Trickle<T>(T);

impl<T: std::io::Read> std::io::Read for Trickle<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(1);
        self.0.read(&mut buf[..n])
    }
}

impl<T: std::io::Write> std::io::Write for Trickle<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(1);
        self.0.write(&buf[..n])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[test]
fn sessions_survive_a_snapshot() {
    let mut n = Node::new();
    let incr = || Command::IncrBy {
        key: b("c"),
        delta: 1,
    };
    assert_eq!(n.session(9, 1, 0, incr()), Reply::Integer(1));
    let image = snapshot(&n.store);
    let mut restored = Node::with(Store::restore_from(&mut image.as_slice()).expect("valid"));
    restored.index = n.index;
    // The retry reaches the log after a failover to a restored replica.
    assert_eq!(restored.session(9, 1, 0, incr()), Reply::Integer(1));
    assert_eq!(restored.run(get("c")), bulk("1"));
    assert_eq!(restored.store.last_applied(), Some(n.index + 1));
}

#[test]
fn snapshot_survives_short_reads_and_writes() {
    let (store, _) = busy_store(11, 800);
    let mut out = Trickle(Vec::new());
    store.snapshot_to(&mut out).expect("writing to memory");
    assert_eq!(out.0, snapshot(&store));
    let restored = Store::restore_from(&mut Trickle(out.0.as_slice())).expect("valid");
    assert_eq!(restored, store);
}

#[test]
fn snapshot_write_errors_propagate() {
    struct Broken;
    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (store, _) = busy_store(12, 100);
    assert!(store.snapshot_to(&mut Broken).is_err());
}

#[test]
fn a_snapshot_of_format_one_still_loads() {
    // Written by the release before cluster records: `busy_store(7, 300)`.
    let image = include_bytes!("../fixtures/snapshot-format1.bin");
    assert_eq!(image[8], 1);
    let restored = Store::restore_from(&mut image.as_slice()).expect("format 1 loads");
    assert_eq!(restored, busy_store(7, 300).0);
    assert!(restored.cluster().is_empty());
}

#[test]
fn the_cluster_record_survives_a_snapshot() {
    let (mut store, _) = busy_store(8, 200);
    store.set_cluster(Bytes::from_static(b"members 1 2 3"));
    let restored = Store::restore_from(&mut snapshot(&store).as_slice()).expect("valid");
    assert_eq!(restored.cluster(), &Bytes::from_static(b"members 1 2 3"));
    assert_eq!(restored, store);
}

#[test]
fn snapshot_rejects_other_format_versions() {
    let mut image = snapshot(&Store::new());
    image[8] = SNAPSHOT_FORMAT + 1;
    assert!(matches!(
        Store::restore_from(&mut image.as_slice()),
        Err(SnapshotError::UnsupportedFormat(_))
    ));
}

// ---- scan ----

fn scan_once(store: &Store, cursor: u64, pattern: Option<&str>, count: usize) -> (u64, Vec<Bytes>) {
    let reply = store.read(&Command::Scan {
        cursor,
        pattern: pattern.map(b),
        count,
    });
    let Reply::Array(parts) = reply else {
        panic!("scan reply is an array: {reply:?}");
    };
    let [Reply::Bulk(next), Reply::Array(found)] = parts.as_slice() else {
        panic!("scan reply is [cursor, keys]: {parts:?}");
    };
    let next: u64 = std::str::from_utf8(next)
        .expect("ascii")
        .parse()
        .expect("cursor is an integer");
    let found = found
        .iter()
        .map(|r| match r {
            Reply::Bulk(k) => k.clone(),
            other => panic!("key is bulk: {other:?}"),
        })
        .collect();
    (next, found)
}

#[test]
fn full_scan_returns_every_key_exactly_once() {
    let mut n = Node::new();
    let all: BTreeSet<Bytes> = (0..500).map(|i| Bytes::from(format!("key:{i}"))).collect();
    n.run(Command::MSet(
        all.iter().map(|k| (k.clone(), b("v"))).collect(),
    ));
    for count in [1, 7, 100, 1000, usize::MAX] {
        let mut seen = Vec::new();
        let mut cursor = 0;
        let mut calls = 0;
        loop {
            let (next, found) = scan_once(&n.store, cursor, None, count);
            seen.extend(found);
            calls += 1;
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        assert_eq!(seen.len(), all.len(), "count {count}: no key twice");
        assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), all);
        if count == 7 {
            assert!(calls >= 500 / 7);
        }
    }
    // MATCH filters but still walks everything.
    let mut matched = BTreeSet::new();
    let mut cursor = 0;
    loop {
        let (next, found) = scan_once(&n.store, cursor, Some("key:1?"), 10);
        matched.extend(found);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let expected: BTreeSet<Bytes> = (10..20).map(|i| Bytes::from(format!("key:{i}"))).collect();
    assert_eq!(matched, expected);
}

#[test]
fn scan_returns_stable_keys_despite_concurrent_changes() {
    let mut n = Node::new();
    let stable: Vec<Bytes> = (0..200)
        .map(|i| Bytes::from(format!("stable:{i}")))
        .collect();
    for k in &stable {
        n.run(Command::Set {
            key: k.clone(),
            value: b("v"),
            condition: SetCondition::None,
            get: false,
        });
    }
    let mut g = Gen(paxos::rng::Rng::new(5));
    let mut seen = BTreeSet::new();
    let mut cursor = 0;
    loop {
        let (next, found) = scan_once(&n.store, cursor, None, 5);
        seen.extend(found);
        // Between calls, other clients add and remove churn keys.
        for _ in 0..5 {
            let k = format!("churn:{}", g.below(300));
            if g.below(2) == 0 {
                n.run(set(&k, "x"));
            } else {
                n.run(Command::Del(vec![Bytes::from(k)]));
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    for k in &stable {
        assert!(seen.contains(k), "{k:?} missed");
    }
}

#[test]
fn scan_never_splits_a_hash_value() {
    // Keys that share a hash must come out in the same batch. Real
    // collisions are rare, so check the invariant the cursor relies on: each
    // batch ends just before the hash the returned cursor names.
    let mut n = Node::new();
    for i in 0..300 {
        n.run(set(&format!("h{i}"), "v"));
    }
    let mut cursor = 0;
    loop {
        let (next, found) = scan_once(&n.store, cursor, None, 3);
        assert!(!found.is_empty());
        for k in &found {
            let h = key_hash(k);
            assert!(h >= cursor);
            assert!(next == 0 || h < next, "batch key beyond the next cursor");
        }
        if next == 0 {
            break;
        }
        assert!(next > cursor);
        cursor = next;
    }
    // An empty store and a cursor past every key both finish at once.
    let empty = Store::new();
    assert_eq!(scan_once(&empty, 0, None, 10), (0, vec![]));
    assert_eq!(scan_once(&n.store, u64::MAX, None, 0).0, 0);
}
