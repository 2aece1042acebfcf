//! Commands, requests and replies of the key-value state machine.

use bytes::Bytes;

/// Condition attached to `SET` (the `NX` / `XX` flags of Redis).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetCondition {
    /// Always set.
    None,
    /// Set only when the key does not exist (`NX`).
    Nx,
    /// Set only when the key already exists (`XX`).
    Xx,
}

/// One operation on the store. Each variant is a Redis command (or a family
/// of them: `INCR`, `DECR`, `INCRBY` and `DECRBY` all become [`Command::IncrBy`]),
/// except [`Command::Cas`] and [`Command::Version`], which are parliament's own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// `GET key`: the value, or nil.
    Get(Bytes),
    /// `SET key value [NX|XX] [GET]`.
    Set {
        key: Bytes,
        value: Bytes,
        condition: SetCondition,
        /// Reply with the old value instead of `OK`.
        get: bool,
    },
    /// `SETNX key value`: 1 when set, 0 when the key existed.
    SetNx(Bytes, Bytes),
    /// `GETSET key value`: the old value (or nil), and sets the new one.
    GetSet(Bytes, Bytes),
    /// `GETDEL key`: the value (or nil), and deletes the key.
    GetDel(Bytes),
    /// `DEL key...`: the number of keys removed.
    Del(Vec<Bytes>),
    /// `EXISTS key...`: how many of the keys exist (a repeated key counts each time).
    Exists(Vec<Bytes>),
    /// `INCRBY key delta`, and through it `INCR`, `DECR` and `DECRBY`.
    IncrBy { key: Bytes, delta: i64 },
    /// `APPEND key value`: the new length.
    Append(Bytes, Bytes),
    /// `STRLEN key`: the length, 0 when absent.
    Strlen(Bytes),
    /// `MGET key...`: one value or nil per key.
    MGet(Vec<Bytes>),
    /// `MSET key value...`: all pairs are set together.
    MSet(Vec<(Bytes, Bytes)>),
    /// Compare-and-swap: replaces the value when the current one equals
    /// `expected` (`None` meaning "the key is absent"). Replies 1 when swapped,
    /// 0 otherwise.
    Cas {
        key: Bytes,
        expected: Option<Bytes>,
        new: Bytes,
    },
    /// `FLUSHALL`: removes every key.
    FlushAll,
    /// `DBSIZE`: the number of keys.
    DbSize,
    /// `KEYS pattern`: every key matching the glob pattern, sorted by bytes.
    Keys(Bytes),
    /// `SCAN cursor [MATCH pattern] [COUNT count]`.
    Scan {
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
    },
    /// `MULTI ... EXEC` with the versions of the `WATCH`ed keys as the client
    /// read them (through [`Command::Version`]). Aborts with a nil array when
    /// any version has changed.
    Exec {
        watches: Vec<(Bytes, u64)>,
        commands: Vec<Command>,
    },
    /// The current version of a key, as an integer; `WATCH` reads it.
    Version(Bytes),
}

impl Command {
    /// `DECRBY key delta` as an increment. Fails, with Redis's error, for
    /// `i64::MIN`, whose negation does not exist.
    pub fn decr_by(key: Bytes, delta: i64) -> Result<Command, Reply> {
        match delta.checked_neg() {
            Some(delta) => Ok(Command::IncrBy { key, delta }),
            None => Err(Reply::error("ERR decrement would overflow")),
        }
    }

    /// True when the command never changes the store, so it can be answered
    /// from local state without going through the log.
    pub fn is_read_only(&self) -> bool {
        match self {
            Command::Get(_)
            | Command::Exists(_)
            | Command::Strlen(_)
            | Command::MGet(_)
            | Command::DbSize
            | Command::Keys(_)
            | Command::Scan { .. }
            | Command::Version(_) => true,
            Command::Set { .. }
            | Command::SetNx(..)
            | Command::GetSet(..)
            | Command::GetDel(_)
            | Command::Del(_)
            | Command::IncrBy { .. }
            | Command::Append(..)
            | Command::MSet(_)
            | Command::Cas { .. }
            | Command::FlushAll => false,
            Command::Exec { commands, .. } => commands
                .iter()
                .all(|c| !matches!(c, Command::Exec { .. }) && c.is_read_only()),
        }
    }
}

/// A client session, which the store applies each request of at most once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

impl ClientId {
    /// No session: the command is applied every time it appears in the log.
    pub const NONE: ClientId = ClientId(0);
}

/// The number of a request within its client's session, from 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl Seq {
    /// The one after.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

/// A command as it travels through the log, tagged for exactly-once
/// execution.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    pub client: ClientId,
    /// This request's number in the session.
    pub seq: Seq,
    /// The client has received the replies to every seq below this one, so
    /// the store may forget them.
    pub ack_below: Seq,
    pub command: Command,
}

impl Request {
    /// A request outside any session.
    pub fn anonymous(command: Command) -> Request {
        Request {
            client: ClientId::NONE,
            seq: Seq(0),
            ack_below: Seq(0),
            command,
        }
    }
}

/// A reply, one variant per RESP2 type so that the network layer can encode
/// it without knowing the commands.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reply {
    /// Simple string, e.g. `OK`.
    Status(String),
    /// Error string, e.g. `ERR value is not an integer or out of range`.
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    /// Nil bulk string.
    Nil,
    Array(Vec<Reply>),
    /// Nil array: what an aborted `EXEC` returns.
    NilArray,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status("OK".to_owned())
    }

    pub fn error(text: &str) -> Reply {
        Reply::Error(text.to_owned())
    }

    /// An integer reply from a count; counts never reach `i64::MAX` in
    /// practice, but saturate rather than wrap if they ever did.
    pub(crate) fn count(n: usize) -> Reply {
        Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX))
    }

    pub(crate) fn optional(value: Option<&Bytes>) -> Reply {
        match value {
            Some(v) => Reply::Bulk(v.clone()),
            None => Reply::Nil,
        }
    }
}

/// Redis's error texts, kept in one place so that replies match Redis exactly.
pub mod errors {
    pub const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
    pub const OVERFLOW: &str = "ERR increment or decrement would overflow";
    pub const NESTED_MULTI: &str = "ERR MULTI calls can not be nested";
    pub const DUPLICATE: &str = "ERR duplicate of an acknowledged request";
    pub const TOO_LONG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";
    pub const WRITE_ON_READ_PATH: &str = "ERR write command on the read-only path";
}
