//! A small HTTP/1.1 client for the node's own endpoints, on hyper: one `GET`
//! per connection, a deadline on the whole exchange and a limit on the
//! response size. It is blocking (each call runs a current-thread runtime of
//! its own), for `parliament status` and tests; call it outside a runtime.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::api::StatusReport;

/// The largest response body read.
pub const RESPONSE_BYTES_MAX: usize = 4 << 20;

/// Why a request got no usable answer. Each variant names the address; the
/// underlying error, if any, is its `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve {addr}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no answer from {addr} within {timeout:?}")]
    TimedOut { addr: String, timeout: Duration },
    #[error("cannot start the client's runtime")]
    Runtime { source: std::io::Error },
    #[error("the HTTP exchange with {addr} failed")]
    Http { addr: String, source: hyper::Error },
    #[error("{addr} sent a response larger than {RESPONSE_BYTES_MAX} bytes")]
    TooLarge { addr: String },
    #[error("{addr} answered {path} with HTTP {status}")]
    Status {
        addr: String,
        path: String,
        status: u16,
    },
    #[error("{addr} sent a status this version cannot read")]
    Json {
        addr: String,
        source: serde_json::Error,
    },
}

/// A response: its status code, headers (names lower-cased) and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` from `addr` (`host:port`), all within `timeout`.
pub fn get(addr: &str, path: &str, timeout: Duration) -> Result<Response, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ClientError::Runtime { source })?;
    runtime.block_on(async {
        match tokio::time::timeout(timeout, exchange(addr, path)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::TimedOut {
                addr: addr.to_owned(),
                timeout,
            }),
        }
    })
}

/// `GET /status` from `addr`, expecting 200 and a [`StatusReport`].
pub fn fetch_status(addr: &str, timeout: Duration) -> Result<StatusReport, ClientError> {
    let response = get(addr, "/status", timeout)?;
    if response.status != 200 {
        return Err(ClientError::Status {
            addr: addr.to_owned(),
            path: "/status".to_owned(),
            status: response.status,
        });
    }
    serde_json::from_slice(&response.body).map_err(|source| ClientError::Json {
        addr: addr.to_owned(),
        source,
    })
}

async fn exchange(addr: &str, path: &str) -> Result<Response, ClientError> {
    let stream = connect(addr).await?;
    let http = |source| ClientError::Http {
        addr: addr.to_owned(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // The connection is driven beside the request, on this runtime.
    let driver = tokio::spawn(connection);
    // A path that is no URI, or a header value that is not one, is a bug
    // of the caller; both come from this crate's own callers.
    let request = Request::get(path)
        .header(HOST, addr)
        .body(Empty::<Bytes>::new());
    let request = match request {
        Ok(request) => request,
        Err(e) => unreachable!("GET {path} from {addr} is not a request: {e}"),
    };
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let body = Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(e) => http(*e),
            Err(_) => ClientError::TooLarge {
                addr: addr.to_owned(),
            },
        })?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Connects to the first address `addr` resolves to that accepts.
async fn connect(addr: &str) -> Result<TcpStream, ClientError> {
    let resolved: Vec<_> = tokio::net::lookup_host(addr)
        .await
        .map_err(|source| ClientError::Resolve {
            addr: addr.to_owned(),
            source,
        })?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for candidate in resolved {
        match TcpStream::connect(candidate).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = error,
        }
    }
    Err(ClientError::Connect {
        addr: addr.to_owned(),
        source: last,
    })
}
