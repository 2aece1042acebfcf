//! `parliament member` and `parliament leader`: the `PAXOS` admin commands
//! from the command line, sent to any member's client port (the member
//! forwards them to the leader).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use loadgen::resp_client::RespConn;
use resp::Reply;

/// How long a change may take: the leader answers once it is chosen.
const CALL_TIMEOUT: Duration = Duration::from_secs(40);

/// Where to send the request.
#[derive(Args, Debug)]
pub struct Target {
    /// The client address of any member.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:6379")]
    addr: String,
    /// The cluster's password, if it has one.
    #[arg(long)]
    password: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Every member: role, addresses, how far it has the log, connected.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Adds a node as a learner; it becomes a voter once it has caught up
    /// (unless --learner). Start it with `serve --join` before or after.
    Add {
        /// The new node's id (never one used before in this cluster).
        id: u64,
        /// Where peers reach it.
        peer_addr: String,
        /// Where clients reach it.
        client_addr: String,
        /// Keep it a learner: it receives the log but never votes.
        #[arg(long)]
        learner: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Makes a learner a voter.
    Promote {
        id: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Removes a member for good (the leader hands its leadership over
    /// first if it is the one removed).
    Remove {
        id: u64,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
pub enum LeaderCommand {
    /// Hands the leadership to a caught-up voter, without an election gap.
    Transfer {
        /// The voter to lead.
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        target: Target,
    },
}

pub fn run_member(command: MemberCommand) -> Result<ExitCode> {
    match command {
        MemberCommand::List { target } => {
            let reply = call(&target, &["PAXOS", "MEMBERS"])?;
            print!("{}", render_members(&reply)?);
            Ok(ExitCode::SUCCESS)
        }
        MemberCommand::Add {
            id,
            peer_addr,
            client_addr,
            learner,
            target,
        } => {
            let id = id.to_string();
            let mut args = vec!["PAXOS", "MEMBER", "ADD", &id, &peer_addr, &client_addr];
            if learner {
                args.push("LEARNER");
            }
            done(call(&target, &args)?)
        }
        MemberCommand::Promote { id, target } => done(call(
            &target,
            &["PAXOS", "MEMBER", "PROMOTE", &id.to_string()],
        )?),
        MemberCommand::Remove { id, target } => done(call(
            &target,
            &["PAXOS", "MEMBER", "REMOVE", &id.to_string()],
        )?),
    }
}

pub fn run_leader(command: LeaderCommand) -> Result<ExitCode> {
    match command {
        LeaderCommand::Transfer { to, target } => done(call(
            &target,
            &["PAXOS", "LEADER", "TRANSFER", &to.to_string()],
        )?),
    }
}

/// `OK` exits 0; an error reply is printed and exits 1.
fn done(reply: Reply) -> Result<ExitCode> {
    match reply {
        Reply::Error(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
        other => {
            println!("{}", text(&other));
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl Target {
    /// The member at `addr`, without a password.
    pub fn at(addr: &str) -> Target {
        Target {
            addr: addr.to_owned(),
            password: None,
        }
    }
}

/// Sends one command (after `AUTH` if a password is given).
pub fn call(target: &Target, args: &[&str]) -> Result<Reply> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut conn = RespConn::connect(&target.addr)
            .await
            .with_context(|| format!("is a parliament node serving clients at {}?", target.addr))?;
        if let Some(password) = &target.password {
            let reply = conn
                .call(&[b"AUTH", password.as_bytes()], CALL_TIMEOUT)
                .await?;
            if let Reply::Error(e) = reply {
                bail!("AUTH refused: {e}");
            }
        }
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        Ok(conn.call(&bytes, CALL_TIMEOUT).await?)
    })
}

fn text(reply: &Reply) -> String {
    match reply {
        Reply::Simple(s) | Reply::Error(s) => s.clone(),
        Reply::Integer(i) => i.to_string(),
        Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
        Reply::NullBulk | Reply::NullArray => "-".to_owned(),
        Reply::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(" "),
    }
}

/// The table `member list` prints, from `PAXOS MEMBERS`' reply.
pub fn render_members(reply: &Reply) -> Result<String> {
    let entries = match reply {
        Reply::Array(entries) => entries,
        Reply::Error(e) => bail!("{e}"),
        other => bail!("unexpected reply to PAXOS MEMBERS: {}", text(other)),
    };
    const COLUMNS: [(&str, &str); 6] = [
        ("id", "ID"),
        ("role", "ROLE"),
        ("peer_addr", "PEER"),
        ("client_addr", "CLIENT"),
        ("match_slot", "MATCH"),
        ("connected", "CONNECTED"),
    ];
    let mut rows: Vec<Vec<String>> = vec![COLUMNS.iter().map(|(_, h)| (*h).to_owned()).collect()];
    for entry in entries {
        let Reply::Array(fields) = entry else {
            bail!("unexpected entry in PAXOS MEMBERS: {}", text(entry));
        };
        let value = |name: &str| {
            fields
                .chunks(2)
                .find(|pair| matches!(&pair[0], Reply::Bulk(k) if k.as_ref() == name.as_bytes()))
                .and_then(|pair| pair.get(1))
                .map_or_else(|| "-".to_owned(), text)
        };
        rows.push(COLUMNS.iter().map(|(k, _)| value(k)).collect());
    }
    let widths: Vec<usize> = (0..COLUMNS.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::bulk(s.to_owned())
    }

    #[test]
    fn the_member_table_shows_every_field_and_refuses_odd_replies() {
        let entry = Reply::Array(vec![
            bulk("id"),
            Reply::Integer(4),
            bulk("role"),
            bulk("learner"),
            bulk("peer_addr"),
            bulk("10.0.0.4:7379"),
            bulk("client_addr"),
            bulk("10.0.0.4:6379"),
            bulk("match_slot"),
            Reply::NullBulk,
            bulk("connected"),
            bulk("no"),
        ]);
        let table = render_members(&Reply::Array(vec![entry])).expect("a table");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID  ROLE"), "{table}");
        assert!(
            lines[1].starts_with("4   learner  10.0.0.4:7379  10.0.0.4:6379  -      no"),
            "{table}"
        );
        assert!(render_members(&Reply::Error("ERR x".into())).is_err());
        assert!(render_members(&Reply::Integer(1)).is_err());
    }
}
