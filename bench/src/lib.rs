//! natter-bench: natter's load generator, benchmarks and chaos runs.
//!
//! Each scenario starts the topology it measures on loopback with real processes
//! (nats-server, edges, Postgres and the archiver from this workspace's binaries, through
//! `natter-testkit`) — or targets given edge URLs — drives it with real WebSocket clients
//! speaking protocol v1 (or, for `peer`, Socket.IO v4 against a Node cluster through the same
//! clients), and reports what it measured: deliveries expected vs received, lost
//! and duplicated deliveries, throughput, end-to-end latency percentiles, CPU seconds per
//! server process, memory per idle connection, archive rows/s and lag, and for chaos,
//! Postgres rows vs acknowledged messages.
//!
//! Figures are printed, never asserted: tests assert behaviour (`tests/chaos.rs` runs a short
//! chaos scenario and asserts zero loss), benchmarks report numbers (BENCHMARKS.md). Nothing
//! here is tuned to a target.

pub mod archive_check;
pub mod archiver;
pub mod bigroom;
pub mod dialect;
pub mod floor;
pub mod load;
pub mod pacing;
pub mod parse;
pub mod peer;
pub mod procs;
pub mod report;
pub mod scan;
pub mod scenarios;
pub mod sio;
pub mod stream_ceiling;
pub mod topology;
pub mod wsclient;
