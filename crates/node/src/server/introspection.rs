//! What clients ask about the server: `HELLO`, `CLIENT`, `INFO`,
//! `COMMAND`, `CONFIG GET`.
//!
//! Enough of each for `redis-cli`, `redis-benchmark` and the usual client
//! libraries to start cleanly, plus a `# Paxos` section in `INFO` with this
//! node's view of the parliament.

use std::fmt::Write as _;

use bytes::Bytes;

use super::argv::Argv;
use super::connection::check_password;
use super::dispatch::{ClientState, Ctx};
use super::table::{COMMANDS, Spec, lookup};
use crate::api::StatusReport;
use kv::Glob;
use resp::{ArgError, Reply, parse_i64};

/// The server's version, as `HELLO` and `INFO` report it.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Redis version whose protocol and commands parliament follows; some
/// clients read `redis_version` to decide what they may send.
const REDIS_VERSION: &str = "7.0.0";

const NOPROTO: &str = "NOPROTO unsupported protocol version";
const HELLO_NOAUTH: &str = "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time";

fn simple(text: &str) -> Reply {
    Reply::Simple(text.to_owned())
}

fn bulk(text: impl Into<String>) -> Reply {
    Reply::Bulk(Bytes::from(text.into()))
}

fn subcommand_arity(command: &str, sub: &str) -> Reply {
    Reply::Error(format!(
        "ERR wrong number of arguments for '{command}|{}' command",
        sub.to_ascii_lowercase()
    ))
}

fn unknown_subcommand(command: &str, sub: &[u8]) -> Reply {
    Reply::Error(format!(
        "ERR unknown subcommand '{}'. Try {} HELP.",
        String::from_utf8_lossy(sub),
        command.to_ascii_uppercase()
    ))
}

fn help(lines: &[&str]) -> Reply {
    Reply::Array(lines.iter().map(|line| simple(line)).collect())
}

/// `HELLO [protover [AUTH username password] [SETNAME name]]`. Only RESP2
/// is spoken; the reply is the map of Redis's `HELLO` as a flat array.
///
/// `mode` is `standalone` and `role` is `master` on every node: to a client
/// the parliament is one keyspace without slots, and any member accepts
/// writes (a follower hands them to the leader). `paxos_role` tells the
/// node's actual role.
pub(crate) fn hello(mut argv: Argv, state: &mut ClientState, ctx: Ctx<'_>) -> Reply {
    if argv.remaining() > 0 {
        let version = match argv.next().map(|v| parse_i64(&v)) {
            Ok(Some(version)) => version,
            _ => return Reply::error("ERR Protocol version is not an integer or out of range"),
        };
        if version != 2 {
            return Reply::error(NOPROTO);
        }
    }
    let mut credentials = None;
    let mut name = None;
    while argv.remaining() > 0 {
        let remaining = argv.remaining();
        if remaining >= 3 && argv.eat("AUTH") {
            let (Ok(user), Ok(password)) = (argv.next(), argv.next()) else {
                return ArgError::Syntax.to_reply();
            };
            credentials = Some((user, password));
        } else if remaining >= 2 && argv.eat("SETNAME") {
            name = argv.next().ok();
        } else {
            let option = argv.peek().first().cloned().unwrap_or_default();
            return Reply::Error(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&option)
            ));
        }
    }
    if let Some((user, password)) = credentials {
        if let Err(error) = check_password(Some(&user), &password, ctx.config.password.as_deref()) {
            return error;
        }
        state.authenticated = true;
    }
    if !state.authenticated {
        return Reply::error(HELLO_NOAUTH);
    }
    if let Some(name) = name
        && let Err(error) = set_name(state, name)
    {
        return error;
    }
    let status = ctx.node.status();
    Reply::Array(vec![
        bulk("server"),
        bulk("parliament"),
        bulk("version"),
        bulk(VERSION),
        bulk("proto"),
        Reply::Integer(2),
        bulk("id"),
        Reply::Integer(i64::try_from(state.id).unwrap_or(i64::MAX)),
        bulk("mode"),
        bulk("standalone"),
        bulk("role"),
        bulk("master"),
        bulk("modules"),
        Reply::Array(Vec::new()),
        bulk("node_id"),
        Reply::Integer(i64::try_from(ctx.config.node_id).unwrap_or(i64::MAX)),
        bulk("paxos_role"),
        bulk(status.role),
    ])
}

/// Client names and library names: printable ASCII without spaces, as in
/// Redis, so that `CLIENT INFO` lines stay parseable.
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

const NAME_BYTES_MAX: usize = 1024;

fn set_name(state: &mut ClientState, name: Bytes) -> Result<(), Reply> {
    if !valid_name(&name) || name.len() > NAME_BYTES_MAX {
        return Err(Reply::error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    state.name = (!name.is_empty()).then_some(name);
    Ok(())
}

/// `CLIENT ID | GETNAME | SETNAME | SETINFO | INFO | HELP`.
pub(crate) fn client(mut argv: Argv, state: &mut ClientState) -> Reply {
    let Ok(sub) = argv.next() else {
        return argv.wrong_arity().to_reply();
    };
    let sub_name = String::from_utf8_lossy(&sub).to_ascii_uppercase();
    let args = argv.remaining();
    let arity_ok = match sub_name.as_str() {
        "ID" | "GETNAME" | "INFO" | "HELP" => args == 0,
        "SETNAME" => args == 1,
        "SETINFO" => args == 2,
        _ => return unknown_subcommand("client", &sub),
    };
    if !arity_ok {
        return subcommand_arity("client", &sub_name);
    }
    match sub_name.as_str() {
        "ID" => Reply::Integer(i64::try_from(state.id).unwrap_or(i64::MAX)),
        "GETNAME" => state.name.clone().map_or(Reply::NullBulk, Reply::Bulk),
        "SETNAME" => match argv.next() {
            Ok(name) => set_name(state, name).map_or_else(|e| e, |()| Reply::ok()),
            Err(error) => error.to_reply(),
        },
        "SETINFO" => {
            let (Ok(attribute), Ok(value)) = (argv.next(), argv.next()) else {
                return subcommand_arity("client", &sub_name);
            };
            if !valid_name(&value) || value.len() > NAME_BYTES_MAX {
                return Reply::error(
                    "ERR lib-name and lib-ver cannot contain spaces, newlines or special characters.",
                );
            }
            if attribute.eq_ignore_ascii_case(b"lib-name") {
                state.lib_name = Some(value);
            } else if attribute.eq_ignore_ascii_case(b"lib-ver") {
                state.lib_ver = Some(value);
            } else {
                return Reply::Error(format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(&attribute)
                ));
            }
            Reply::ok()
        }
        "INFO" => bulk(client_line(state)),
        _ => help(&[
            "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "ID",
            "    Return the ID of the current connection.",
            "GETNAME",
            "    Return the name of the current connection.",
            "SETNAME <name>",
            "    Assign the name <name> to the current connection.",
            "SETINFO <LIB-NAME|LIB-VER> <value>",
            "    Set client meta attr.",
            "INFO",
            "    Return information about the current client connection.",
            "HELP",
            "    Print this help.",
        ]),
    }
}

/// The connection described the way `CLIENT INFO` does in Redis.
fn client_line(state: &ClientState) -> String {
    let text = |value: &Option<Bytes>| {
        value
            .as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    let (multi, flags) = match &state.txn.multi {
        Some(_) => (0, "x"),
        None => (-1, "N"),
    };
    format!(
        "id={} addr={} laddr={} name={} db=0 multi={multi} watch={} flags={flags} resp=2 lib-name={} lib-ver={}\n",
        state.id,
        addr(state.peer),
        addr(state.local),
        text(&state.name),
        state.txn.watch.watched(),
        text(&state.lib_name),
        text(&state.lib_ver),
    )
}

/// The sections of `INFO`, in order.
const SECTIONS: &[&str] = &["server", "clients", "stats", "keyspace", "paxos"];

/// `INFO [section ...]`: `default`, `all` and `everything` are every
/// section; unknown sections are skipped, as in Redis.
pub(crate) fn info(argv: Argv, state: &ClientState, ctx: Ctx<'_>) -> Result<Reply, Reply> {
    let asked = argv.rest();
    let wanted = |section: &str| {
        asked.is_empty()
            || asked.iter().any(|a| {
                a.eq_ignore_ascii_case(section.as_bytes())
                    || [&b"all"[..], b"everything", b"default"]
                        .iter()
                        .any(|all| a.eq_ignore_ascii_case(all))
            })
    };
    let status = ctx.node.status();
    let mut text = String::new();
    for section in SECTIONS.iter().filter(|s| wanted(s)) {
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        info_section(&mut text, section, state, ctx, &status);
    }
    Ok(bulk(text))
}

fn info_section(
    out: &mut String,
    section: &str,
    state: &ClientState,
    ctx: Ctx<'_>,
    status: &StatusReport,
) {
    let metrics = ctx.node.metrics();
    // Writing to a String cannot fail.
    let _ = match section {
        "server" => write!(
            out,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nparliament_version:{VERSION}\r\n\
             redis_mode:standalone\r\nnode_id:{}\r\ncluster_id:{}\r\nprocess_id:{}\r\n\
             tcp_port:{}\r\nuptime_in_seconds:{}\r\nuptime_in_days:{}\r\n",
            ctx.config.node_id,
            status.cluster_id,
            std::process::id(),
            state.local.map_or(0, |a| a.port()),
            status.uptime_seconds,
            status.uptime_seconds / 86_400,
        ),
        "clients" => write!(
            out,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n",
            metrics.client_connections_open.get(),
            ctx.config.connections_max,
        ),
        "stats" => write!(
            out,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
             total_error_replies:{}\r\n",
            metrics.client_connections_total.get(),
            metrics.client_commands.get(),
            metrics.client_errors.get(),
        ),
        "keyspace" => {
            let _ = out.write_str("# Keyspace\r\n");
            if status.keys > 0 {
                write!(out, "db0:keys={},expires=0,avg_ttl=0\r\n", status.keys)
            } else {
                Ok(())
            }
        }
        _ => paxos_section(out, status),
    };
}

/// `# Paxos`: the node's role and progress, the membership in force
/// (`members:` its voters, `learners:`, `config_slot:` the first slot it
/// governs), and the members it knows.
fn paxos_section(out: &mut String, status: &StatusReport) -> std::fmt::Result {
    let leader = status
        .leader_id
        .map(|id| id.to_string())
        .unwrap_or_default();
    let list = |ids: &[u64]| {
        ids.iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    write!(
        out,
        "# Paxos\r\nrole:{}\r\nleader_id:{leader}\r\nballot:{}\r\ncommit_slot:{}\r\n\
         applied_slot:{}\r\nlog_start:{}\r\nmembers:{}\r\nlearners:{}\r\nconfig_slot:{}\r\n\
         rejoining:{}\r\nrejoin_waiting_for:{}\r\n",
        status.role,
        status.ballot,
        status.commit_slot,
        status.applied_slot,
        status.log_start,
        list(&status.voters),
        list(&status.learners),
        status.config_slot,
        u8::from(status.rejoining),
        list(&status.rejoin_waiting_for),
    )?;
    for m in &status.members {
        write!(
            out,
            "member_{}:peer_addr={},client_addr={},connected={},match_slot={}\r\n",
            m.id,
            m.peer_addr,
            m.client_addr.as_deref().unwrap_or(""),
            u8::from(m.connected),
            m.match_slot.map(|s| s.to_string()).unwrap_or_default(),
        )?;
    }
    Ok(())
}

/// `COMMAND`, `COMMAND COUNT | LIST | INFO [name ...] | DOCS [name ...]`.
pub(crate) fn command(mut argv: Argv) -> Result<Reply, Reply> {
    if argv.remaining() == 0 {
        return Ok(Reply::Array(COMMANDS.iter().map(command_info).collect()));
    }
    let sub = argv.next()?;
    let sub_name = String::from_utf8_lossy(&sub).to_ascii_uppercase();
    let names = argv.rest();
    Ok(match sub_name.as_str() {
        "COUNT" if names.is_empty() => Reply::Integer(i64::try_from(COMMANDS.len()).unwrap_or(0)),
        "LIST" if names.is_empty() => {
            Reply::Array(COMMANDS.iter().map(|spec| bulk(spec.name)).collect())
        }
        "INFO" if names.is_empty() => Reply::Array(COMMANDS.iter().map(command_info).collect()),
        "INFO" => Reply::Array(
            names
                .iter()
                .map(|name| lookup(name).map_or(Reply::NullArray, command_info))
                .collect(),
        ),
        // Documentation is optional: an empty map makes redis-cli fall back
        // to its own hints.
        "DOCS" => Reply::Array(Vec::new()),
        "HELP" if names.is_empty() => help(&[
            "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "(no subcommand)",
            "    Return details about all commands.",
            "COUNT",
            "    Return the total number of commands.",
            "LIST",
            "    Return a list of all commands.",
            "INFO [<command-name> ...]",
            "    Return details about the given commands, or all of them.",
            "DOCS [<command-name> ...]",
            "    Return documentation (none is kept).",
            "HELP",
            "    Print this help.",
        ]),
        "COUNT" | "LIST" | "HELP" => return Err(subcommand_arity("command", &sub_name)),
        _ => return Err(unknown_subcommand("command", &sub)),
    })
}

/// One command as `COMMAND INFO` describes it (Redis 7's ten fields).
fn command_info(spec: &Spec) -> Reply {
    let (first, last, step) = spec.keys;
    Reply::Array(vec![
        bulk(spec.name),
        Reply::Integer(i64::from(spec.arity)),
        Reply::Array(spec.flags.iter().map(|flag| simple(flag)).collect()),
        Reply::Integer(i64::from(first)),
        Reply::Integer(i64::from(last)),
        Reply::Integer(i64::from(step)),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

/// `CONFIG GET pattern [pattern ...]` over the few parameters clients ask
/// about; `CONFIG SET` is refused, configuration is fixed at start-up.
pub(crate) fn config(mut argv: Argv, ctx: Ctx<'_>) -> Result<Reply, Reply> {
    let sub = argv.next()?;
    let sub_name = String::from_utf8_lossy(&sub).to_ascii_uppercase();
    match sub_name.as_str() {
        "GET" if argv.remaining() == 0 => Err(subcommand_arity("config", "get")),
        "GET" => {
            let config = ctx.config;
            let parameters: [(&str, String); 7] = [
                // No point-in-time dumps: durability is the write-ahead log.
                ("save", String::new()),
                ("appendonly", "yes".to_owned()),
                ("appendfsync", "always".to_owned()),
                ("databases", "1".to_owned()),
                ("maxclients", config.connections_max.to_string()),
                ("proto-max-bulk-len", config.resp.bulk_bytes_max.to_string()),
                ("cluster-enabled", "no".to_owned()),
            ];
            let patterns: Vec<Glob> = argv
                .rest()
                .iter()
                .map(|p| Glob::new(&p.to_ascii_lowercase()))
                .collect();
            let mut reply = Vec::new();
            for (name, value) in parameters {
                if patterns.iter().any(|glob| glob.matches(name.as_bytes())) {
                    reply.push(bulk(name));
                    reply.push(bulk(value));
                }
            }
            Ok(Reply::Array(reply))
        }
        "SET" => Err(Reply::error(
            "ERR CONFIG SET is not supported: parliament is configured when it starts",
        )),
        "HELP" => Ok(help(&[
            "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "GET <pattern>",
            "    Return parameters matching the glob-like <pattern> and their values.",
            "HELP",
            "    Print this help.",
        ])),
        _ => Err(unknown_subcommand("config", &sub)),
    }
}
