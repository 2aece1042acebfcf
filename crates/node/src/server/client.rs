//! One client connection: read, decode, dispatch, answer in order.
//!
//! Requests are decoded from one growing read buffer; their arguments are
//! slices of it, not copies. A request the node must answer is sent at once
//! and its answer awaited later, so a pipelining client has up to
//! [`Config::pipeline_depth_max`] requests in flight; replies are queued in
//! request order and everything ready is written with one write.
//!
//! ```text
//!   socket ─read─▶ input ─decode─▶ dispatch ─┬─ reply now ───────────────┐
//!                                            └─ Op ─▶ node ─▶ oneshot ─┐ │
//!   socket ◀─write─ output ◀─encode─ queue (request order) ◀───────────┴─┘
//! ```
//!
//! When the queue is full the loop stops reading: the client's writes back
//! up in TCP, which is the backpressure.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::dispatch::{self, ClientState, Ctx, NodeOp, Outcome, Then};
use super::limits::Config;
use crate::api::{ConnId, NodeError, NodeHandle, Op};
use kv;
use resp::{self, Decoder, Reply};

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Replies collected before they are written even if more requests wait
/// in the read buffer, so a long pipeline of immediate replies cannot grow
/// the output without bound.
const OUTPUT_BATCH_BYTES: usize = 64 * 1024;

/// A larger output buffer is released after it is written, so one huge
/// reply does not pin its memory for the life of the connection.
const OUTPUT_KEEP_BYTES: usize = 1024 * 1024;

type Answer = Result<kv::Reply, NodeError>;

/// A reply in the queue, in request order.
enum Pending {
    Ready(Reply),
    /// Sent to the node; `write` tells how a lost answer is reported.
    Waiting {
        answer: oneshot::Receiver<Answer>,
        write: bool,
        then: Then,
    },
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Closed {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The client spoke HTTP: dropped without a reply, as Redis does.
    #[error("HTTP request on the client port")]
    Http,
    #[error("no AUTH within {0:?} of connecting")]
    AuthDeadline(std::time::Duration),
    #[error("idle for {0:?}")]
    Idle(std::time::Duration),
}

pub(crate) struct Connection {
    stream: TcpStream,
    node: NodeHandle,
    config: Arc<Config>,
    state: ClientState,
    decoder: Decoder,
    input: BytesMut,
    output: BytesMut,
    queue: VecDeque<Pending>,
    /// False after end of input, `QUIT` or a protocol error: answer what
    /// was asked, then close.
    reading: bool,
    /// Replies and error replies encoded since the last write, for metrics.
    answered: u64,
    /// When the connection opened, and when the client last sent bytes.
    opened: tokio::time::Instant,
    heard: tokio::time::Instant,
    errors: u64,
}

impl Connection {
    pub fn new(stream: TcpStream, id: ConnId, node: NodeHandle, config: Arc<Config>) -> Self {
        let mut state = ClientState::new(id, &config);
        state.peer = stream.peer_addr().ok();
        state.local = stream.local_addr().ok();
        Connection {
            stream,
            node,
            decoder: Decoder::new(if config.password.is_some() {
                super::limits::UNAUTHENTICATED
            } else {
                config.resp
            }),
            config,
            state,
            input: BytesMut::with_capacity(READ_CHUNK_BYTES),
            output: BytesMut::with_capacity(READ_CHUNK_BYTES),
            queue: VecDeque::new(),
            reading: true,
            answered: 0,
            errors: 0,
            opened: tokio::time::Instant::now(),
            heard: tokio::time::Instant::now(),
        }
    }

    pub fn id(&self) -> ConnId {
        self.state.id
    }

    /// Serves the connection until the client leaves or breaks the
    /// protocol. The caller tells the node afterwards.
    pub async fn serve(mut self) {
        match self.run().await {
            Ok(()) => {
                // Send FIN after the last reply rather than a reset.
                let _ = self.stream.shutdown().await;
            }
            Err(error) => tracing::debug!(conn = self.state.id, %error, "client connection closed"),
        }
    }

    async fn run(&mut self) -> Result<(), Closed> {
        loop {
            let starved = self.handle_input().await?;
            self.collect();
            self.flush().await?;
            if !self.reading && self.queue.is_empty() {
                return Ok(());
            }
            if !starved && self.may_take() {
                // Replies drained and made room: decode what is buffered
                // before waiting for more.
                continue;
            }
            self.wait(starved).await?;
        }
    }

    /// Whether another request may be taken from the input now.
    fn may_take(&self) -> bool {
        self.reading
            && self.queue.len() < self.depth_max()
            && self.output.len() < OUTPUT_BATCH_BYTES
    }

    /// At least one request must be allowed in flight, or nothing moves.
    fn depth_max(&self) -> usize {
        self.config.pipeline_depth_max.max(1)
    }

    /// Decodes and dispatches the requests in the read buffer, as far as the
    /// pipeline allows. True when it stopped for want of input.
    async fn handle_input(&mut self) -> Result<bool, Closed> {
        while self.may_take() {
            match self.decoder.decode(&mut self.input) {
                Ok(Some(request)) => {
                    self.handle(request).await;
                    if self.state.authenticated && *self.decoder.limits() != self.config.resp {
                        self.decoder.set_limits(self.config.resp);
                    }
                }
                Ok(None) => return Ok(true),
                Err(error) if error.is_silent() => return Err(Closed::Http),
                Err(error) => {
                    self.push(error.to_reply());
                    self.reading = false;
                }
            }
        }
        Ok(false)
    }

    async fn handle(&mut self, request: resp::Request) {
        if self.state.txn.watch.in_flight > 0 && dispatch::is_exec(&request) {
            self.settle().await;
        }
        let ctx = Ctx {
            node: &self.node,
            config: &self.config,
        };
        match dispatch::dispatch(&mut self.state, ctx, request) {
            Outcome::Reply(reply) => self.push(reply),
            Outcome::Quit => {
                self.push(Reply::ok());
                self.reading = false;
            }
            Outcome::Admin(request, args) => {
                let (reply, answer) = oneshot::channel();
                let forwarded = self
                    .state
                    .name
                    .as_ref()
                    .is_some_and(|n| n.as_ref() == super::admin::FORWARDED.as_bytes());
                let run = super::admin::run(
                    self.node.clone(),
                    request,
                    args,
                    forwarded,
                    self.config.password.clone(),
                    reply,
                );
                self.spawn_paxos(run, answer);
            }
            Outcome::Backup(request) => {
                let (reply, answer) = oneshot::channel();
                let run = super::backup::run(self.node.clone(), request, reply);
                self.spawn_paxos(run, answer);
            }
            Outcome::Node(op, then) => {
                let (reply, answer) = oneshot::channel();
                let (op, write) = match op {
                    NodeOp::Read(command, mode) => (
                        Op::Read {
                            command,
                            mode,
                            reply,
                        },
                        false,
                    ),
                    NodeOp::Write(command) => (
                        Op::Write {
                            conn: self.state.id,
                            command,
                            reply,
                        },
                        true,
                    ),
                };
                match self.node.send(op).await {
                    Ok(()) => self.queue.push_back(Pending::Waiting {
                        answer,
                        write,
                        then,
                    }),
                    Err(error) => {
                        let reply = self.state.finish(then, Err(error));
                        self.push(reply);
                    }
                }
            }
        }
    }

    /// Runs a `PAXOS` request in a task of its own, within the limit of
    /// such requests in flight, and queues its answer.
    fn spawn_paxos(
        &mut self,
        run: impl std::future::Future<Output = ()> + Send + 'static,
        answer: oneshot::Receiver<Answer>,
    ) {
        match super::admin::FORWARDS.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    run.await;
                    drop(permit);
                });
                self.queue.push_back(Pending::Waiting {
                    answer,
                    write: false,
                    then: Then::Reply,
                });
            }
            Err(_) => self.push(resp::Reply::Error(
                NodeError::Busy("too many PAXOS requests in flight; retry".to_owned()).to_string(),
            )),
        }
    }

    /// Queues a reply that is ready now; encoded at once when nothing is
    /// ahead of it.
    fn push(&mut self, reply: Reply) {
        if self.queue.is_empty() {
            self.encode(&reply);
        } else {
            self.queue.push_back(Pending::Ready(reply));
        }
    }

    fn encode(&mut self, reply: &Reply) {
        self.answered += 1;
        if matches!(reply, Reply::Error(_)) {
            self.errors += 1;
        }
        resp::encode(reply, &mut self.output);
    }

    /// Waits for every answer in the queue, so that `EXEC` sees the
    /// versions of the `WATCH`es sent before it.
    async fn settle(&mut self) {
        for i in 0..self.queue.len() {
            let Some(pending) = self.queue.get_mut(i) else {
                break;
            };
            if let Pending::Waiting { answer, .. } = pending {
                let received = answer.await;
                let Some(slot) = self.queue.get_mut(i) else {
                    break;
                };
                let waiting = std::mem::replace(slot, Pending::Ready(Reply::NullBulk));
                let reply = self.resolve(waiting, received.ok());
                if let Some(slot) = self.queue.get_mut(i) {
                    *slot = Pending::Ready(reply);
                }
            }
        }
    }

    /// Turns an answer (`None` when the node dropped the request) into the
    /// client's reply, applying what it means for the connection's state.
    fn resolve(&mut self, pending: Pending, answer: Option<Answer>) -> Reply {
        match pending {
            Pending::Ready(reply) => reply,
            Pending::Waiting { write, then, .. } => {
                let answer = answer.unwrap_or_else(|| Err(lost(write)));
                self.state.finish(then, answer)
            }
        }
    }

    /// Encodes the replies at the front of the queue that are ready.
    fn collect(&mut self) {
        while let Some(front) = self.queue.front_mut() {
            let answer = match front {
                Pending::Ready(_) => None,
                Pending::Waiting { answer, .. } => match answer.try_recv() {
                    Ok(answer) => Some(answer),
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => None,
                },
            };
            let Some(pending) = self.queue.pop_front() else {
                break;
            };
            let reply = self.resolve(pending, answer);
            self.encode(&reply);
        }
    }

    /// Writes what was encoded, in one write.
    async fn flush(&mut self) -> Result<(), Closed> {
        if self.output.is_empty() {
            return Ok(());
        }
        let node_metrics = self.node.metrics();
        node_metrics.client_commands.inc_by(self.answered);
        node_metrics.client_errors.inc_by(self.errors);
        self.answered = 0;
        self.errors = 0;
        self.stream.write_all(&self.output).await?;
        self.output.clear();
        if self.output.capacity() > OUTPUT_KEEP_BYTES {
            self.output = BytesMut::with_capacity(READ_CHUNK_BYTES);
        }
        Ok(())
    }

    /// Waits for the answer at the front of the queue or, when the decoder
    /// needs it and there is room, for more input; whichever comes first.
    async fn wait(&mut self, starved: bool) -> Result<(), Closed> {
        let readable = starved && self.reading && self.queue.len() < self.depth_max();
        if readable && self.input.capacity() - self.input.len() < READ_CHUNK_BYTES / 2 {
            self.input.reserve(READ_CHUNK_BYTES);
        }
        // A stranger must authenticate soon; an idle client may be let go.
        let deadline = if !self.state.authenticated {
            Some((
                self.opened + self.config.auth_deadline,
                Closed::AuthDeadline(self.config.auth_deadline),
            ))
        } else {
            self.config
                .idle_timeout
                .filter(|_| self.queue.is_empty())
                .map(|idle| (self.heard + idle, Closed::Idle(idle)))
        };
        let front = match self.queue.front_mut() {
            Some(Pending::Waiting { answer, .. }) => Some(answer),
            _ => None,
        };
        let (until, why) = match deadline {
            Some((until, why)) => (Some(until), Some(why)),
            None => (None, None),
        };
        tokio::select! {
            () = sleep_until_some(until) => {
                if let Some(why) = why {
                    return Err(why);
                }
            }
            answer = next_answer(front) => {
                if let Some(front) = self.queue.pop_front() {
                    let reply = self.resolve(front, answer.ok());
                    self.queue.push_front(Pending::Ready(reply));
                }
            }
            read = self.stream.read_buf(&mut self.input), if readable => {
                if read? == 0 {
                    self.reading = false;
                }
                self.heard = tokio::time::Instant::now();
            }
        }
        Ok(())
    }
}

/// Sleeps until `until`, or forever without one.
async fn sleep_until_some(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// The answer of the request at the front, or never when there is none.
async fn next_answer(
    front: Option<&mut oneshot::Receiver<Answer>>,
) -> Result<Answer, oneshot::error::RecvError> {
    match front {
        Some(answer) => answer.await,
        None => std::future::pending().await,
    }
}

/// How an answer the node dropped is reported: a write may have been
/// applied, a read changed nothing (as [`NodeHandle::write`] and
/// [`NodeHandle::read`] report it).
fn lost(write: bool) -> NodeError {
    if write {
        NodeError::Uncertain
    } else {
        NodeError::Busy("the node is shutting down".to_owned())
    }
}
