//! The one place where the store's replies and the node's errors become
//! RESP replies.

use crate::api::NodeError;
use kv;
use resp::Reply;

/// A store reply as RESP2 sends it. Moves strings and bytes, copies nothing.
pub(crate) fn from_kv(reply: kv::Reply) -> Reply {
    match reply {
        kv::Reply::Status(text) => Reply::Simple(text),
        kv::Reply::Error(text) => Reply::Error(text),
        kv::Reply::Integer(n) => Reply::Integer(n),
        kv::Reply::Bulk(bytes) => Reply::Bulk(bytes),
        kv::Reply::Nil => Reply::NullBulk,
        kv::Reply::Array(items) => Reply::Array(items.into_iter().map(from_kv).collect()),
        kv::Reply::NilArray => Reply::NullArray,
    }
}

/// The node's answer, or its refusal as an error reply (`CLUSTERDOWN ...`,
/// `UNCERTAIN ...`, `BUSY ...`).
pub(crate) fn from_node(result: Result<kv::Reply, NodeError>) -> Reply {
    match result {
        Ok(reply) => from_kv(reply),
        Err(error) => from_error(&error),
    }
}

pub(crate) fn from_error(error: &NodeError) -> Reply {
    Reply::Error(error.to_string())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn every_variant_converts() {
        let nested = kv::Reply::Array(vec![
            kv::Reply::ok(),
            kv::Reply::error("ERR x"),
            kv::Reply::Integer(-3),
            kv::Reply::Bulk(Bytes::from_static(b"v")),
            kv::Reply::Nil,
            kv::Reply::NilArray,
            kv::Reply::Array(vec![]),
        ]);
        assert_eq!(
            from_kv(nested),
            Reply::Array(vec![
                Reply::ok(),
                Reply::error("ERR x"),
                Reply::Integer(-3),
                Reply::bulk(Bytes::from_static(b"v")),
                Reply::NullBulk,
                Reply::NullArray,
                Reply::Array(vec![]),
            ])
        );
        assert_eq!(
            from_node(Err(NodeError::ClusterDown)),
            Reply::error("CLUSTERDOWN no leader is known; retry shortly")
        );
    }
}
