//! The state machine proper: keys, values, versions and sessions.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

use super::command::{ClientId, Command, Reply, Request, SetCondition, errors};
use super::glob::Glob;
use super::session::{Admission, SessionLimits, Sessions};

/// Largest value `APPEND` may build, as in Redis (`proto-max-bulk-len`).
pub const MAX_VALUE_LEN: usize = 512 * 1024 * 1024;

/// Upper bound on the `COUNT` of one `SCAN` call, so a huge count cannot make
/// one reply (and one log entry's work) unbounded.
pub const MAX_SCAN_COUNT: usize = 100_000;

/// Fixed, portable 64-bit hash that orders keys for `SCAN`. It must never
/// change between versions or platforms, since cursors are hash values that
/// clients hold across calls (and possibly across a failover). FNV-1a, then
/// a final avalanche so that similar keys spread over the whole range.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Position of a key in the store: ordered by hash first, so that `SCAN`
/// can resume from a hash value, then by key to break ties.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Slot {
    pub(crate) hash: u64,
    pub(crate) key: Bytes,
}

impl Slot {
    pub(crate) fn new(key: &Bytes) -> Slot {
        Slot {
            hash: key_hash(key),
            key: key.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) value: Bytes,
    /// Value of the write counter when the key was last modified.
    pub(crate) version: u64,
}

/// The replicated key-value state machine.
///
/// Deterministic: every replica that applies the same requests in the same
/// order reaches the same state and gives the same replies. All maps are
/// ordered, nothing reads a clock or a random source.
///
/// # Versions (for `WATCH`)
///
/// A store-wide counter increases on every applied write command; each key
/// records the counter value of its last modification, which is its
/// version. An *absent* key's version is the counter value of the most
/// recent deletion or flush anywhere in the store. So creating a key always
/// changes its version (the counter has moved past any value it had when
/// absent), and so does deleting it; but any deletion also changes the
/// version of every absent key. That may abort a transaction that watched
/// an unrelated absent key — a spurious abort, which `WATCH` allows — and
/// never lets a real change go unnoticed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    pub(crate) data: BTreeMap<Slot, Entry>,
    /// Store-wide write counter.
    pub(crate) writes: u64,
    /// Counter value of the last deletion or flush: every absent key's version.
    pub(crate) last_removal: u64,
    pub(crate) last_applied: Option<u64>,
    pub(crate) sessions: Sessions,
    /// What the cluster's host keeps beside the data in a snapshot (who the
    /// members are), opaque to the store.
    pub(crate) cluster: Bytes,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

/// Parses an integer the way Redis does: optional `-`, no `+`, no spaces,
/// no leading zeros, within `i64`.
fn parse_i64(raw: &[u8]) -> Option<i64> {
    if raw == b"0" {
        return Some(0);
    }
    let (negative, digits) = match raw.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, raw),
    };
    match digits.first()? {
        b'1'..=b'9' => {}
        _ => return None,
    }
    let mut magnitude: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        // -(2^63) is representable even though 2^63 is not.
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Takes the next `SCAN` batch from `slots` (in store order, starting at
/// the cursor's hash): at least `count` slots (clamped to
/// `1..=MAX_SCAN_COUNT`), extended so that all slots sharing the last hash
/// are in the same batch. Returns the batch and the next cursor, the hash of
/// the first slot left out, or 0 when none is. That hash is always greater
/// than the batch's, so it is never 0 and cannot be mistaken for "done";
/// and since batches cover contiguous hash ranges, a key present for the
/// whole scan is returned at least once.
pub(crate) fn scan_batch<'a>(
    slots: impl Iterator<Item = &'a Slot>,
    count: usize,
) -> (Vec<&'a Slot>, u64) {
    let count = count.clamp(1, MAX_SCAN_COUNT);
    let mut batch: Vec<&Slot> = Vec::new();
    for slot in slots {
        if let Some(last) = batch.last()
            && batch.len() >= count
            && last.hash != slot.hash
        {
            return (batch, slot.hash);
        }
        batch.push(slot);
    }
    (batch, 0)
}

impl Store {
    pub fn new() -> Store {
        Store::with_limits(SessionLimits::default())
    }

    /// What the host saved beside the data (see [`Store::set_cluster`]).
    pub fn cluster(&self) -> &Bytes {
        &self.cluster
    }

    /// Sets what a snapshot of this store carries for the host beside the
    /// data: the cluster's membership as of the store's slot.
    pub fn set_cluster(&mut self, cluster: Bytes) {
        self.cluster = cluster;
    }

    pub fn with_limits(limits: SessionLimits) -> Store {
        Store {
            data: BTreeMap::new(),
            writes: 0,
            last_removal: 0,
            last_applied: None,
            sessions: Sessions::new(limits),
            cluster: Bytes::new(),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Log index of the last applied request.
    pub fn last_applied(&self) -> Option<u64> {
        self.last_applied
    }

    /// Forgets every client session: for a store that starts a new cluster
    /// (a restored backup), whose clients are all new.
    pub fn forget_sessions(&mut self) {
        self.sessions = Sessions::new(self.sessions.limits);
    }

    /// Number of client sessions currently remembered.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn limits(&self) -> SessionLimits {
        self.sessions.limits
    }

    /// Applies the request at log position `index`.
    ///
    /// # Panics
    ///
    /// When `index` is not greater than the previous one: the log feeds the
    /// state machine in order, so anything else is a bug in the caller and
    /// continuing would make this replica diverge.
    pub fn apply(&mut self, index: u64, request: &Request) -> Reply {
        if let Some(last) = self.last_applied {
            assert!(
                index > last,
                "log index {index} applied after {last}: indices must increase"
            );
        }
        self.last_applied = Some(index);
        if request.client == ClientId::NONE {
            return self.execute(&request.command);
        }
        match self
            .sessions
            .admit(index, request.client, request.seq, request.ack_below)
        {
            Admission::Cached(reply) => reply,
            Admission::Acknowledged => Reply::error(errors::DUPLICATE),
            Admission::Fresh => {
                let reply = self.execute(&request.command);
                self.sessions
                    .record(request.client, request.seq, reply.clone());
                reply
            }
        }
    }

    /// Answers a read-only command from the current state, without the log.
    /// A write command gets an error reply and changes nothing.
    pub fn read(&self, command: &Command) -> Reply {
        self.eval_read(command)
            .unwrap_or_else(|| Reply::error(errors::WRITE_ON_READ_PATH))
    }

    /// The version `WATCH` would record for `key`.
    pub fn version(&self, key: &Bytes) -> u64 {
        self.entry(key)
            .map_or(self.last_removal, |entry| entry.version)
    }

    fn execute(&mut self, command: &Command) -> Reply {
        if !command.is_read_only() {
            self.writes += 1;
        }
        self.eval(command)
    }

    fn entry(&self, key: &Bytes) -> Option<&Entry> {
        self.data.get(&Slot::new(key))
    }

    fn value(&self, key: &Bytes) -> Option<&Bytes> {
        self.entry(key).map(|e| &e.value)
    }

    fn put(&mut self, key: &Bytes, value: Bytes) {
        let version = self.writes;
        self.data.insert(Slot::new(key), Entry { value, version });
    }

    fn remove(&mut self, key: &Bytes) -> Option<Bytes> {
        let removed = self.data.remove(&Slot::new(key))?;
        self.last_removal = self.writes;
        Some(removed.value)
    }

    fn watches_hold(&self, watches: &[(Bytes, u64)]) -> bool {
        watches.iter().all(|(key, v)| self.version(key) == *v)
    }

    /// Evaluates a read-only command; `None` for a write.
    fn eval_read(&self, command: &Command) -> Option<Reply> {
        let reply = match command {
            Command::Get(key) => Reply::optional(self.value(key)),
            Command::Exists(keys) => {
                Reply::count(keys.iter().filter(|k| self.entry(k).is_some()).count())
            }
            Command::Strlen(key) => Reply::count(self.value(key).map_or(0, Bytes::len)),
            Command::MGet(keys) => Reply::Array(
                keys.iter()
                    .map(|k| Reply::optional(self.value(k)))
                    .collect(),
            ),
            Command::DbSize => Reply::count(self.data.len()),
            Command::Keys(pattern) => {
                let glob = Glob::new(pattern);
                let mut keys: Vec<&Bytes> = self
                    .data
                    .keys()
                    .map(|slot| &slot.key)
                    .filter(|k| glob.matches(k))
                    .collect();
                keys.sort();
                Reply::Array(keys.into_iter().map(|k| Reply::Bulk(k.clone())).collect())
            }
            Command::Scan {
                cursor,
                pattern,
                count,
            } => self.scan(*cursor, pattern.as_ref(), *count),
            Command::Version(key) => {
                Reply::Integer(i64::try_from(self.version(key)).unwrap_or(i64::MAX))
            }
            Command::Exec { watches, commands } if command.is_read_only() => {
                if !self.watches_hold(watches) {
                    Reply::NilArray
                } else {
                    let mut replies = Vec::with_capacity(commands.len());
                    for c in commands {
                        replies.push(self.eval_read(c)?);
                    }
                    Reply::Array(replies)
                }
            }
            _ => return None,
        };
        Some(reply)
    }

    /// One step of `SCAN` over the whole store; see [`scan_batch`].
    fn scan(&self, cursor: u64, pattern: Option<&Bytes>, count: usize) -> Reply {
        let glob = pattern.map(|p| Glob::new(p));
        let start = Slot {
            hash: cursor,
            key: Bytes::new(),
        };
        let slots = self
            .data
            .range((Bound::Included(start), Bound::Unbounded))
            .map(|(slot, _)| slot);
        let (batch, next) = scan_batch(slots, count);
        let keys = batch
            .into_iter()
            .filter(|slot| glob.as_ref().is_none_or(|g| g.matches(&slot.key)))
            .map(|slot| Reply::Bulk(slot.key.clone()))
            .collect();
        Reply::Array(vec![
            Reply::Bulk(Bytes::from(next.to_string())),
            Reply::Array(keys),
        ])
    }

    fn eval(&mut self, command: &Command) -> Reply {
        if let Some(reply) = self.eval_read(command) {
            return reply;
        }
        match command {
            Command::Set {
                key,
                value,
                condition,
                get,
            } => {
                let old = self.value(key).cloned();
                let allowed = match condition {
                    SetCondition::None => true,
                    SetCondition::Nx => old.is_none(),
                    SetCondition::Xx => old.is_some(),
                };
                if allowed {
                    self.put(key, value.clone());
                }
                match (get, allowed) {
                    (true, _) => Reply::optional(old.as_ref()),
                    (false, true) => Reply::ok(),
                    (false, false) => Reply::Nil,
                }
            }
            Command::SetNx(key, value) => {
                if self.entry(key).is_some() {
                    Reply::Integer(0)
                } else {
                    self.put(key, value.clone());
                    Reply::Integer(1)
                }
            }
            Command::GetSet(key, value) => {
                let old = self.value(key).cloned();
                self.put(key, value.clone());
                Reply::optional(old.as_ref())
            }
            Command::GetDel(key) => Reply::optional(self.remove(key).as_ref()),
            Command::Del(keys) => {
                Reply::count(keys.iter().filter(|k| self.remove(k).is_some()).count())
            }
            Command::IncrBy { key, delta } => {
                let current = match self.value(key) {
                    None => 0,
                    Some(raw) => match parse_i64(raw) {
                        Some(n) => n,
                        None => return Reply::error(errors::NOT_AN_INTEGER),
                    },
                };
                match current.checked_add(*delta) {
                    Some(n) => {
                        self.put(key, Bytes::from(n.to_string()));
                        Reply::Integer(n)
                    }
                    None => Reply::error(errors::OVERFLOW),
                }
            }
            Command::Append(key, suffix) => {
                let old = self.value(key).cloned().unwrap_or_default();
                let len = old.len().saturating_add(suffix.len());
                if len > MAX_VALUE_LEN {
                    return Reply::error(errors::TOO_LONG);
                }
                let mut joined = Vec::with_capacity(len);
                joined.extend_from_slice(&old);
                joined.extend_from_slice(suffix);
                self.put(key, Bytes::from(joined));
                Reply::count(len)
            }
            Command::MSet(pairs) => {
                for (key, value) in pairs {
                    self.put(key, value.clone());
                }
                Reply::ok()
            }
            Command::Cas { key, expected, new } => {
                if self.value(key) == expected.as_ref() {
                    self.put(key, new.clone());
                    Reply::Integer(1)
                } else {
                    Reply::Integer(0)
                }
            }
            Command::FlushAll => {
                self.data.clear();
                self.last_removal = self.writes;
                Reply::ok()
            }
            Command::Exec { watches, commands } => {
                if !self.watches_hold(watches) {
                    return Reply::NilArray;
                }
                let replies = commands
                    .iter()
                    .map(|c| match c {
                        Command::Exec { .. } => Reply::error(errors::NESTED_MULTI),
                        c => self.eval(c),
                    })
                    .collect();
                Reply::Array(replies)
            }
            // Read-only commands were answered above.
            Command::Get(_)
            | Command::Exists(_)
            | Command::Strlen(_)
            | Command::MGet(_)
            | Command::DbSize
            | Command::Keys(_)
            | Command::Scan { .. }
            | Command::Version(_) => Reply::error(errors::WRITE_ON_READ_PATH),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{MAX_SCAN_COUNT, Slot, parse_i64, scan_batch};

    fn slot(hash: u64, key: &str) -> Slot {
        Slot {
            hash,
            key: Bytes::copy_from_slice(key.as_bytes()),
        }
    }

    #[test]
    fn scan_batches_keep_colliding_hashes_together() {
        let slots = [
            slot(0, "a"),
            slot(5, "b"),
            slot(5, "c"),
            slot(5, "d"),
            slot(9, "e"),
        ];
        let keys =
            |batch: Vec<&Slot>| -> Vec<Bytes> { batch.iter().map(|s| s.key.clone()).collect() };
        // count 2 stops inside hash 5: the batch grows to take all of it.
        let (batch, next) = scan_batch(slots.iter(), 2);
        assert_eq!(keys(batch), vec!["a", "b", "c", "d"]);
        assert_eq!(next, 9);
        let (batch, next) = scan_batch(slots.iter().skip(4), 2);
        assert_eq!(keys(batch), vec!["e"]);
        assert_eq!(next, 0);
        // count 1 on a hash-0 key still makes progress with a nonzero cursor.
        let (batch, next) = scan_batch(slots.iter(), 1);
        assert_eq!(keys(batch), vec!["a"]);
        assert_eq!(next, 5);
        // count 0 is treated as 1; huge counts are clamped.
        assert_eq!(scan_batch(slots.iter(), 0).0.len(), 1);
        let many: Vec<Slot> = (0..(MAX_SCAN_COUNT as u64 + 10))
            .map(|h| slot(h, "k"))
            .collect();
        let (batch, next) = scan_batch(many.iter(), usize::MAX);
        assert_eq!(batch.len(), MAX_SCAN_COUNT);
        assert_eq!(next, MAX_SCAN_COUNT as u64);
    }

    #[test]
    fn integers_parse_like_redis() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"42"), Some(42));
        assert_eq!(parse_i64(b"-42"), Some(-42));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b" 1",
            b"1 ",
            b"01",
            b"-0",
            b"1.5",
            b"abc",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
