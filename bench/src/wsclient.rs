//! A lean WebSocket client for load: raw frames in, raw frames out, no per-frame JSON
//! tree. A reader task forwards each text frame's bytes (fastwebsockets' `read_frame` is not
//! cancel-safe, so it runs alone); the owner writes through [`Conn::send`].

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketWrite};
use http_body_util::Empty;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::WriteHalf;
use tokio::sync::{mpsc, Mutex};

/// What the reader task reports.
#[derive(Debug)]
pub enum Incoming {
    Text(Bytes),
    Closed(u16),
}

type Writer = WebSocketWrite<WriteHalf<TokioIo<Upgraded>>>;

pub struct Conn {
    writer: Arc<Mutex<Writer>>,
    pub incoming: mpsc::UnboundedReceiver<Incoming>,
}

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::task::spawn(fut);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("bad URL {0}")]
    Url(String),
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(String),
}

impl Conn {
    /// Connect to `ws://ip:port/path`, optionally from a given local address.
    pub async fn connect(url: &str, local: Option<IpAddr>) -> Result<Conn, ConnError> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| ConnError::Url(url.into()))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = host.parse().map_err(|_| ConnError::Url(url.into()))?;
        let sock = tokio::net::TcpSocket::new_v4()?;
        if let Some(ip) = local {
            sock.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = sock.connect(addr).await?;
        stream.set_nodelay(true)?;
        let req = hyper::Request::builder()
            .method("GET")
            .uri(path)
            .header("Host", host)
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ConnError::Handshake(e.to_string()))?;
        let (ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
            .await
            .map_err(|e| ConnError::Handshake(e.to_string()))?;
        let (mut rd, writer) = ws.split(tokio::io::split);
        let writer = Arc::new(Mutex::new(writer));
        let (tx, incoming) = mpsc::unbounded_channel();
        let w2 = writer.clone();
        tokio::spawn(async move {
            // Answer pings (the edge closes sockets it does not hear from).
            let mut obligated = |f: Frame<'_>| {
                let owned = Frame::new(true, f.opcode, None, Payload::Owned(f.payload.to_vec()));
                let w = w2.clone();
                async move { w.lock().await.write_frame(owned).await }
            };
            loop {
                match rd.read_frame(&mut obligated).await {
                    Ok(f) if f.opcode == OpCode::Text => {
                        if tx
                            .send(Incoming::Text(Bytes::copy_from_slice(&f.payload)))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(f) if f.opcode == OpCode::Close => {
                        let p = &f.payload[..];
                        let code = if p.len() >= 2 {
                            u16::from_be_bytes([p[0], p[1]])
                        } else {
                            1005
                        };
                        let _ = tx.send(Incoming::Closed(code));
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let _ = tx.send(Incoming::Closed(1006));
                        return;
                    }
                }
            }
        });
        Ok(Conn { writer, incoming })
    }

    pub async fn send(&mut self, text: &[u8]) -> bool {
        self.writer
            .lock()
            .await
            .write_frame(Frame::text(Payload::Borrowed(text)))
            .await
            .is_ok()
    }

    pub async fn close(&mut self) {
        let _ = self
            .writer
            .lock()
            .await
            .write_frame(Frame::close(1000, b"bye"))
            .await;
    }
}
