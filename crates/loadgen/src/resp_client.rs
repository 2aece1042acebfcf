//! A small RESP2 client: commands out, replies in, pipelined.
//!
//! The server side of the protocol lives in [`resp`]; this is the
//! other direction. Commands are always sent as arrays of bulk strings.
//! Replies are decoded incrementally with limits, so a confused or hostile
//! server cannot make the client buffer without bound.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use resp::Reply;
pub use resp::client::{ReplyDecoder, ReplyError, ReplyLimits, encode_command};

/// Why a call on a [`RespConn`] failed. Server error replies (`-ERR …`) are
/// not failures: they come back as [`Reply::Error`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}")]
    Connect { addr: String, source: io::Error },
    #[error("connection lost")]
    Io(#[from] io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("protocol error in a reply")]
    Protocol(#[from] ReplyError),
    #[error("no reply within {0:?}")]
    TimedOut(Duration),
}

/// How many bytes are read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// One RESP2 connection. Queue commands with [`RespConn::queue`], send them
/// with [`RespConn::flush`], then read one reply per command, in order.
#[derive(Debug)]
pub struct RespConn {
    stream: TcpStream,
    decoder: ReplyDecoder,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

impl RespConn {
    pub async fn connect(addr: &str) -> Result<RespConn, ClientError> {
        let connect_error = |source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let stream = TcpStream::connect(addr).await.map_err(connect_error)?;
        // Requests are small and latency is what is measured.
        stream.set_nodelay(true).map_err(connect_error)?;
        Ok(RespConn {
            stream,
            decoder: ReplyDecoder::default(),
            read_buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            write_buf: BytesMut::with_capacity(4096),
        })
    }

    /// Adds a command to the next [`RespConn::flush`].
    pub fn queue(&mut self, args: &[&[u8]]) {
        encode_command(args, &mut self.write_buf);
    }

    /// Sends every queued command in one write.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.stream.write_all(&self.write_buf).await?;
        self.write_buf.clear();
        Ok(())
    }

    /// The next reply, waiting for it as long as it takes.
    pub async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        loop {
            if let Some(reply) = self.decoder.decode(&mut self.read_buf)? {
                return Ok(reply);
            }
            self.read_buf.reserve(READ_CHUNK_BYTES);
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Sends one command and waits up to `timeout` for its reply.
    pub async fn call(&mut self, args: &[&[u8]], timeout: Duration) -> Result<Reply, ClientError> {
        let exchange = async {
            self.queue(args);
            self.flush().await?;
            self.read_reply().await
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::TimedOut(timeout))?
    }
}
