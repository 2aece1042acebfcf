//! etcd's KV service over gRPC, for running the same workload against etcd.
//!
//! Only the messages the load needs are written out, by hand, with the field
//! numbers of etcd's `rpc.proto` (package `etcdserverpb`) and `kv.proto`
//! (package `mvccpb`). Fields this client never sets or reads are declared
//! anyway where they sit between ones it uses, so the numbering is easy to
//! check against the originals. Calls go through tonic's generic client with
//! a prost codec: no code generation, no build script.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::client::Grpc;
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

use super::BACKOFF_MIN;
use super::driver::{Shared, Stats, client_seed};
use super::workload::{self, OpKind, Rng};

/// `etcdserverpb.ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    /// The store's revision when the request was applied.
    #[prost(int64, tag = "3")]
    pub revision: i64,
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

/// `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub version: i64,
    #[prost(bytes = "bytes", tag = "5")]
    pub value: Bytes,
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

/// `etcdserverpb.PutRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    #[prost(int64, tag = "3")]
    pub lease: i64,
    #[prost(bool, tag = "4")]
    pub prev_kv: bool,
    #[prost(bool, tag = "5")]
    pub ignore_value: bool,
    #[prost(bool, tag = "6")]
    pub ignore_lease: bool,
}

/// `etcdserverpb.PutResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, optional, tag = "2")]
    pub prev_kv: Option<KeyValue>,
}

/// `etcdserverpb.RangeRequest`, up to `serializable` (tag 7); the later
/// fields (`keys_only`, `count_only`, revision bounds) are left at their
/// defaults and so never sent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// Empty: the one key `key`.
    #[prost(bytes = "bytes", tag = "2")]
    pub range_end: Bytes,
    #[prost(int64, tag = "3")]
    pub limit: i64,
    #[prost(int64, tag = "4")]
    pub revision: i64,
    /// `SortOrder`, an enum on the wire (0 = none).
    #[prost(int32, tag = "5")]
    pub sort_order: i32,
    /// `SortTarget`, an enum on the wire (0 = key).
    #[prost(int32, tag = "6")]
    pub sort_target: i32,
    /// false (the default): a linearizable read, confirmed by a quorum.
    #[prost(bool, tag = "7")]
    pub serializable: bool,
}

/// `etcdserverpb.RangeResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
    #[prost(bool, tag = "3")]
    pub more: bool,
    #[prost(int64, tag = "4")]
    pub count: i64,
}

const PUT_PATH: &str = "/etcdserverpb.KV/Put";
const RANGE_PATH: &str = "/etcdserverpb.KV/Range";

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("'{0}' is not a usable address")]
    Address(String),
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("the call failed: {0}")]
    Status(#[from] tonic::Status),
}

/// One HTTP/2 connection to an etcd member. Clones share the connection and
/// may call concurrently.
#[derive(Clone, Debug)]
pub struct EtcdClient {
    grpc: Grpc<Channel>,
}

impl EtcdClient {
    /// Connects to `addr` (`host:port`, plain text), giving up after
    /// `timeout`; calls made later are not bounded by it.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<EtcdClient, EtcdError> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| EtcdError::Address(addr.to_owned()))?
            .connect_timeout(timeout)
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| EtcdError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        Ok(EtcdClient {
            grpc: Grpc::new(channel),
        })
    }

    /// Writes `value` at `key`.
    pub async fn put(&mut self, key: Bytes, value: Bytes) -> Result<PutResponse, EtcdError> {
        let request = PutRequest {
            key,
            value,
            ..PutRequest::default()
        };
        self.call(PUT_PATH, request).await
    }

    /// Reads `key` linearizably.
    pub async fn get(&mut self, key: Bytes) -> Result<RangeResponse, EtcdError> {
        let request = RangeRequest {
            key,
            ..RangeRequest::default()
        };
        self.call(RANGE_PATH, request).await
    }

    async fn call<Req, Resp>(&mut self, path: &'static str, request: Req) -> Result<Resp, EtcdError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = ProstCodec::<Req, Resp>::default();
        let response = self
            .grpc
            .unary(
                tonic::Request::new(request),
                PathAndQuery::from_static(path),
                codec,
            )
            .await?;
        Ok(response.into_inner())
    }
}

/// The error kind of a failed call.
fn error_kind(error: &EtcdError) -> String {
    match error {
        EtcdError::Address(_) | EtcdError::Connect { .. } => "connect".to_owned(),
        EtcdError::Status(status) => format!("grpc-{:?}", status.code()),
    }
}

/// Whether the call failed for want of a working connection, rather than
/// with an answer from etcd.
fn is_connection_trouble(error: &EtcdError) -> bool {
    match error {
        EtcdError::Address(_) | EtcdError::Connect { .. } => true,
        EtcdError::Status(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
    }
}

/// One etcd client of the closed loop: a connection with `pipeline` lanes.
pub(super) async fn etcd_client(id: usize, shared: Arc<Shared>) -> Stats {
    let config = &shared.config;
    let addr = &config.addrs[id % config.addrs.len()];
    let mut stats = Stats::default();
    let mut backoff = BACKOFF_MIN;
    let client = loop {
        match shared
            .until_end(EtcdClient::connect(addr, config.timeout))
            .await
        {
            None => return stats,
            Some(Ok(client)) => break client,
            Some(Err(_)) => {
                stats.failure(&shared, "connect");
                match shared.back_off(backoff).await {
                    Some(next) => backoff = next,
                    None => return stats,
                }
            }
        }
    };
    stats.connections += 1;
    let mut lanes = JoinSet::new();
    for lane in 0..config.pipeline {
        lanes.spawn(etcd_lane(
            client.clone(),
            Rng::new(client_seed(config.seed, id, lane + 1)),
            Arc::clone(&shared),
        ));
    }
    while let Some(done) = lanes.join_next().await {
        // A lane that panicked loses its counts; the others still report.
        if let Ok(lane_stats) = done {
            stats.merge(lane_stats);
        }
    }
    stats
}

/// One request at a time on a shared connection, until the run ends.
async fn etcd_lane(mut client: EtcdClient, mut rng: Rng, shared: Arc<Shared>) -> Stats {
    let config = &shared.config;
    let mut stats = Stats::default();
    let mut backoff = BACKOFF_MIN;
    while let Some(claim) = shared.claim(1) {
        let kind = config.mix.pick(&mut rng);
        let key = Bytes::copy_from_slice(&workload::key(kind, rng.below(config.keys)));
        let sent = Instant::now();
        let call = async {
            match kind {
                OpKind::Set => client.put(key, shared.value.clone()).await.map(drop),
                // `validate` keeps INCR out of etcd runs; read for it anyway
                // rather than fail.
                OpKind::Get | OpKind::Incr => client.get(key).await.map(drop),
            }
        };
        let outcome = shared
            .until_end(tokio::time::timeout_at(sent + config.timeout, call))
            .await;
        let (failed, connection_trouble) = match outcome {
            None => break,
            Some(Ok(Ok(()))) => {
                stats.success(&shared, claim, kind, sent);
                backoff = BACKOFF_MIN;
                continue;
            }
            Some(Ok(Err(error))) => (error_kind(&error), is_connection_trouble(&error)),
            Some(Err(_elapsed)) => ("timeout".to_owned(), true),
        };
        stats.error(&shared, claim, &failed, 1);
        if connection_trouble {
            // The channel reconnects by itself; pause so that a member that
            // is down is not called in a tight loop.
            match shared.back_off(backoff).await {
                Some(next) => backoff = next,
                None => break,
            }
        }
    }
    stats
}
