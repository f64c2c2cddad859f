//! One WebSocket on the wire, below the protocol: the read half turns frames into whole
//! messages ([`read`]), the write half writes queued frames, pings and the close
//! ([`write`]) through a buffer that idle sockets do not pay for ([`write_buffer`]).
//!
//! It knows nothing of JSON-RPC, rooms or users; the session ([`crate::session`]) gives
//! meaning to the messages.

pub mod read;
pub mod write;
pub mod write_buffer;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fastwebsockets::WebSocket;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use read::{Control, MessageReader, SharedRead};
use write::Writer;
use write_buffer::LazyBufWriter;

/// The upgraded connection.
pub type Io = TokioIo<Upgraded>;

/// When the client was last heard (any frame), for the idle timeout.
#[derive(Debug)]
pub struct Liveness {
    born: Instant,
    /// Milliseconds since `born` when the client was last heard.
    last_heard_ms: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            born: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
        }
    }
}

impl Liveness {
    pub fn touch(&self) {
        self.last_heard_ms
            .store(self.born.elapsed().as_millis() as u64, Relaxed);
    }

    pub fn silent_for(&self) -> Duration {
        let now = self.born.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_heard_ms.load(Relaxed)))
    }
}

/// A socket split into its halves.
pub struct Halves {
    pub reader: MessageReader,
    pub writer: Writer,
    /// The raw read half, to drain unread input before closing (see [`SharedRead`]).
    pub raw_read: Option<SharedRead>,
    /// Control frames from the reader to the writer.
    pub control: mpsc::Receiver<Control>,
    pub liveness: Arc<Liveness>,
}

/// Split an upgraded socket; messages over `max_message_bytes` end it with 1009.
pub fn split(ws: WebSocket<Io>, max_message_bytes: usize) -> Halves {
    let (control_tx, control) = mpsc::channel::<Control>(8);
    let raw_read: Mutex<Option<SharedRead>> = Mutex::new(None);
    let (mut rd, mut wr) = ws.split(|s| {
        let (r, w) = tokio::io::split(s);
        let r = SharedRead(Arc::new(Mutex::new(r)));
        *raw_read.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
        (r, LazyBufWriter::new(w))
    });
    rd.set_max_message_size(max_message_bytes.saturating_add(1));
    wr.set_writev(false);
    let liveness = Arc::new(Liveness::default());
    Halves {
        reader: MessageReader::new(rd, control_tx, max_message_bytes, liveness.clone()),
        writer: wr,
        raw_read: raw_read.into_inner().unwrap_or_else(|p| p.into_inner()),
        control,
        liveness,
    }
}
