//! The Redis serialization protocol, version 2 (RESP2).
//!
//! Speaking RESP2 lets `redis-cli`, `redis-benchmark` and ordinary Redis
//! client libraries talk to parliament unchanged. The module is transport
//! free: [`Decoder`] turns bytes from a connection into requests, [`encode`]
//! turns a [`Reply`] into bytes, and [`Args`] checks a command's arguments.
//! A tokio codec can wrap these in a few lines, along the lines of:
//!
//! ```text
//! impl tokio_util::codec::Decoder for Codec {
//!     type Item = Request;
//!     type Error = CodecError; // ProtocolError or io::Error
//!     fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Request>, CodecError> {
//!         Ok(self.decoder.decode(src)?)
//!     }
//! }
//! impl tokio_util::codec::Encoder<&Reply> for Codec {
//!     type Error = CodecError;
//!     fn encode(&mut self, reply: &Reply, dst: &mut BytesMut) -> Result<(), CodecError> {
//!         resp::encode(reply, dst);
//!         Ok(())
//!     }
//! }
//! ```
//!
//! The decoder is ours rather than a crate's, for three things a server
//! needs and client-side codecs do not give together: Redis's own size
//! limits checked as soon as a header announces a size, before the bytes
//! are buffered; inline commands
//! (`PING\r\n`, as redis-benchmark and telnet send them); and arguments
//! that are zero-copy slices of the read buffer.
//!
//! Protocol errors are final: the server sends
//! `-ERR Protocol error: <text>` (see [`ProtocolError::to_reply`]) and then
//! closes the connection, because after a framing error the byte stream can
//! no longer be trusted to line up with request boundaries. The one
//! exception is [`ProtocolError::Http`], where the connection is dropped
//! without a reply.

mod args;
pub mod client;
mod decode;
mod inline;
mod reply;

#[cfg(test)]
mod tests;

pub use args::{ArgError, Args, keyword_eq, parse_i64, parse_u64};
pub use decode::{Decoder, Limits, ProtocolError, Request};
pub use reply::put_len_header;
pub use reply::{Reply, encode};
