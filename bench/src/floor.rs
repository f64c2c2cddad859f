//! `floor`: the raw loopback floor under every WebSocket figure on this machine. N loopback
//! TCP socket pairs; one thread writes one frame-sized buffer per socket per write
//! (round-robin, as fast as it can, non-blocking: a full socket is skipped) while another
//! drains all of them through epoll. Then the same with K frames coalesced into each write.
//! No WebSocket, no JSON, no runtime: what the kernel alone costs per frame.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::procs;
use crate::report::{round, thousands, Report};

#[derive(Debug, Clone, clap::Args)]
pub struct FloorArgs {
    /// Loopback socket pairs.
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Bytes per frame.
    #[arg(long, default_value_t = 200)]
    pub frame: usize,
    /// Frames coalesced into each write in the second run.
    #[arg(long, default_value_t = 5)]
    pub coalesce: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Default for FloorArgs {
    fn default() -> Self {
        FloorArgs {
            sockets: 1000,
            frame: 200,
            coalesce: 5,
            seconds: 3.0,
            json: false,
        }
    }
}

/// One run of the floor.
#[derive(Debug, Clone, Serialize)]
pub struct FloorRun {
    pub frames_per_write: usize,
    pub writes_per_s: f64,
    pub frames_per_s: f64,
    /// CPU µs of both threads (writer and reader) per frame received.
    pub cpu_us_per_frame: f64,
}

/// Both runs: one frame per write, then K per write.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    pub single: FloorRun,
    pub coalesced: FloorRun,
}

/// Measure both runs (blocking: call from a plain thread or `spawn_blocking`).
pub fn measure(a: &FloorArgs) -> std::io::Result<Floor> {
    let secs = Duration::from_secs_f64(a.seconds.max(0.1));
    let single = run(a.sockets, a.frame, 1, secs)?;
    let coalesced = run(a.sockets, a.frame, a.coalesce.max(1), secs)?;
    Ok(Floor { single, coalesced })
}

fn pairs(n: usize) -> std::io::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (mut w, mut r) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let c = TcpStream::connect(addr)?;
        let (s, _) = listener.accept()?;
        c.set_nodelay(true)?;
        c.set_nonblocking(true)?;
        s.set_nonblocking(true)?;
        w.push(c);
        r.push(s);
    }
    Ok((w, r))
}

fn run(n: usize, frame: usize, k: usize, secs: Duration) -> std::io::Result<FloorRun> {
    let (writers, readers) = pairs(n.max(1))?;
    let stop = Arc::new(AtomicBool::new(false));
    // SAFETY: epoll_create1 has no preconditions; the fd is closed below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    for (i, s) in readers.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: valid epoll fd, valid socket fd, valid event pointer.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) } < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: closing the epoll fd created above.
            unsafe { libc::close(ep) };
            return Err(e);
        }
    }
    let cpu0 = procs::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut readers = readers;
            let mut buf = vec![0u8; 256 * 1024];
            let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
            let mut bytes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: `events` has room for the count given.
                let got =
                    unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 20) };
                for ev in events.iter().take(got.max(0) as usize) {
                    let Some(s) = readers.get_mut(ev.u64 as usize) else {
                        continue;
                    };
                    while let Ok(m) = s.read(&mut buf) {
                        if m == 0 {
                            break;
                        }
                        bytes += m as u64;
                    }
                }
            }
            bytes
        })
    };
    let t0 = Instant::now();
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut writers = writers;
            let buf = vec![b'x'; frame * k];
            let mut writes = 0u64;
            'run: loop {
                for s in writers.iter_mut() {
                    if let Ok(m) = s.write(&buf) {
                        if m > 0 {
                            writes += 1;
                        }
                    }
                    if writes.is_multiple_of(256) && t0.elapsed() >= secs {
                        break 'run;
                    }
                }
                if t0.elapsed() >= secs {
                    break;
                }
            }
            stop.store(true, Ordering::Relaxed);
            (writes, writers)
        })
    };
    let (writes, writers) = writer.join().unwrap_or_default();
    let bytes = reader.join().unwrap_or(0);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = procs::cpu_seconds(std::process::id()).unwrap_or(0.0) - cpu0;
    drop(writers);
    // SAFETY: closing the epoll fd created above; no thread uses it any more.
    unsafe { libc::close(ep) };
    let frames = bytes as f64 / frame.max(1) as f64;
    Ok(FloorRun {
        frames_per_write: k,
        writes_per_s: writes as f64 / elapsed,
        frames_per_s: frames / elapsed,
        cpu_us_per_frame: cpu * 1e6 / frames.max(1.0),
    })
}

impl Floor {
    /// One line per run, for reports that put figures next to the floor.
    pub fn summary(&self) -> serde_json::Value {
        let r = |f: &FloorRun| {
            json!({"frames_per_write": f.frames_per_write, "writes_per_s": round(f.writes_per_s, 0),
                   "frames_per_s": round(f.frames_per_s, 0),
                   "cpu_us_per_frame_both_cores": round(f.cpu_us_per_frame, 2)})
        };
        json!({"one_frame_per_write": r(&self.single), "coalesced": r(&self.coalesced)})
    }

    /// `deliveries_per_s` as a fraction of the one-frame-per-write floor.
    pub fn fraction(&self, deliveries_per_s: f64) -> f64 {
        round(deliveries_per_s / self.single.frames_per_s.max(1.0), 3)
    }

    /// `cpu_us` (per delivery) as a multiple of the one-frame-per-write floor's CPU per
    /// frame, writer and reader together.
    pub fn cpu_multiple(&self, cpu_us: f64) -> f64 {
        round(cpu_us / self.single.cpu_us_per_frame.max(1e-9), 2)
    }
}

/// `natter-bench floor`.
pub async fn floor(a: &FloorArgs) -> Report {
    let args = a.clone();
    let mut rep = Report::new("floor");
    rep.set(
        "setup",
        json!({"socket_pairs": a.sockets, "frame_bytes": a.frame, "seconds_per_run": a.seconds}),
    );
    match tokio::task::spawn_blocking(move || measure(&args)).await {
        Ok(Ok(f)) => {
            for run in [&f.single, &f.coalesced] {
                let name = format!("{}_frame_per_write", run.frames_per_write);
                rep.set(
                    &name,
                    json!({"writes_per_s": thousands(run.writes_per_s),
                           "frames_per_s": thousands(run.frames_per_s),
                           "us_per_frame_both_cores": round(run.cpu_us_per_frame, 2)}),
                );
            }
        }
        Ok(Err(e)) => rep.set("error", e.to_string()),
        Err(e) => rep.set("error", e.to_string()),
    }
    rep
}
