//! `PAXOS`: the membership and the leadership, changed by an operator
//! over the Redis protocol.
//!
//! ```text
//! PAXOS MEMBERS
//! PAXOS MEMBER ADD <id> <peer-addr> <client-addr> [LEARNER]
//! PAXOS MEMBER PROMOTE <id>
//! PAXOS MEMBER REMOVE <id>
//! PAXOS LEADER TRANSFER <id>
//! PAXOS BACKUP [READ ...]     (see `super::backup`)
//! ```
//!
//! Any member accepts them. Only the leader carries them out, so a member
//! that does not lead forwards the request to the one that does, over the
//! leader's client port (authenticating with the node's own password), and
//! hands back its answer. A forwarded request is never forwarded again: it
//! travels on a connection named [`FORWARDED`], and a node that receives
//! one without leading answers `TRYAGAIN`. Changes are answered once
//! chosen, a transfer once the new leader leads.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use paxos::NodeId;
use paxos::replica::Change;
use resp::Reply;
use resp::client::{ReplyDecoder, encode_command};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::argv::Argv;
use crate::api::{Admin, AdminRefusal, NodeError, NodeHandle, Op};
use crate::cluster::Addrs;
use crate::config::NODE_ID_MAX;

/// `PAXOS` requests in flight at once, over every connection of the
/// process (each may hold a connection to the leader for a while).
const IN_FLIGHT_MAX: usize = 64;

/// Permits for `PAXOS` requests in flight (see [`IN_FLIGHT_MAX`]).
pub(crate) static FORWARDS: std::sync::LazyLock<std::sync::Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX)));

/// The name of a connection that carries forwarded requests.
pub(crate) const FORWARDED: &str = "parliament-forwarded";

/// How long a forwarded request may take, answer included: longer than the
/// leader's own wait for a change to be chosen.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

const USAGE: &str = "ERR unknown PAXOS subcommand; use PAXOS MEMBERS, PAXOS MEMBER ADD <id> \
                     <peer-addr> <client-addr> [LEARNER], PAXOS MEMBER PROMOTE <id>, PAXOS \
                     MEMBER REMOVE <id>, PAXOS LEADER TRANSFER <id> or PAXOS BACKUP";

/// Parses the arguments after `PAXOS`.
pub(crate) fn parse(mut argv: Argv) -> Result<Admin, Reply> {
    let syntax = || Reply::error(USAGE);
    let id = |arg: Bytes| -> Result<NodeId, Reply> {
        std::str::from_utf8(&arg)
            .ok()
            .and_then(|s| s.parse::<NodeId>().ok())
            .filter(|&id| (1..=NODE_ID_MAX).contains(&id))
            .ok_or_else(|| Reply::error(format!("ERR node id must be between 1 and {NODE_ID_MAX}")))
    };
    let addr = |arg: Bytes, what: &str| -> Result<String, Reply> {
        let text = String::from_utf8(arg.to_vec())
            .map_err(|_| Reply::error(format!("ERR the {what} address is not UTF-8")))?;
        if text.len() > 255
            || text
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(Reply::error(format!(
                "ERR the {what} address must be HOST:PORT, got '{text}'"
            )));
        }
        Ok(text)
    };
    let request = if argv.eat("members") {
        Admin::Members
    } else if argv.eat("member") {
        if argv.eat("add") {
            let new = id(argv.next().map_err(|_| syntax())?)?;
            let peer = addr(argv.next().map_err(|_| syntax())?, "peer")?;
            let client = addr(argv.next().map_err(|_| syntax())?, "client")?;
            let learner = argv.eat("learner");
            Admin::Change(Change::Add {
                id: new,
                info: Addrs { peer, client }.encode(),
                promote: !learner,
            })
        } else if argv.eat("promote") {
            Admin::Change(Change::Promote {
                id: id(argv.next().map_err(|_| syntax())?)?,
            })
        } else if argv.eat("remove") {
            Admin::Change(Change::Remove {
                id: id(argv.next().map_err(|_| syntax())?)?,
            })
        } else {
            return Err(syntax());
        }
    } else if argv.eat("leader") && argv.eat("transfer") {
        Admin::Transfer(id(argv.next().map_err(|_| syntax())?)?)
    } else {
        return Err(syntax());
    };
    argv.finish().map_err(|_| syntax())?;
    Ok(request)
}

/// Carries out `request` and sends the answer to `answer`: at this node if
/// it leads, else at the leader.
pub(crate) async fn run(
    node: NodeHandle,
    request: Admin,
    args: Vec<Bytes>,
    forwarded: bool,
    password: Option<String>,
    answer: oneshot::Sender<Result<kv::Reply, NodeError>>,
) {
    let (reply, refused) = oneshot::channel();
    let result = match node.send(Op::Admin { request, reply }).await {
        Err(e) => Err(e),
        Ok(()) => match refused.await {
            Err(_) => Err(NodeError::Busy("the node is shutting down".to_owned())),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(AdminRefusal::NotLeader(None))) => Err(NodeError::ClusterDown),
            Ok(Err(AdminRefusal::NotLeader(Some(_)))) if forwarded => Ok(kv::Reply::Error(
                "TRYAGAIN the leader changed while the request was forwarded; retry".to_owned(),
            )),
            Ok(Err(AdminRefusal::NotLeader(Some((leader, addr))))) => {
                forward(&addr, &args, password.as_deref())
                    .await
                    .map(from_resp)
                    .or_else(|e| {
                        Ok(kv::Reply::Error(format!(
                            "TRYAGAIN cannot forward to the leader (node {leader} at {addr}): {e}"
                        )))
                    })
            }
        },
    };
    let _ = answer.send(result);
}

/// Sends `args` to the node at `addr` on a connection of its own and
/// returns its reply.
async fn forward(addr: &str, args: &[Bytes], password: Option<&str>) -> Result<Reply, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut out = BytesMut::new();
        let mut expected = 1;
        if let Some(password) = password {
            encode_command(&[b"AUTH", password.as_bytes()], &mut out);
            expected += 1;
        }
        encode_command(&[b"CLIENT", b"SETNAME", FORWARDED.as_bytes()], &mut out);
        expected += 1;
        let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
        encode_command(&refs, &mut out);
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let decoder = ReplyDecoder::default();
        let mut input = BytesMut::with_capacity(4096);
        let mut replies = Vec::with_capacity(expected);
        while replies.len() < expected {
            if let Some(reply) = decoder.decode(&mut input).map_err(|e| e.to_string())? {
                replies.push(reply);
                continue;
            }
            if stream
                .read_buf(&mut input)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("the leader closed the connection".to_owned());
            }
        }
        if let Some(Reply::Error(e)) = replies.first()
            && password.is_some()
        {
            return Err(format!("the leader refused this node's password: {e}"));
        }
        replies.pop().ok_or_else(|| "no reply".to_owned())
    };
    tokio::time::timeout(FORWARD_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {FORWARD_TIMEOUT:?}"))?
}

/// A reply as the node's answers carry it.
fn from_resp(reply: Reply) -> kv::Reply {
    match reply {
        Reply::Simple(s) => kv::Reply::Status(s),
        Reply::Error(e) => kv::Reply::Error(e),
        Reply::Integer(i) => kv::Reply::Integer(i),
        Reply::Bulk(b) => kv::Reply::Bulk(b),
        Reply::NullBulk => kv::Reply::Nil,
        Reply::Array(items) => kv::Reply::Array(items.into_iter().map(from_resp).collect()),
        Reply::NullArray => kv::Reply::NilArray,
    }
}
