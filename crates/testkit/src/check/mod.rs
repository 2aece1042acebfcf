//! A linearizability checker for client histories of the key-value store.
//!
//! Tests record what clients invoked and what came back, then ask whether
//! some order of the operations, consistent with real time, explains every
//! result against a single-copy register per key. Keys are checked
//! independently: operations on different keys commute, so a history is
//! linearizable exactly when each key's sub-history is, and splitting keeps
//! each search small.

mod history;
mod search;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

pub use history::{
    Completion, Event, EventKind, History, HistoryError, Op, OpId, OpKind, Operation, Outcome, Ret,
};
use search::{KeySearch, KeyVerdict};

/// Limits on the search.
#[derive(Clone, Debug)]
pub struct Options {
    /// Search steps allowed per key before giving up on it with `Unknown`.
    /// The search is exponential in the worst case; this keeps a bad history
    /// from hanging a test run.
    pub max_steps_per_key: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_steps_per_key: 10_000_000,
        }
    }
}

/// Why a history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// The longest linearizable prefix the search found, in linearization order.
    pub prefix: Vec<OpId>,
    /// Acknowledged operations that could have come next in real time but fit nowhere.
    pub stuck: Vec<OpId>,
    /// The above, printed for a person.
    pub explanation: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explanation)
    }
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// Distinct keys in the history.
    pub keys: usize,
    /// Operations in the history, including failed and unfinished ones.
    pub operations: usize,
    /// True only when every key was proved linearizable: a key whose search
    /// ran out of budget makes this false without a violation.
    pub linearizable: bool,
    /// The first violating key, in key order.
    pub violation: Option<Violation>,
    /// Keys whose search exceeded the step budget, in key order.
    pub unknown_keys: Vec<String>,
}

impl CheckResult {
    /// Whether the history is known to be non-linearizable (as opposed to unproven).
    pub fn is_violation(&self) -> bool {
        self.violation.is_some()
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.violation.is_some() {
            "NOT linearizable"
        } else if self.unknown_keys.is_empty() {
            "linearizable"
        } else {
            "unknown (search budget exceeded)"
        };
        writeln!(
            f,
            "{} operations on {} keys: {verdict}",
            self.operations, self.keys
        )?;
        if !self.unknown_keys.is_empty() {
            writeln!(f, "keys not decided: {:?}", self.unknown_keys)?;
        }
        if let Some(v) = &self.violation {
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// Checks every key of `history` against a register model.
pub fn check_history(history: &History, options: &Options) -> CheckResult {
    let ops = history.operations();

    // Real-time order of all events: by time, ties broken by recording order.
    // A completion stamped before its own invocation is moved up to it, so
    // an operation never returns before it starts.
    let mut events: Vec<(u64, u64, usize, bool)> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.invoke_time, o.invoke_seq, i, true));
        if let Some(c) = &o.completion {
            events.push((c.time.max(o.invoke_time), c.seq, i, false));
        }
    }
    events.sort_unstable();
    let mut ranks = vec![[u64::MAX; 2]; ops.len()];
    for (rank, &(_, _, i, is_call)) in events.iter().enumerate() {
        if let Some(r) = ranks.get_mut(i) {
            r[usize::from(!is_call)] = rank as u64;
        }
    }

    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, o) in ops.iter().enumerate() {
        by_key.entry(o.key.as_str()).or_default().push(i);
    }

    let mut violation = None;
    let mut unknown_keys = Vec::new();
    for (key, indices) in &by_key {
        let rank =
            |i: usize, is_call: bool| ranks.get(i).map_or(u64::MAX, |r| r[usize::from(!is_call)]);
        let search = KeySearch::new(history, key, indices, rank);
        match search.run(options.max_steps_per_key) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Unknown => unknown_keys.push((*key).to_owned()),
            KeyVerdict::Violation {
                explanation,
                prefix,
                stuck,
            } => {
                if violation.is_none() {
                    violation = Some(Violation {
                        key: (*key).to_owned(),
                        prefix: prefix.into_iter().map(OpId::from_index).collect(),
                        stuck: stuck.into_iter().map(OpId::from_index).collect(),
                        explanation,
                    });
                }
            }
        }
    }
    CheckResult {
        keys: by_key.len(),
        operations: ops.len(),
        linearizable: violation.is_none() && unknown_keys.is_empty(),
        violation,
        unknown_keys,
    }
}

/// Reads a JSON-lines history from a file and checks it.
pub fn check_jsonl_file(
    path: impl AsRef<Path>,
    options: &Options,
) -> Result<CheckResult, HistoryError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|source| HistoryError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let history = History::from_jsonl(BufReader::new(file))?;
    Ok(check_history(&history, options))
}
