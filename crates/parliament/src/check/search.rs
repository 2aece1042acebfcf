//! The linearizability search for the operations on one key.
//!
//! This is the Wing & Gong search as improved by Lowe: invocations and
//! returns sit in one doubly-linked list in real-time order. The search walks
//! the list from the front; at an invocation it tries to linearize that
//! operation next (apply it to the register, unlink it), at a return it has
//! met an operation that should already have been linearized and backtracks.
//! Each (set of linearized operations, register value) reached is remembered,
//! so no configuration is explored twice.
//!
//! Indeterminate operations have no return entry: they may be linearized any
//! time after their invocation, and the search succeeds once every
//! operation that completed ok is linearized, whatever remains of them.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use super::history::{History, Op, Outcome, Ret};

/// Register value: 0 is "absent", `n` is the interned value `n - 1`.
type State = u32;
const ABSENT: State = 0;

/// Values as small integers, so states are cheap to hash and compare.
#[derive(Default)]
struct Interner {
    ids: HashMap<String, State>,
    values: Vec<String>,
    /// The value read as an incr would, parsed once.
    ints: Vec<Option<i64>>,
}

impl Interner {
    fn intern(&mut self, value: &str) -> State {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        self.values.push(value.to_owned());
        self.ints.push(value.parse().ok());
        let id = self.values.len() as State;
        self.ids.insert(value.to_owned(), id);
        id
    }

    fn intern_opt(&mut self, value: Option<&str>) -> State {
        value.map_or(ABSENT, |v| self.intern(v))
    }

    fn as_int(&self, state: State) -> Option<i64> {
        match state {
            ABSENT => Some(0),
            n => self.ints.get(n as usize - 1).copied().flatten(),
        }
    }

    pub(crate) fn show(&self, state: State) -> &str {
        match state {
            ABSENT => "nil",
            n => self.values.get(n as usize - 1).map_or("?", String::as_str),
        }
    }
}

/// An operation in model form.
#[derive(Clone, Copy)]
enum Step {
    Read(State),
    Write(State),
    Cas(State, State),
    /// `result` is the returned value, parsed and interned; `None` if unknown.
    Incr {
        delta: i64,
        result: Option<(i64, State)>,
    },
}

struct KeyOp {
    /// Index into the history's operations.
    orig: usize,
    step: Step,
    /// Completed ok, so it must be linearized; otherwise it is optional.
    definite: bool,
    call_rank: u64,
    /// `u64::MAX` for indeterminate operations.
    return_rank: u64,
}

const NONE: usize = usize::MAX;
const HEAD: usize = 0;

struct Entry {
    prev: usize,
    next: usize,
    /// Index into `ops`; `NONE` for the sentinels.
    op: usize,
    is_call: bool,
    /// For a call: its return entry, or `NONE` if indeterminate.
    partner: usize,
}

/// FxHash-style mixing: the keys are already well spread, so a cheap hash is
/// enough and SipHash would dominate the search time.
#[derive(Default)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        for &b in chunks.remainder() {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastSet<T> = HashSet<T, BuildHasherDefault<FastHasher>>;

/// What the search concluded for one key.
pub(crate) enum KeyVerdict {
    Linearizable,
    /// No linearization exists.
    Violation {
        explanation: String,
        /// History indices of the longest linearizable prefix found.
        prefix: Vec<usize>,
        /// History indices of the operations that could not come next.
        stuck: Vec<usize>,
    },
    /// The step budget ran out first.
    Unknown,
}

pub(crate) struct KeySearch<'h> {
    history: &'h History,
    key: &'h str,
    ops: Vec<KeyOp>,
    entries: Vec<Entry>,
    interner: Interner,
}

impl<'h> KeySearch<'h> {
    /// `ops` are the history indices of the operations on `key`; `rank` gives
    /// each event's position in real-time order.
    pub(crate) fn new(
        history: &'h History,
        key: &'h str,
        indices: &[usize],
        rank: impl Fn(usize, bool) -> u64,
    ) -> Self {
        let mut interner = Interner::default();
        let mut ops = Vec::with_capacity(indices.len());
        for &i in indices {
            let Some(o) = history.operations().get(i) else {
                continue;
            };
            let definite = match o.outcome() {
                Outcome::Fail => continue,
                Outcome::Ok(_) => true,
                Outcome::Info => false,
            };
            let step = match (&o.op, o.outcome()) {
                (Op::Read, Outcome::Ok(Ret::Read(v))) => {
                    Step::Read(interner.intern_opt(v.as_deref()))
                }
                // An indeterminate read changes nothing and tells nothing.
                (Op::Read, _) => continue,
                (Op::Write(v), _) => Step::Write(interner.intern(v)),
                (Op::Cas { expected, new }, _) => Step::Cas(
                    interner.intern_opt(expected.as_deref()),
                    interner.intern(new),
                ),
                (Op::Incr(delta), Outcome::Ok(Ret::Incr(n))) => Step::Incr {
                    delta: *delta,
                    result: Some((*n, interner.intern(&n.to_string()))),
                },
                (Op::Incr(delta), _) => Step::Incr {
                    delta: *delta,
                    result: None,
                },
            };
            ops.push(KeyOp {
                orig: i,
                step,
                definite,
                call_rank: rank(i, true),
                return_rank: if definite { rank(i, false) } else { u64::MAX },
            });
        }

        // (rank, is_call, op) in real-time order, then linked between sentinels.
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (n, op) in ops.iter().enumerate() {
            order.push((op.call_rank, true, n));
            if op.definite {
                order.push((op.return_rank, false, n));
            }
        }
        order.sort_unstable();
        let tail = order.len() + 1;
        let mut entries = Vec::with_capacity(order.len() + 2);
        let sentinel = |prev, next| Entry {
            prev,
            next,
            op: NONE,
            is_call: false,
            partner: NONE,
        };
        entries.push(sentinel(NONE, 1));
        let mut call_entry = vec![NONE; ops.len()];
        for (pos, &(_, is_call, n)) in order.iter().enumerate() {
            let index = pos + 1;
            if is_call {
                call_entry[n] = index;
            } else if let Some(entry) = call_entry.get(n).and_then(|&c| entries.get_mut(c)) {
                entry.partner = index;
            }
            entries.push(Entry {
                prev: index - 1,
                next: index + 1,
                op: n,
                is_call,
                partner: NONE,
            });
        }
        entries.push(sentinel(tail - 1, NONE));
        KeySearch {
            history,
            key,
            ops,
            entries,
            interner,
        }
    }

    fn apply(&mut self, state: State, op: usize) -> Option<State> {
        match self.ops.get(op)?.step {
            Step::Read(v) => (state == v).then_some(state),
            Step::Write(v) => Some(v),
            Step::Cas(expected, new) => (state == expected).then_some(new),
            Step::Incr { delta, result } => {
                let sum = self.interner.as_int(state)?.checked_add(delta)?;
                match result {
                    Some((n, id)) => (sum == n).then_some(id),
                    None => Some(self.interner.intern(&sum.to_string())),
                }
            }
        }
    }

    fn lift(&mut self, call: usize) {
        let (prev, next, partner) = {
            let e = &self.entries[call];
            (e.prev, e.next, e.partner)
        };
        self.entries[prev].next = next;
        self.entries[next].prev = prev;
        if partner != NONE {
            let (prev, next) = (self.entries[partner].prev, self.entries[partner].next);
            self.entries[prev].next = next;
            self.entries[next].prev = prev;
        }
    }

    /// Undoes the matching `lift`; only valid in LIFO order.
    fn unlift(&mut self, call: usize) {
        let partner = self.entries[call].partner;
        if partner != NONE {
            let (prev, next) = (self.entries[partner].prev, self.entries[partner].next);
            self.entries[prev].next = partner;
            self.entries[next].prev = partner;
        }
        let (prev, next) = (self.entries[call].prev, self.entries[call].next);
        self.entries[prev].next = call;
        self.entries[next].prev = call;
    }

    /// Runs the search for at most `budget` steps.
    pub(crate) fn run(mut self, budget: u64) -> KeyVerdict {
        let mut remaining = self.ops.iter().filter(|o| o.definite).count();
        let words = self.ops.len().div_ceil(64);
        let mut linearized = vec![0u64; words];
        let mut seen: FastSet<(Box<[u64]>, State)> = FastSet::default();
        // (call entry, state before it) for each operation linearized so far.
        let mut stack: Vec<(usize, State)> = Vec::new();
        let mut best: Vec<usize> = Vec::new();
        let mut state = ABSENT;
        let mut entry = self.entries[HEAD].next;
        let mut steps = 0u64;
        while remaining > 0 {
            steps += 1;
            if steps > budget {
                return KeyVerdict::Unknown;
            }
            let (is_call, op, next) = {
                let e = &self.entries[entry];
                (e.is_call, e.op, e.next)
            };
            if is_call {
                if let Some(after) = self.apply(state, op) {
                    let (word, bit) = (op / 64, 1u64 << (op % 64));
                    linearized[word] |= bit;
                    if seen.insert((linearized.clone().into_boxed_slice(), after)) {
                        stack.push((entry, state));
                        state = after;
                        self.lift(entry);
                        if self.ops[op].definite {
                            remaining -= 1;
                        }
                        if stack.len() > best.len() {
                            best = stack.iter().map(|&(e, _)| self.entries[e].op).collect();
                        }
                        entry = self.entries[HEAD].next;
                        continue;
                    }
                    linearized[word] &= !bit;
                }
                entry = next;
            } else {
                // A return (or, defensively, the tail): that operation had to
                // be linearized by now. Undo the latest choice.
                let Some((call, before)) = stack.pop() else {
                    return self.violation(&best);
                };
                let op = self.entries[call].op;
                state = before;
                linearized[op / 64] &= !(1u64 << (op % 64));
                if self.ops[op].definite {
                    remaining += 1;
                }
                self.unlift(call);
                entry = self.entries[call].next;
            }
        }
        KeyVerdict::Linearizable
    }

    /// Explains a failure from the longest prefix the search linearized.
    fn violation(mut self, prefix: &[usize]) -> KeyVerdict {
        let mut state = ABSENT;
        let mut placed = vec![false; self.ops.len()];
        for &op in prefix {
            placed[op] = true;
            // The prefix was linearized once, so every step applies.
            state = self.apply(state, op).unwrap_or(state);
        }
        // The next operation must be invoked before the earliest return
        // among the definite operations still to place.
        let deadline = self
            .ops
            .iter()
            .zip(&placed)
            .filter(|(o, p)| o.definite && !**p)
            .map(|(o, _)| o.return_rank)
            .min()
            .unwrap_or(u64::MAX);
        let candidates: Vec<usize> = (0..self.ops.len())
            .filter(|&n| !placed[n] && self.ops[n].definite && self.ops[n].call_rank < deadline)
            .collect();

        let ops = self.history.operations();
        let describe = |n: usize, s: &KeySearch<'_>| {
            s.ops
                .get(n)
                .and_then(|o| ops.get(o.orig))
                .map_or_else(String::new, ToString::to_string)
        };
        let total = self.ops.iter().filter(|o| o.definite).count();
        let placed_definite = prefix.iter().filter(|&&n| self.ops[n].definite).count();
        let mut text = format!(
            "key {:?} is not linearizable. The longest linearizable prefix places {} of {} \
             acknowledged operations",
            self.key, placed_definite, total
        );
        if prefix.is_empty() {
            text.push_str(".\n");
        } else {
            text.push_str(":\n");
            for &n in prefix {
                text.push_str(&format!("  {}\n", describe(n, &self)));
            }
        }
        text.push_str(&format!(
            "after which {} = {}, and none of these can be placed next:\n",
            self.key,
            self.interner.show(state)
        ));
        for &n in &candidates {
            let why = match self.apply(state, n) {
                None => match self.ops[n].step {
                    Step::Incr { .. } => "does not follow from that value".to_owned(),
                    Step::Read(v) | Step::Cas(v, _) => {
                        format!("needs {} = {}", self.key, self.interner.show(v))
                    }
                    Step::Write(_) => "cannot apply".to_owned(),
                },
                Some(_) => "fits, but nothing consistent can follow it".to_owned(),
            };
            text.push_str(&format!("  {}  ({why})\n", describe(n, &self)));
        }
        let orig = |n: &usize| self.ops.get(*n).map(|o| o.orig);
        KeyVerdict::Violation {
            prefix: prefix.iter().filter_map(orig).collect(),
            stuck: candidates.iter().filter_map(orig).collect(),
            explanation: text,
        }
    }
}
