//! Client histories: the JSON-lines event form shared with Jepsen-style tools,
//! and a typed in-memory form a simulator can build without going through JSON.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Whether an event starts an operation or how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Invoke,
    /// The operation took effect, with the result in the event's value.
    Ok,
    /// The operation definitely had no effect.
    Fail,
    /// The client cannot tell whether the operation took effect.
    Info,
}

/// The operations of the register model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Read,
    Write,
    Cas,
    Incr,
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Cas => "cas",
            OpKind::Incr => "incr",
        })
    }
}

/// One line of a JSON-lines history.
///
/// The value stays untyped here because its shape depends on `op` and
/// `kind`; [`History::from_jsonl`] checks it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    #[serde(rename = "f")]
    pub op: OpKind,
    pub key: String,
    #[serde(default)]
    pub value: Value,
    pub time: u64,
}

/// An operation as invoked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write(String),
    /// Swap in `new` if the current value is `expected` (`None`: key absent).
    Cas {
        expected: Option<String>,
        new: String,
    },
    /// Add a delta to the value read as a decimal i64 (absent counts as 0).
    Incr(i64),
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Read => OpKind::Read,
            Op::Write(_) => OpKind::Write,
            Op::Cas { .. } => OpKind::Cas,
            Op::Incr(_) => OpKind::Incr,
        }
    }

    fn invoke_value(&self) -> Value {
        match self {
            Op::Read => Value::Null,
            Op::Write(v) => Value::String(v.clone()),
            Op::Cas { expected, new } => Value::Array(vec![
                expected.clone().map_or(Value::Null, Value::String),
                Value::String(new.clone()),
            ]),
            Op::Incr(delta) => Value::from(*delta),
        }
    }
}

/// What a successful operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// The value read, `None` when the key was absent.
    Read(Option<String>),
    Write,
    /// The swap happened (a cas that did not swap completes with `Fail`).
    Cas,
    /// The value after the increment.
    Incr(i64),
}

impl Ret {
    fn kind(&self) -> OpKind {
        match self {
            Ret::Read(_) => OpKind::Read,
            Ret::Write => OpKind::Write,
            Ret::Cas => OpKind::Cas,
            Ret::Incr(_) => OpKind::Incr,
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok(Ret),
    /// Definitely no effect.
    Fail,
    /// Unknown: it may have taken effect at any time after its invocation, or never.
    Info,
}

impl Outcome {
    fn kind(&self) -> EventKind {
        match self {
            Outcome::Ok(_) => EventKind::Ok,
            Outcome::Fail => EventKind::Fail,
            Outcome::Info => EventKind::Info,
        }
    }
}

/// Names an operation of one [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(usize);

impl OpId {
    /// The position of the operation in [`History::operations`].
    pub fn index(self) -> usize {
        self.0
    }

    pub(crate) fn from_index(index: usize) -> Self {
        OpId(index)
    }
}

/// The end of an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub outcome: Outcome,
    pub time: u64,
    /// Position among all events of the history; breaks ties between equal times.
    pub(crate) seq: u64,
}

/// An operation with its invocation and, if it happened, its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub process: u64,
    pub key: String,
    pub op: Op,
    pub invoke_time: u64,
    pub(crate) invoke_seq: u64,
    /// `None` when the history ended first, which counts as `Info`.
    pub completion: Option<Completion>,
}

impl Operation {
    /// The outcome, with an unfinished operation counted as indeterminate.
    pub fn outcome(&self) -> &Outcome {
        self.completion
            .as_ref()
            .map_or(&Outcome::Info, |c| &c.outcome)
    }
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("nil")
}

/// One line per operation in error reports, e.g. `process 3: write x=5 [10..20] -> ok`.
impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process {}: ", self.process)?;
        let key = &self.key;
        match &self.op {
            Op::Read => write!(f, "read {key}")?,
            Op::Write(v) => write!(f, "write {key}={v}")?,
            Op::Cas { expected, new } => write!(f, "cas {key} {}->{new}", opt(expected))?,
            Op::Incr(delta) => write!(f, "incr {key} by {delta}")?,
        }
        match &self.completion {
            Some(c) => write!(f, " [{}..{}] -> ", self.invoke_time, c.time)?,
            None => write!(f, " [{}..] -> ", self.invoke_time)?,
        }
        match self.outcome() {
            Outcome::Ok(Ret::Read(v)) => f.write_str(opt(v)),
            Outcome::Ok(Ret::Incr(n)) => write!(f, "{n}"),
            Outcome::Ok(_) => f.write_str("ok"),
            Outcome::Fail => f.write_str("fail"),
            Outcome::Info if self.completion.is_none() => f.write_str("info (never completed)"),
            Outcome::Info => f.write_str("info"),
        }
    }
}

/// Errors building or parsing a history. Line numbers count from 1.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: cannot read")]
    Io { line: usize, source: std::io::Error },
    #[error("line {line}: not a valid event")]
    Json {
        line: usize,
        source: serde_json::Error,
    },
    #[error("line {line}: bad value for {kind:?} {op}: {reason}")]
    BadValue {
        line: usize,
        kind: EventKind,
        op: OpKind,
        reason: &'static str,
    },
    #[error("line {line}: process {process} completes an operation it never invoked")]
    NotInvoked { line: usize, process: u64 },
    #[error(
        "line {line}: process {process} invokes an operation while its invocation on line {pending_line} is unfinished"
    )]
    AlreadyPending {
        line: usize,
        process: u64,
        pending_line: usize,
    },
    #[error(
        "line {line}: process {process} completes {op} on key {key:?}, but invoked {invoked_op} on key {invoked_key:?}"
    )]
    Mismatch {
        line: usize,
        process: u64,
        op: OpKind,
        key: String,
        invoked_op: OpKind,
        invoked_key: String,
    },
    #[error("operation {0:?} is not part of this history")]
    UnknownOperation(OpId),
    #[error("operation {0:?} was already completed")]
    AlreadyCompleted(OpId),
    #[error("a {op} cannot return a {ret} result")]
    WrongResult { op: OpKind, ret: OpKind },
}

/// A client history: operations in invocation order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Operation>,
    next_seq: u64,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an invocation. A process should have one unfinished operation
    /// at a time, as real clients do; the JSON form relies on it to pair events.
    pub fn invoke(&mut self, process: u64, op: Op, key: impl Into<String>, time: u64) -> OpId {
        let id = OpId(self.ops.len());
        self.ops.push(Operation {
            process,
            key: key.into(),
            op,
            invoke_time: time,
            invoke_seq: self.next_seq,
            completion: None,
        });
        self.next_seq += 1;
        id
    }

    /// Records how an operation ended. Rejects a result of the wrong kind
    /// (e.g. a number for a read) and a second completion.
    pub fn complete(&mut self, id: OpId, outcome: Outcome, time: u64) -> Result<(), HistoryError> {
        let seq = self.next_seq;
        let operation = self
            .ops
            .get_mut(id.0)
            .ok_or(HistoryError::UnknownOperation(id))?;
        if operation.completion.is_some() {
            return Err(HistoryError::AlreadyCompleted(id));
        }
        if let Outcome::Ok(ret) = &outcome
            && ret.kind() != operation.op.kind()
        {
            return Err(HistoryError::WrongResult {
                op: operation.op.kind(),
                ret: ret.kind(),
            });
        }
        operation.completion = Some(Completion { outcome, time, seq });
        self.next_seq += 1;
        Ok(())
    }

    pub fn operations(&self) -> &[Operation] {
        &self.ops
    }

    pub fn get(&self, id: OpId) -> Option<&Operation> {
        self.ops.get(id.0)
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The events in the order they were recorded.
    pub fn events(&self) -> Vec<Event> {
        let mut events: Vec<(u64, Event)> = Vec::with_capacity(self.ops.len() * 2);
        for o in &self.ops {
            let invoke_value = o.op.invoke_value();
            if let Some(c) = &o.completion {
                let value = match &c.outcome {
                    Outcome::Ok(Ret::Read(v)) => v.clone().map_or(Value::Null, Value::String),
                    Outcome::Ok(Ret::Incr(n)) => Value::from(*n),
                    _ => invoke_value.clone(),
                };
                events.push((
                    c.seq,
                    Event {
                        process: o.process,
                        kind: c.outcome.kind(),
                        op: o.op.kind(),
                        key: o.key.clone(),
                        value,
                        time: c.time,
                    },
                ));
            }
            events.push((
                o.invoke_seq,
                Event {
                    process: o.process,
                    kind: EventKind::Invoke,
                    op: o.op.kind(),
                    key: o.key.clone(),
                    value: invoke_value,
                    time: o.invoke_time,
                },
            ));
        }
        events.sort_by_key(|(seq, _)| *seq);
        events.into_iter().map(|(_, e)| e).collect()
    }

    /// Writes one JSON object per event, one per line.
    pub fn to_jsonl(&self, mut w: impl Write) -> std::io::Result<()> {
        for event in self.events() {
            serde_json::to_writer(&mut w, &event)?;
            w.write_all(b"\n")?;
        }
        w.flush()
    }

    /// Parses JSON lines. Blank lines are skipped and unknown fields ignored;
    /// anything else that does not fit the format is an error naming the line.
    pub fn from_jsonl(r: impl BufRead) -> Result<History, HistoryError> {
        let mut history = History::new();
        // Per process: its unfinished operation and the line that invoked it.
        let mut pending: HashMap<u64, (OpId, usize)> = HashMap::new();
        for (i, line) in r.lines().enumerate() {
            let line_no = i + 1;
            let text = line.map_err(|source| HistoryError::Io {
                line: line_no,
                source,
            })?;
            if text.trim().is_empty() {
                continue;
            }
            let event: Event =
                serde_json::from_str(&text).map_err(|source| HistoryError::Json {
                    line: line_no,
                    source,
                })?;
            history.push_event(event, line_no, &mut pending)?;
        }
        Ok(history)
    }

    fn push_event(
        &mut self,
        event: Event,
        line: usize,
        pending: &mut HashMap<u64, (OpId, usize)>,
    ) -> Result<(), HistoryError> {
        let bad = |reason| HistoryError::BadValue {
            line,
            kind: event.kind,
            op: event.op,
            reason,
        };
        if event.kind == EventKind::Invoke {
            if let Some(&(_, pending_line)) = pending.get(&event.process) {
                return Err(HistoryError::AlreadyPending {
                    line,
                    process: event.process,
                    pending_line,
                });
            }
            let op = match event.op {
                // A read carries no argument; whatever is there says nothing.
                OpKind::Read => Op::Read,
                OpKind::Write => Op::Write(
                    event
                        .value
                        .as_str()
                        .ok_or_else(|| bad("expected a string"))?
                        .to_owned(),
                ),
                OpKind::Cas => {
                    let pair = match event.value.as_array().map(Vec::as_slice) {
                        Some([expected, new]) => (expected, new),
                        _ => return Err(bad("expected [expected, new]")),
                    };
                    let expected = match pair.0 {
                        Value::Null => None,
                        Value::String(s) => Some(s.clone()),
                        _ => return Err(bad("expected value must be a string or null")),
                    };
                    let new = pair
                        .1
                        .as_str()
                        .ok_or_else(|| bad("new value must be a string"))?
                        .to_owned();
                    Op::Cas { expected, new }
                }
                OpKind::Incr => Op::Incr(
                    event
                        .value
                        .as_i64()
                        .ok_or_else(|| bad("expected an integer delta"))?,
                ),
            };
            let id = self.invoke(event.process, op, event.key, event.time);
            pending.insert(event.process, (id, line));
            return Ok(());
        }
        let Some((id, _)) = pending.remove(&event.process) else {
            return Err(HistoryError::NotInvoked {
                line,
                process: event.process,
            });
        };
        let invoked = &self.ops[id.0];
        if invoked.op.kind() != event.op || invoked.key != event.key {
            return Err(HistoryError::Mismatch {
                line,
                process: event.process,
                op: event.op,
                key: event.key,
                invoked_op: invoked.op.kind(),
                invoked_key: invoked.key.clone(),
            });
        }
        let outcome = match event.kind {
            EventKind::Fail => Outcome::Fail,
            EventKind::Info => Outcome::Info,
            // Only reads and increments return something the write did not carry.
            EventKind::Ok | EventKind::Invoke => Outcome::Ok(match event.op {
                OpKind::Read => match &event.value {
                    Value::Null => Ret::Read(None),
                    Value::String(s) => Ret::Read(Some(s.clone())),
                    _ => return Err(bad("expected a string or null")),
                },
                OpKind::Write => Ret::Write,
                OpKind::Cas => Ret::Cas,
                OpKind::Incr => Ret::Incr(
                    event
                        .value
                        .as_i64()
                        .ok_or_else(|| bad("expected an integer result"))?,
                ),
            }),
        };
        self.complete(id, outcome, event.time)
    }
}
