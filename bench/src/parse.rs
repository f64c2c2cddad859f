//! `natter-bench parse`: what the edge spends on each `textMessage` before it publishes it,
//! in one thread and no I/O: parsing the request and writing its stored form. Run twice over
//! the same message, once through the fast path the edge uses (`Request::parse` takes a
//! `textMessage` straight into its fields, `frame::stored_text` writes the stored bytes) and
//! once the general way (a JSON tree each way: the method name is escaped so that the fast
//! path passes the frame on, and the stored form is built from `TextMessage::params`).

use std::time::Instant;

use natter_protocol::{frame, Call, Limits, Request};
use serde_json::json;

use crate::report::Report;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Messages parsed and stored per run.
    #[arg(long, default_value_t = 500_000)]
    pub messages: u32,
    /// Bytes of `text` in the message.
    #[arg(long, default_value_t = 80)]
    pub text: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &Args) -> Report {
    let text = "x".repeat(a.text.max(1));
    let fast = json!({"jsonrpc": "2.0", "method": "textMessage", "id": 12345,
        "params": {"userId": "r1-r3u0", "userName": "user0", "roomName": "r1-room-3",
                   "text": text, "uuid": "r1-12345"}})
    .to_string();
    let general = fast.replacen("\"textMessage\"", "\"textMessag\\u0065\"", 1);
    let limits = Limits::default();
    let ts = "2026-12-02T12:00:00.123456789Z";
    let mut rep = Report::new("parse");
    rep.set(
        "setup",
        json!({"messages": a.messages, "frame_bytes": fast.len()}),
    );
    for (name, frame_text, typed) in [("fast", &fast, true), ("general", &general, false)] {
        let t0 = Instant::now();
        let mut bytes = 0usize;
        for _ in 0..a.messages {
            let Ok(r) = Request::parse(frame_text.as_bytes(), &limits) else {
                rep.set("error", "the sample message was rejected");
                return rep;
            };
            if let Call::TextMessage(t) = r.call {
                let stored = if typed {
                    frame::stored_text(r.id.as_ref(), &t, ts)
                } else {
                    frame::stored_message("textMessage", r.id.as_ref(), t.params(), ts)
                };
                bytes += stored.len();
            }
        }
        let us = t0.elapsed().as_secs_f64() * 1e6 / f64::from(a.messages.max(1));
        rep.set(
            &format!("{name}_us_per_message"),
            json!((us * 100.0).round() / 100.0),
        );
        std::hint::black_box(bytes);
    }
    rep
}
