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

use super::history::{History, Op, Outcome, Ret};
use foldhash::quality::FixedState;

/// Search states already explored: the acknowledged set (with the value
/// last) to the sets of optional operations tried with it.
type Seen = HashMap<Box<[u64]>, Vec<Box<[u64]>>, FixedState>;
use std::collections::HashMap;

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
    /// Index among the definite, or among the indeterminate, operations.
    slot: usize,
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

fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x & !y == 0)
}

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
    /// Per value: remaining (not yet linearized) operations that need it.
    observers: Vec<u32>,
    /// Remaining increments, which observe every numeric value.
    incrs_left: u32,
    /// History of `slot` for indeterminate operations: slot -> op.
    optional_ops: Vec<usize>,
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
        let mut ops: Vec<KeyOp> = Vec::with_capacity(indices.len());
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
                slot: 0,
            });
        }

        // An indeterminate write (or cas) of a value that nothing on this key
        // can observe is equivalent to one that never happened: from that
        // value only blind writes can move on, so dropping it keeps every
        // linearization valid. Histories with unique written values then
        // carry no lingering indeterminate writes, which otherwise multiply
        // the search space.
        let has_incr = ops.iter().any(|o| matches!(o.step, Step::Incr { .. }));
        let mut observed = vec![false; interner.values.len() + 1];
        for o in &ops {
            if let Step::Read(v) | Step::Cas(v, _) = o.step
                && let Some(seen) = observed.get_mut(v as usize)
            {
                *seen = true;
            }
        }
        let observable = |v: State| {
            observed.get(v as usize).copied().unwrap_or(true)
                || (has_incr && interner.as_int(v).is_some())
        };
        ops.retain(|o| match o.step {
            Step::Write(v) | Step::Cas(_, v) if !o.definite => observable(v),
            _ => true,
        });
        let (mut definite, mut optional) = (0, 0);
        for o in &mut ops {
            let counter = if o.definite {
                &mut definite
            } else {
                &mut optional
            };
            o.slot = *counter;
            *counter += 1;
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
            observers: Vec::new(),
            incrs_left: 0,
            optional_ops: Vec::new(),
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

    /// The value an operation needs to find, if any (incr is counted apart).
    fn observes(&self, op: usize) -> Option<State> {
        match self.ops.get(op)?.step {
            Step::Read(v) | Step::Cas(v, _) => Some(v),
            Step::Write(_) | Step::Incr { .. } => None,
        }
    }

    fn count_observer(&mut self, op: usize, add: bool) {
        let change = |n: &mut u32| *n = if add { *n + 1 } else { n.saturating_sub(1) };
        if let Some(v) = self.observes(op) {
            if self.observers.len() <= v as usize {
                self.observers.resize(v as usize + 1, 0);
            }
            change(&mut self.observers[v as usize]);
        } else if matches!(self.ops[op].step, Step::Incr { .. }) {
            change(&mut self.incrs_left);
        }
    }

    /// Whether linearizing this operation could still matter: an
    /// indeterminate write or cas whose value no remaining operation can
    /// observe is as good as never having happened (see `new`).
    fn live(&self, op: usize) -> bool {
        match self.ops[op].step {
            Step::Write(v) | Step::Cas(_, v) if !self.ops[op].definite => {
                self.observers.get(v as usize).is_some_and(|&n| n > 0)
                    || (self.incrs_left > 0 && self.interner.as_int(v).is_some())
            }
            _ => true,
        }
    }

    fn lift(&mut self, call: usize) {
        self.count_observer(self.entries[call].op, false);
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
        self.count_observer(self.entries[call].op, true);
    }

    /// Runs the search for at most `budget` steps.
    ///
    /// Indeterminate operations never leave the window of candidates, and
    /// each one used or not doubles the configurations. Two refinements keep
    /// that in check:
    /// - An indeterminate write whose value can no longer be observed is not
    ///   tried, and whether it was used is left out of the memo key, since it
    ///   cannot change what follows.
    /// - A configuration is pruned when the same acknowledged set and value
    ///   were reached before with a subset of the (live) indeterminate
    ///   operations used: more of them left only adds options, so the earlier
    ///   configuration covers this one.
    pub(crate) fn run(mut self, budget: u64) -> KeyVerdict {
        for op in 0..self.ops.len() {
            self.count_observer(op, true);
        }
        self.optional_ops = (0..self.ops.len())
            .filter(|&n| !self.ops[n].definite)
            .collect();
        let definite_total = self.ops.len() - self.optional_ops.len();
        let mut remaining = definite_total;
        let def_words = definite_total.div_ceil(64);
        let info_words = self.optional_ops.len().div_ceil(64);
        // The acknowledged set with the value appended as a last word, so a
        // lookup needs no allocation.
        let mut key = vec![0u64; def_words + 1];
        let mut used = vec![0u64; info_words];
        let mut live_used = vec![0u64; info_words];
        let mut seen: Seen = HashMap::default();
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
            if !is_call {
                // A return (or, defensively, the tail): that operation had to
                // be linearized by now. Undo the latest choice.
                let Some((call, before)) = stack.pop() else {
                    return self.violation(&best);
                };
                let op = self.entries[call].op;
                let (definite, slot) = (self.ops[op].definite, self.ops[op].slot);
                state = before;
                let bits = if definite { &mut key } else { &mut used };
                bits[slot / 64] &= !(1u64 << (slot % 64));
                if definite {
                    remaining += 1;
                }
                self.unlift(call);
                entry = self.entries[call].next;
                continue;
            }
            if !self.live(op) {
                entry = next;
                continue;
            }
            let Some(after) = self.apply(state, op) else {
                entry = next;
                continue;
            };
            let (definite, slot) = (self.ops[op].definite, self.ops[op].slot);
            let (word, bit) = (slot / 64, 1u64 << (slot % 64));
            let bits = if definite { &mut key } else { &mut used };
            bits[word] |= bit;
            self.lift(entry);
            key[def_words] = u64::from(after);
            live_used.fill(0);
            for (w, &bits) in used.iter().enumerate() {
                let mut rest = bits;
                while rest != 0 {
                    let b = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    let n = self.optional_ops.get(w * 64 + b).copied().unwrap_or(NONE);
                    if n != NONE && self.live(n) {
                        live_used[w] |= 1u64 << b;
                    }
                }
            }
            let fresh = match seen.get_mut(key.as_slice()) {
                None => {
                    seen.insert(key.clone().into(), vec![live_used.clone().into()]);
                    true
                }
                Some(sets) if sets.iter().any(|s| is_subset(s, &live_used)) => false,
                Some(sets) => {
                    sets.retain(|s| !is_subset(&live_used, s));
                    sets.push(live_used.clone().into());
                    true
                }
            };
            if !fresh {
                self.unlift(entry);
                let bits = if definite { &mut key } else { &mut used };
                bits[word] &= !bit;
                entry = next;
                continue;
            }
            stack.push((entry, state));
            state = after;
            if definite {
                remaining -= 1;
            }
            if stack.len() > best.len() {
                best = stack.iter().map(|&(e, _)| self.entries[e].op).collect();
            }
            entry = self.entries[HEAD].next;
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
