//! Loopback ports for test processes, handed out without races.
//!
//! Binding port 0, reading the port and releasing it ("bind, release and hope") races with
//! every other test process doing the same and with the kernel handing the port to an
//! outgoing connection before the server binds it. Here instead:
//! - ports come from a range just below the kernel's ephemeral range
//!   (`net.ipv4.ip_local_port_range`), so no outgoing connection is ever given one;
//! - each port is reserved with an exclusive `flock` on a file in a directory shared by
//!   every test process of the machine, held until this process exits, so two test
//!   processes never get the same port;
//! - a port is checked bindable before it is handed out (something outside the tests may
//!   hold it), and never handed out twice by one process, so restarts on the same port are
//!   safe.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;

/// How many ports the range holds at most.
const SPAN: u16 = 12_000;

struct Allocator {
    lo: u16,
    span: u16,
    next: u16,
    dir: PathBuf,
    /// The reservations: each file holds its port's lock until the process exits.
    held: Vec<File>,
}

static ALLOCATOR: Mutex<Option<Allocator>> = Mutex::new(None);

/// The range below the ephemeral ports: `[lo, lo + span)`.
fn range() -> (u16, u16) {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let lo = ephemeral_start.saturating_sub(SPAN).max(10_000);
    (lo, ephemeral_start.saturating_sub(lo).max(1))
}

impl Allocator {
    fn new() -> Allocator {
        let (lo, span) = range();
        let dir = std::env::temp_dir().join("natter-test-ports");
        // Best effort: if it cannot be created, reserving fails below and says so.
        let _ = std::fs::create_dir_all(&dir);
        // Start somewhere different in each process so they rarely contend for a lock.
        let start = (std::process::id() as u64 * 7919 % u64::from(span)) as u16;
        Allocator {
            lo,
            span,
            next: start,
            dir,
            held: Vec::new(),
        }
    }

    fn reserve(&mut self, port: u16) -> Option<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(port.to_string()))
            .ok()?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !locked {
            return None;
        }
        TcpListener::bind(("127.0.0.1", port)).ok()?;
        Some(file)
    }

    fn take(&mut self) -> Option<u16> {
        for _ in 0..self.span {
            let port = self.lo + self.next % self.span;
            self.next = (self.next + 1) % self.span;
            if let Some(file) = self.reserve(port) {
                self.held.push(file);
                return Some(port);
            }
        }
        None
    }
}

/// A TCP port on 127.0.0.1 reserved for this test process: free now, and handed to no
/// other test process and to no outgoing connection.
///
/// # Panics
/// When the whole range is taken (no test could run).
pub fn free_port() -> u16 {
    let mut guard = ALLOCATOR.lock().unwrap_or_else(|p| p.into_inner());
    let alloc = guard.get_or_insert_with(Allocator::new);
    match alloc.take() {
        Some(p) => p,
        None => panic!(
            "no free test port in {}..{} (reservations in {})",
            alloc.lo,
            alloc.lo + alloc.span,
            alloc.dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_below_the_ephemeral_range_and_bindable() {
        let (lo, span) = range();
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "a port was handed out twice");
        for p in ports {
            assert!(p >= lo && p < lo + span, "{p} outside {lo}..{}", lo + span);
            TcpListener::bind(("127.0.0.1", p)).expect("reserved port is bindable");
        }
    }

    #[test]
    fn a_reserved_port_cannot_be_reserved_again() {
        let p = free_port();
        let mut other = Allocator::new();
        assert!(other.reserve(p).is_none(), "the lock must keep {p} ours");
    }
}
