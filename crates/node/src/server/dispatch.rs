//! From a decoded request to what to do with it, in Redis's order of
//! checks: the command exists, its arity, authentication, the transaction
//! queue, then the command itself.
//!
//! Nothing here waits: a command the node must answer comes back as
//! [`Outcome::Node`], and the connection loop sends it and keeps its place
//! in the reply order.

use std::net::SocketAddr;

use bytes::Bytes;

use super::argv::Argv;
use super::limits::Config;
use super::table::{Cmd, InMulti, lookup};
use super::txn::{self, Txn};
use super::{admin, backup, connection, introspection, keys, strings};
use crate::api::{ConnId, NodeError, NodeHandle, ReadMode};
use kv::{self, Command};
use resp::Reply;

pub(crate) const NOAUTH: &str = "NOAUTH Authentication required.";

/// What the connection knows about itself.
#[derive(Debug)]
pub(crate) struct ClientState {
    pub id: ConnId,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// Set by `CLIENT SETNAME` or `HELLO ... SETNAME`.
    pub name: Option<Bytes>,
    /// Set by `CLIENT SETINFO`.
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    pub authenticated: bool,
    /// `Stale` after `READONLY`, back to `Linearizable` after `READWRITE`.
    pub read_mode: ReadMode,
    pub txn: Txn,
}

impl ClientState {
    pub fn new(id: ConnId, config: &Config) -> ClientState {
        ClientState {
            id,
            peer: None,
            local: None,
            name: None,
            lib_name: None,
            lib_ver: None,
            authenticated: config.password.is_none(),
            read_mode: ReadMode::Linearizable,
            txn: Txn::default(),
        }
    }

    /// Inside `MULTI`, an error while queueing makes `EXEC` fail.
    fn flag_transaction(&mut self) {
        if let Some(multi) = &mut self.txn.multi {
            multi.flag();
        }
    }

    /// Applies the node's answer to the connection's state and turns it
    /// into the client's reply.
    pub fn finish(&mut self, then: Then, result: Result<kv::Reply, NodeError>) -> Reply {
        match then {
            Then::Reply => super::reply::from_node(result),
            Then::Watch { keys, epoch } => self.txn.watched(keys, epoch, result),
            Then::Exec { locals } => txn::executed(locals, result),
        }
    }
}

/// What the rest of the server lends a command.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx<'a> {
    pub node: &'a NodeHandle,
    pub config: &'a Config,
}

/// A request for the node.
#[derive(Debug)]
pub(crate) enum NodeOp {
    Read(Command, ReadMode),
    Write(Command),
}

/// What to do with the node's answer.
#[derive(Debug)]
pub(crate) enum Then {
    /// Send it to the client.
    Reply,
    /// Remember the versions of a `WATCH`; see [`Txn::watched`].
    Watch { keys: Vec<Bytes>, epoch: u64 },
    /// Merge in the replies decided while queueing; see [`txn::executed`].
    Exec { locals: Vec<(usize, Reply)> },
}

/// What the connection does next.
#[derive(Debug)]
pub(crate) enum Outcome {
    Reply(Reply),
    Node(NodeOp, Then),
    /// Reply `OK`, then close the connection.
    Quit,
    /// A `PAXOS` request, and its arguments as sent (to forward them).
    Admin(crate::api::Admin, Vec<Bytes>),
    /// `PAXOS BACKUP ...`, which this node serves itself.
    Backup(backup::Request),
}

/// Whether `request` is `EXEC`, which must wait for the `WATCH`es before it.
pub(crate) fn is_exec(request: &[Bytes]) -> bool {
    request
        .first()
        .is_some_and(|name| name.eq_ignore_ascii_case(b"exec"))
}

/// Decides what to do with one request.
pub(crate) fn dispatch(state: &mut ClientState, ctx: Ctx<'_>, request: Vec<Bytes>) -> Outcome {
    let Some(spec) = request.first().and_then(|name| lookup(name)) else {
        state.flag_transaction();
        return Outcome::Reply(unknown_command(&request));
    };
    if !spec.arity_ok(request.len()) {
        state.flag_transaction();
        return Outcome::Reply(Argv::new(spec, request).wrong_arity().to_reply());
    }
    if !state.authenticated && !spec.no_auth {
        state.flag_transaction();
        return Outcome::Reply(Reply::error(NOAUTH));
    }
    let argv = Argv::new(spec, request);
    if let Some(multi) = &mut state.txn.multi {
        match spec.in_multi {
            InMulti::Queue => {
                return Outcome::Reply(
                    multi.queue(parse_store_command(argv, ctx.config), ctx.config),
                );
            }
            InMulti::Local => {
                let reply = match spec.cmd {
                    // Queued UNWATCH runs after EXEC checked the versions:
                    // it has nothing left to do.
                    Cmd::Unwatch => Reply::ok(),
                    _ => local(argv, state, ctx),
                };
                let Some(multi) = &mut state.txn.multi else {
                    return Outcome::Reply(reply);
                };
                return Outcome::Reply(multi.queue_local(reply, ctx.config));
            }
            InMulti::Refuse => {
                multi.flag();
                return Outcome::Reply(Reply::error(txn::NOT_IN_MULTI));
            }
            InMulti::Run => {}
        }
    }
    match spec.in_multi {
        InMulti::Queue => match parse_store_command(argv, ctx.config) {
            Ok(command) if command.is_read_only() => {
                Outcome::Node(NodeOp::Read(command, state.read_mode), Then::Reply)
            }
            Ok(command) => Outcome::Node(NodeOp::Write(command), Then::Reply),
            Err(error) => Outcome::Reply(error),
        },
        InMulti::Local if spec.cmd != Cmd::Unwatch => Outcome::Reply(local(argv, state, ctx)),
        _ => run(argv, state, ctx),
    }
}

/// Parses a command the store runs.
fn parse_store_command(argv: Argv, config: &Config) -> Result<Command, Reply> {
    match argv.spec().cmd {
        Cmd::Del
        | Cmd::Unlink
        | Cmd::Exists
        | Cmd::DbSize
        | Cmd::Keys
        | Cmd::Scan
        | Cmd::FlushAll
        | Cmd::FlushDb => keys::parse(argv, config),
        _ => strings::parse(argv, config),
    }
}

/// Commands the connection answers from their arguments and the node's
/// status alone.
fn local(argv: Argv, state: &ClientState, ctx: Ctx<'_>) -> Reply {
    let result = match argv.spec().cmd {
        Cmd::Ping => connection::ping(argv),
        Cmd::Echo => connection::echo(argv),
        Cmd::Info => introspection::info(argv, state, ctx),
        Cmd::Command => introspection::command(argv),
        Cmd::Config => introspection::config(argv, ctx),
        other => Err(internal(other)),
    };
    result.unwrap_or_else(|error| error)
}

/// Commands that change the connection's state.
fn run(mut argv: Argv, state: &mut ClientState, ctx: Ctx<'_>) -> Outcome {
    let reply = match argv.spec().cmd {
        Cmd::Multi => state.txn.multi(),
        Cmd::Exec => return state.txn.exec(),
        Cmd::Discard => state.txn.discard(),
        Cmd::Watch => return state.txn.watch(argv, ctx.config),
        Cmd::Unwatch => state.txn.unwatch(),
        Cmd::Quit => return Outcome::Quit,
        Cmd::Select => connection::select(argv),
        Cmd::Auth => connection::auth(argv, state, ctx.config),
        Cmd::ReadOnly => connection::set_read_mode(state, ReadMode::Stale),
        Cmd::ReadWrite => connection::set_read_mode(state, ReadMode::Linearizable),
        Cmd::Hello => introspection::hello(argv, state, ctx),
        Cmd::Client => introspection::client(argv, state),
        Cmd::Paxos => {
            let mut args = Vec::with_capacity(argv.remaining() + 1);
            args.push(Bytes::from_static(b"PAXOS"));
            args.extend_from_slice(argv.peek());
            if argv.eat("backup") {
                return match backup::parse(argv) {
                    Ok(request) => Outcome::Backup(request),
                    Err(reply) => Outcome::Reply(reply),
                };
            }
            match admin::parse(argv) {
                Ok(request) => return Outcome::Admin(request, args),
                Err(reply) => reply,
            }
        }
        other => internal(other),
    };
    Outcome::Reply(reply)
}

/// A command reached the wrong handler: a bug in the table, answered
/// rather than panicking the node.
fn internal(cmd: Cmd) -> Reply {
    Reply::Error(format!("ERR internal error: no handler for {cmd:?}"))
}

/// Redis's reply to an unknown command: the name and the first arguments,
/// quoted, up to about 128 bytes of them.
fn unknown_command(request: &[Bytes]) -> Reply {
    const SHOWN_BYTES_MAX: usize = 128;
    let name = request
        .first()
        .map_or(&[][..], |name| &name[..name.len().min(SHOWN_BYTES_MAX)]);
    let mut args = String::new();
    for arg in request.iter().skip(1) {
        if args.len() >= SHOWN_BYTES_MAX {
            break;
        }
        let room = SHOWN_BYTES_MAX - args.len();
        args.push('\'');
        args.push_str(&String::from_utf8_lossy(&arg[..arg.len().min(room)]));
        args.push_str("' ");
    }
    Reply::Error(format!(
        "ERR unknown command '{}', with args beginning with: {args}",
        String::from_utf8_lossy(name)
    ))
}
