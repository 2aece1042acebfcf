//! The command table: every command the server knows, its arity and flags.
//!
//! One table serves three purposes: finding a request's command without
//! allocating, checking arity the way Redis does before anything else, and
//! answering `COMMAND`, so that cluster-aware clients can find the keys of
//! a command.

/// Every command the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cmd {
    // Strings.
    Get,
    Set,
    SetNx,
    GetSet,
    GetDel,
    Incr,
    IncrBy,
    Decr,
    DecrBy,
    Append,
    Strlen,
    MGet,
    MSet,
    Cas,
    // The keyspace.
    Del,
    Unlink,
    Exists,
    DbSize,
    Keys,
    Scan,
    FlushAll,
    FlushDb,
    // Transactions.
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    // The connection.
    Ping,
    Echo,
    Quit,
    Select,
    Auth,
    Hello,
    Client,
    ReadOnly,
    ReadWrite,
    // The parliament.
    Paxos,
    // Introspection.
    Info,
    Command,
    Config,
}

/// What happens to a command sent between `MULTI` and `EXEC`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InMulti {
    /// A key-value command: queued, and sent to the node with `EXEC`.
    Queue,
    /// Answered by the connection itself from nothing but its arguments and
    /// the node's published status; its reply takes its place in `EXEC`'s.
    Local,
    /// Runs at once: the transaction commands themselves, and `QUIT`.
    Run,
    /// Changes the connection's state; refused, and `EXEC` will fail.
    Refuse,
}

/// One row of the table.
#[derive(Debug)]
pub(crate) struct Spec {
    /// Lower case, as Redis prints command names.
    pub name: &'static str,
    pub cmd: Cmd,
    /// Redis's convention: the count of arguments including the name, or
    /// its negation for "at least that many".
    pub arity: i32,
    /// Flags as `COMMAND` reports them.
    pub flags: &'static [&'static str],
    /// Position of the first key, of the last key (negative counts from
    /// the end) and the step between keys; zeros when there are no keys.
    pub keys: (i32, i32, i32),
    /// Allowed before `AUTH` on a server with a password.
    pub no_auth: bool,
    pub in_multi: InMulti,
}

impl Spec {
    /// Whether `argc` arguments, name included, satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = i64::try_from(argc).unwrap_or(i64::MAX);
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }
}

const READ: &[&str] = &["readonly", "fast"];
const READ_SLOW: &[&str] = &["readonly"];
const WRITE: &[&str] = &["write", "denyoom"];
const WRITE_FAST: &[&str] = &["write", "denyoom", "fast"];
const DELETE: &[&str] = &["write"];
const TXN: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];
const CONN: &[&str] = &["noscript", "loading", "stale", "fast"];
const CONN_NO_AUTH: &[&str] = &["noscript", "loading", "stale", "fast", "no_auth"];
const ADMIN: &[&str] = &["loading", "stale"];

const fn kv(
    name: &'static str,
    cmd: Cmd,
    arity: i32,
    flags: &'static [&'static str],
    keys: (i32, i32, i32),
) -> Spec {
    Spec {
        name,
        cmd,
        arity,
        flags,
        keys,
        no_auth: false,
        in_multi: InMulti::Queue,
    }
}

const fn local(
    name: &'static str,
    cmd: Cmd,
    arity: i32,
    flags: &'static [&'static str],
    in_multi: InMulti,
) -> Spec {
    Spec {
        name,
        cmd,
        arity,
        flags,
        keys: (0, 0, 0),
        no_auth: false,
        in_multi,
    }
}

const ONE: (i32, i32, i32) = (1, 1, 1);
const ALL: (i32, i32, i32) = (1, -1, 1);
const NONE: (i32, i32, i32) = (0, 0, 0);

/// The table, the most frequent commands first since lookup scans it.
pub(crate) static COMMANDS: &[Spec] = &[
    kv("get", Cmd::Get, 2, READ, ONE),
    kv("set", Cmd::Set, -3, WRITE, ONE),
    local("ping", Cmd::Ping, -1, CONN, InMulti::Local),
    kv("incr", Cmd::Incr, 2, WRITE_FAST, ONE),
    kv("mget", Cmd::MGet, -2, READ, ALL),
    kv("mset", Cmd::MSet, -3, WRITE, (1, -1, 2)),
    kv("del", Cmd::Del, -2, DELETE, ALL),
    kv("exists", Cmd::Exists, -2, READ, ALL),
    kv("cas", Cmd::Cas, 4, WRITE, ONE),
    kv("setnx", Cmd::SetNx, 3, WRITE_FAST, ONE),
    kv("getset", Cmd::GetSet, 3, WRITE_FAST, ONE),
    kv("getdel", Cmd::GetDel, 2, WRITE_FAST, ONE),
    kv("incrby", Cmd::IncrBy, 3, WRITE_FAST, ONE),
    kv("decr", Cmd::Decr, 2, WRITE_FAST, ONE),
    kv("decrby", Cmd::DecrBy, 3, WRITE_FAST, ONE),
    kv("append", Cmd::Append, 3, WRITE_FAST, ONE),
    kv("strlen", Cmd::Strlen, 2, READ, ONE),
    kv("unlink", Cmd::Unlink, -2, WRITE_FAST, ALL),
    kv("dbsize", Cmd::DbSize, 1, READ, NONE),
    kv("keys", Cmd::Keys, 2, READ_SLOW, NONE),
    kv("scan", Cmd::Scan, -2, READ_SLOW, NONE),
    kv("flushall", Cmd::FlushAll, -1, DELETE, NONE),
    kv("flushdb", Cmd::FlushDb, -1, DELETE, NONE),
    local("multi", Cmd::Multi, 1, TXN, InMulti::Run),
    local(
        "exec",
        Cmd::Exec,
        1,
        &["noscript", "loading", "stale", "skip_slowlog"],
        InMulti::Run,
    ),
    local("discard", Cmd::Discard, 1, TXN, InMulti::Run),
    Spec {
        keys: ALL,
        ..local("watch", Cmd::Watch, -2, TXN, InMulti::Run)
    },
    local("unwatch", Cmd::Unwatch, 1, TXN, InMulti::Local),
    local("echo", Cmd::Echo, 2, CONN, InMulti::Local),
    Spec {
        no_auth: true,
        ..local("quit", Cmd::Quit, -1, CONN_NO_AUTH, InMulti::Run)
    },
    local("select", Cmd::Select, 2, CONN, InMulti::Refuse),
    local("paxos", Cmd::Paxos, -2, ADMIN, InMulti::Refuse),
    Spec {
        no_auth: true,
        ..local("auth", Cmd::Auth, -2, CONN_NO_AUTH, InMulti::Refuse)
    },
    Spec {
        no_auth: true,
        ..local("hello", Cmd::Hello, -1, CONN_NO_AUTH, InMulti::Refuse)
    },
    local("client", Cmd::Client, -2, ADMIN, InMulti::Refuse),
    local("readonly", Cmd::ReadOnly, 1, CONN, InMulti::Refuse),
    local("readwrite", Cmd::ReadWrite, 1, CONN, InMulti::Refuse),
    local("info", Cmd::Info, -1, ADMIN, InMulti::Local),
    local("command", Cmd::Command, -1, ADMIN, InMulti::Local),
    local("config", Cmd::Config, -2, ADMIN, InMulti::Local),
];

/// Longest command name in the table, so that lookup can lower-case the
/// name into a small buffer on the stack.
const NAME_BYTES_MAX: usize = 16;

/// Finds a command by name, ignoring ASCII case, without allocating.
pub(crate) fn lookup(name: &[u8]) -> Option<&'static Spec> {
    if name.len() > NAME_BYTES_MAX {
        return None;
    }
    let mut lower = [0u8; NAME_BYTES_MAX];
    let lower = &mut lower[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    COMMANDS.iter().find(|spec| spec.name.as_bytes() == lower)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_lower_case_unique_and_short() {
        for (i, spec) in COMMANDS.iter().enumerate() {
            assert!(spec.name.len() <= NAME_BYTES_MAX, "{}", spec.name);
            assert_eq!(spec.name, spec.name.to_ascii_lowercase());
            assert!(
                COMMANDS[i + 1..]
                    .iter()
                    .all(|other| other.name != spec.name && other.cmd != spec.cmd),
                "{} is listed twice",
                spec.name
            );
            assert!(std::ptr::eq(
                lookup(spec.name.to_ascii_uppercase().as_bytes()).unwrap(),
                spec
            ));
        }
        assert!(lookup(b"nosuchcommand").is_none());
        assert!(lookup(b"getgetgetgetgetgetget").is_none());
    }

    #[test]
    fn arity_follows_redis_convention() {
        let get = lookup(b"get").unwrap();
        assert!(get.arity_ok(2));
        assert!(!get.arity_ok(1) && !get.arity_ok(3));
        let del = lookup(b"del").unwrap();
        assert!(!del.arity_ok(1));
        assert!(del.arity_ok(2) && del.arity_ok(100));
    }
}
