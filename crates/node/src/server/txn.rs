//! `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`.
//!
//! The transaction is queued on the connection and reaches the node as one
//! [`Command::Exec`]: one log entry, applied atomically on every replica.
//! `WATCH` reads each key's version linearizably ([`Command::Version`]) and
//! the versions travel with `EXEC`; the store aborts the transaction (a nil
//! reply) when any of them changed meanwhile.
//!
//! Commands that only the connection answers (`PING`, `ECHO`, `INFO`...)
//! may be queued too: they are answered when queued and their replies are
//! put back in place among the store's when `EXEC` returns.

use bytes::Bytes;

use super::argv::Argv;
use super::dispatch::{NodeOp, Outcome, Then};
use super::limits::Config;
use crate::api::{NodeError, ReadMode};
use kv::{self, Command};
use resp::Reply;

pub(crate) const EXEC_ABORT: &str = "EXECABORT Transaction discarded because of previous errors.";
pub(crate) const NOT_IN_MULTI: &str = "ERR Command not allowed inside a transaction";

/// The queue between `MULTI` and `EXEC`.
#[derive(Debug, Default)]
pub(crate) struct Multi {
    /// The store's commands, in order.
    commands: Vec<Command>,
    /// Replies decided when queued, with their position in `EXEC`'s reply:
    /// answers of local commands, and errors found parsing a command (which
    /// Redis too reports inside `EXEC`'s reply, not as an abort).
    locals: Vec<(usize, Reply)>,
    /// An unknown command, a wrong arity or a refused command was queued:
    /// `EXEC` must fail.
    dirty: bool,
}

impl Multi {
    fn len(&self) -> usize {
        self.commands.len() + self.locals.len()
    }

    /// Marks the transaction as failed; `EXEC` will answer `EXECABORT`.
    pub fn flag(&mut self) {
        self.dirty = true;
    }

    /// Queues a parsed store command, or the error that parsing gave.
    pub fn queue(&mut self, parsed: Result<Command, Reply>, config: &Config) -> Reply {
        if let Some(full) = self.full(config) {
            return full;
        }
        match parsed {
            Ok(command) => self.commands.push(command),
            Err(error) => self.locals.push((self.len(), error)),
        }
        Reply::Simple("QUEUED".to_owned())
    }

    /// Queues the reply of a command the connection answers itself.
    pub fn queue_local(&mut self, reply: Reply, config: &Config) -> Reply {
        if let Some(full) = self.full(config) {
            return full;
        }
        self.locals.push((self.len(), reply));
        Reply::Simple("QUEUED".to_owned())
    }

    fn full(&mut self, config: &Config) -> Option<Reply> {
        if self.len() < config.transaction_commands_max {
            return None;
        }
        self.dirty = true;
        Some(Reply::Error(format!(
            "ERR a transaction may queue at most {} commands",
            config.transaction_commands_max
        )))
    }
}

/// The keys this connection watches.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// Keys with the version read when they were watched.
    keys: Vec<(Bytes, u64)>,
    /// Bumped by `UNWATCH`, `EXEC` and `DISCARD`, so that a version that
    /// arrives for an earlier `WATCH` after one of them is ignored.
    epoch: u64,
    /// A `WATCH` got no version (the node refused it): the next `EXEC`
    /// aborts, since it cannot tell whether the key changed.
    failed: bool,
    /// `WATCH` requests sent to the node and not answered yet; `EXEC`
    /// waits for them.
    pub in_flight: usize,
    /// Keys of those requests, counted against the limit.
    keys_in_flight: usize,
}

impl Watch {
    /// How many keys are watched.
    pub fn watched(&self) -> usize {
        self.keys.len()
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.failed = false;
        self.epoch += 1;
    }
}

/// The transaction state of one connection.
#[derive(Debug, Default)]
pub(crate) struct Txn {
    pub multi: Option<Multi>,
    pub watch: Watch,
}

impl Txn {
    pub fn multi(&mut self) -> Reply {
        if self.multi.is_some() {
            return Reply::error(kv::errors::NESTED_MULTI);
        }
        self.multi = Some(Multi::default());
        Reply::ok()
    }

    pub fn discard(&mut self) -> Reply {
        if self.multi.take().is_none() {
            return Reply::error("ERR DISCARD without MULTI");
        }
        self.watch.clear();
        Reply::ok()
    }

    pub fn unwatch(&mut self) -> Reply {
        self.watch.clear();
        Reply::ok()
    }

    /// `WATCH key...`: reads the versions, linearizably.
    pub fn watch(&mut self, argv: Argv, config: &Config) -> Outcome {
        if self.multi.is_some() {
            return Outcome::Reply(Reply::error("ERR WATCH inside MULTI is not allowed"));
        }
        let keys = match argv.keys(config) {
            Ok(keys) => keys,
            Err(error) => return Outcome::Reply(error),
        };
        let watched = self.watch.keys.len() + self.watch.keys_in_flight + keys.len();
        if watched > config.watched_keys_max {
            return Outcome::Reply(Reply::Error(format!(
                "ERR a connection may watch at most {} keys",
                config.watched_keys_max
            )));
        }
        let command = match keys.as_slice() {
            [key] => Command::Version(key.clone()),
            _ => Command::Exec {
                watches: Vec::new(),
                commands: keys.iter().cloned().map(Command::Version).collect(),
            },
        };
        self.watch.in_flight += 1;
        self.watch.keys_in_flight += keys.len();
        Outcome::Node(
            NodeOp::Read(command, ReadMode::Linearizable),
            Then::Watch {
                keys,
                epoch: self.watch.epoch,
            },
        )
    }

    /// The node answered a `WATCH`: remember the versions.
    pub fn watched(
        &mut self,
        keys: Vec<Bytes>,
        epoch: u64,
        result: Result<kv::Reply, NodeError>,
    ) -> Reply {
        self.watch.in_flight = self.watch.in_flight.saturating_sub(1);
        self.watch.keys_in_flight = self.watch.keys_in_flight.saturating_sub(keys.len());
        let versions: Option<Vec<u64>> = match &result {
            Ok(reply @ kv::Reply::Integer(_)) if keys.len() == 1 => version(reply).map(|v| vec![v]),
            Ok(kv::Reply::Array(items)) if keys.len() > 1 && items.len() == keys.len() => {
                items.iter().map(version).collect()
            }
            _ => None,
        };
        let current = epoch == self.watch.epoch;
        match versions {
            Some(versions) => {
                if current {
                    self.watch.keys.extend(keys.into_iter().zip(versions));
                }
                Reply::ok()
            }
            None => {
                if current {
                    self.watch.failed = true;
                }
                match result {
                    Err(error) => super::reply::from_error(&error),
                    Ok(kv::Reply::Error(text)) => Reply::Error(text),
                    Ok(_) => Reply::error("ERR unexpected reply to a version read"),
                }
            }
        }
    }

    /// `EXEC`: sends the queue to the node as one command.
    ///
    /// The caller has waited for every `WATCH` sent before (see
    /// [`Watch::in_flight`]).
    pub fn exec(&mut self) -> Outcome {
        let Some(multi) = self.multi.take() else {
            return Outcome::Reply(Reply::error("ERR EXEC without MULTI"));
        };
        let watches = std::mem::take(&mut self.watch.keys);
        let failed = self.watch.failed;
        self.watch.clear();
        if multi.dirty {
            return Outcome::Reply(Reply::error(EXEC_ABORT));
        }
        if failed {
            return Outcome::Reply(Reply::NullArray);
        }
        let Multi {
            commands, locals, ..
        } = multi;
        if commands.is_empty() && watches.is_empty() {
            return Outcome::Reply(Reply::Array(locals.into_iter().map(|(_, r)| r).collect()));
        }
        let command = Command::Exec { watches, commands };
        // Transactions are always linearizable, whatever READONLY says: the
        // versions they compare were read that way.
        let op = if command.is_read_only() {
            NodeOp::Read(command, ReadMode::Linearizable)
        } else {
            NodeOp::Write(command)
        };
        Outcome::Node(op, Then::Exec { locals })
    }
}

/// A version as the store reports it.
fn version(reply: &kv::Reply) -> Option<u64> {
    match reply {
        kv::Reply::Integer(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

/// Puts the replies decided at queueing time back among the store's.
pub(crate) fn executed(locals: Vec<(usize, Reply)>, result: Result<kv::Reply, NodeError>) -> Reply {
    let replies = match result {
        Ok(kv::Reply::Array(replies)) => replies,
        other => return super::reply::from_node(other),
    };
    let total = replies.len() + locals.len();
    let mut merged = Vec::with_capacity(total);
    let mut locals = locals.into_iter().peekable();
    let mut replies = replies.into_iter();
    for position in 0..total {
        let reply = match locals.next_if(|(at, _)| *at == position) {
            Some((_, reply)) => Some(reply),
            None => replies.next().map(super::reply::from_kv),
        };
        match reply {
            Some(reply) => merged.push(reply),
            None => return Reply::error("ERR internal error: EXEC reply has the wrong length"),
        }
    }
    Reply::Array(merged)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn local_replies_take_their_places() {
        let locals = vec![
            (0, Reply::Simple("PONG".into())),
            (2, Reply::error("ERR syntax error")),
        ];
        let store = kv::Reply::Array(vec![kv::Reply::ok(), kv::Reply::Integer(7)]);
        assert_eq!(
            executed(locals, Ok(store)),
            Reply::Array(vec![
                Reply::Simple("PONG".into()),
                Reply::ok(),
                Reply::error("ERR syntax error"),
                Reply::Integer(7),
            ])
        );
        assert_eq!(executed(vec![], Ok(kv::Reply::NilArray)), Reply::NullArray);
        assert_eq!(
            executed(vec![(5, Reply::ok())], Ok(kv::Reply::Array(vec![]))),
            Reply::error("ERR internal error: EXEC reply has the wrong length")
        );
    }

    #[test]
    fn a_late_version_after_unwatch_is_ignored() {
        let mut txn = Txn::default();
        let config = Config::default();
        let key = Bytes::from_static(b"k");
        let request = vec![Bytes::from_static(b"watch"), key.clone()];
        let spec = super::super::table::lookup(b"watch").unwrap();
        let Outcome::Node(_, Then::Watch { keys, epoch }) =
            txn.watch(Argv::new(spec, request), &config)
        else {
            panic!("WATCH must read versions from the node");
        };
        assert_eq!(txn.watch.in_flight, 1);
        txn.unwatch();
        assert_eq!(
            txn.watched(keys, epoch, Ok(kv::Reply::Integer(3))),
            Reply::ok()
        );
        assert!(txn.watch.keys.is_empty());
        assert_eq!(txn.watch.in_flight, 0);
    }

    #[test]
    fn a_failed_watch_aborts_the_next_exec() {
        let mut txn = Txn::default();
        let epoch = txn.watch.epoch;
        txn.watch.in_flight = 1;
        let reply = txn.watched(
            vec![Bytes::from_static(b"k")],
            epoch,
            Err(NodeError::ClusterDown),
        );
        assert_eq!(
            reply,
            Reply::error("CLUSTERDOWN no leader is known; retry shortly")
        );
        txn.multi();
        assert!(matches!(txn.exec(), Outcome::Reply(Reply::NullArray)));
        // The failure is forgotten with the transaction.
        txn.multi();
        assert!(matches!(txn.exec(), Outcome::Reply(Reply::Array(a)) if a.is_empty()));
    }
}
