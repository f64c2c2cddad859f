//! A lean WebSocket client for load (the handshake is natter-testkit's): raw frames in, raw
//! frames out, no per-frame JSON tree. A reader task forwards each text frame's bytes (fastwebsockets' `read_frame` is not
//! cancel-safe, so it runs alone); the owner writes through [`Conn::send`].

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketWrite};
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

pub use natter_testkit::client::ClientError as ConnError;

impl Conn {
    /// Connect to `ws://ip:port/path`, optionally from a given local address.
    pub async fn connect(url: &str, local: Option<IpAddr>) -> Result<Conn, ConnError> {
        let ws = natter_testkit::client::ws_connect(url, local).await?;
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
