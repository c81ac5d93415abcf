//! A raw HTTP/2 client for checks tonic hides: the exact shape of a response (trailers-only or
//! not), HTTP status, and frames a well-behaved client would never send.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};

/// What came back, frame by frame.
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The response HEADERS frame carried END_STREAM: a trailers-only response.
    pub headers_ended_stream: bool,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl RawResponse {
    /// `grpc-status` from wherever it came (trailers-only headers or trailers).
    pub fn grpc_status(&self) -> Option<String> {
        let from = |h: &HeaderMap| {
            h.get("grpc-status")
                .map(|v| v.to_str().unwrap_or("").to_string())
        };
        from(&self.headers).or_else(|| self.trailers.as_ref().and_then(from))
    }

    pub fn grpc_message(&self) -> Option<String> {
        let from = |h: &HeaderMap| {
            h.get("grpc-message")
                .map(|v| v.to_str().unwrap_or("").to_string())
        };
        from(&self.headers).or_else(|| self.trailers.as_ref().and_then(from))
    }
}

/// Frames one gRPC message (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + message.len());
    buf.put_u8(0);
    buf.put_u32(message.len() as u32);
    buf.put_slice(message);
    buf.freeze()
}

/// Sends one request over a fresh h2c connection and reads the whole response.
pub async fn call(
    addr: SocketAddr,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: Bytes,
) -> Result<RawResponse, h2::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send(client, addr, path, extra_headers, body).await
}

/// Sends one request on an existing HTTP/2 connection and reads the whole response.
pub async fn send(
    client: h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: Bytes,
) -> Result<RawResponse, h2::Error> {
    let mut client = client.ready().await?;
    let mut builder = Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra_headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(()).expect("valid request");
    let (response, mut send) = client.send_request(request, false)?;
    // A server may answer the whole call, and reset the stream with NO_ERROR, before it has read
    // the request body (RFC 9113 §8.1): the gateway does so for calls it refuses. Sending the body
    // then fails on the closed stream, yet the response stands, so it is read regardless; a real
    // failure shows up when awaiting the response.
    let _ = send.send_data(body, true);
    let response = response.await?;
    let (parts, mut recv) = response.into_parts();
    let headers_ended_stream = recv.is_end_stream();
    let mut body = BytesMut::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await?;
    Ok(RawResponse {
        status: parts.status,
        headers: parts.headers,
        headers_ended_stream,
        body: body.freeze(),
        trailers,
    })
}
