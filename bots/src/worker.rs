//! The worker: hand every room message to the room's bots and post their replies.
//!
//! - **Stored messages** come from the durable pull consumer `bots` on `CHAT` (filter
//!   `room.>`, explicit acks), shared by every replica: JetStream gives each message to one
//!   replica at a time (the consumer is the queue group), and a message a replica fetched
//!   but did not acknowledge (it died) goes to another after `--ack-wait-secs`. A trigger is
//!   acknowledged only after every reply it caused was acknowledged by the stream.
//! - **Replies** are published to `room.<token>` with `Nats-Msg-Id = <token>:<uuid>`, where
//!   the uuid is derived from the bot, the room and the trigger ([`reply_uuid`]): a trigger
//!   handled twice publishes the same ids, and the stream's dedupe window (120 s, above
//!   the ack wait) stores each reply once.
//! - **Bots never answer bots**: replies carry the `Natter-Bot` header and a `bot:<name>`
//!   userId; messages with either are never triggers.
//! - **Never before install**: a bot only sees triggers whose stream sequence is above the
//!   one recorded when it was installed.
//! - **`newUser`** is never stored: it is read from `live.room.<token>` of each room that
//!   has bots, by core subscriptions in the queue group `natter-bots` (one replica gets
//!   each event), best effort — an event that arrives while no replica listens is not seen
//!   again.
//!
//! Scripts run on blocking threads (`--script-threads` at once) under the sandbox's limits;
//! a failure is counted, logged and recorded on the bot, which is disabled after
//! `--failures-to-disable` failures in a row. Nothing a script does stops the worker.
//!
//! Why ~660 lines: the consumer loop, the per-trigger pipeline (run, limit, publish, ack)
//! and the in-progress acks share one batch's state; splitting them would pass it around.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use natter_bus::subjects;
use natter_protocol::{frame, token};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Semaphore};

use crate::metrics::Metrics;
use crate::registry::{Bot, Registry};
use crate::sandbox::{Failure, Sandbox, Trigger};

/// Header marking a message posted by a bot (its value: the bot's name).
pub const HDR_BOT: &str = "Natter-Bot";
/// userIds of bot replies start with this.
pub const BOT_USER_PREFIX: &str = "bot:";
/// Queue group of the `newUser` subscription.
pub const EVENT_QUEUE: &str = "natter-bots";

/// What the worker needs besides the registry.
#[derive(Clone)]
pub struct WorkerConfig {
    pub consumer: String,
    pub batch_size: usize,
    pub ack_wait: Duration,
    pub script_threads: usize,
    pub replies_per_minute: u32,
    pub max_reply_bytes: usize,
    pub failures_to_disable: u32,
    pub publish_timeout: Duration,
}

/// The shared parts of the worker.
pub struct Worker {
    pub js: jetstream::Context,
    pub registry: Registry,
    pub sandbox: Arc<Sandbox>,
    pub metrics: Arc<Metrics>,
    pub cfg: WorkerConfig,
    threads: Arc<Semaphore>,
    rates: Mutex<HashMap<String, Bucket>>,
}

/// A per-bot token bucket: `replies_per_minute` replies, refilled continuously.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What handling one trigger came to.
enum Handled {
    /// Every reply stored (or none due): acknowledge the trigger.
    Done,
    /// A reply could not be stored: leave the trigger for redelivery.
    Retry,
}

/// The durable consumer's definition: explicit acks, new messages only (bots never see
/// what was stored before the worker first ran), unlimited deliveries.
pub fn consumer_config(cfg: &WorkerConfig) -> pull::Config {
    pull::Config {
        durable_name: Some(cfg.consumer.clone()),
        description: Some("natter bots: room messages handed to the rooms' bots".into()),
        filter_subject: "room.>".into(),
        deliver_policy: DeliverPolicy::New,
        ack_policy: AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: -1,
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// Create the durable consumer (or use it as it is).
pub async fn ensure_consumer(
    js: &jetstream::Context,
    cfg: &WorkerConfig,
) -> Result<PullConsumer, String> {
    let stream = js
        .get_stream(subjects::STREAM)
        .await
        .map_err(|e| e.to_string())?;
    match stream.create_consumer(consumer_config(cfg)).await {
        Ok(c) => Ok(c),
        Err(e) => {
            tracing::warn!(error = %e, consumer = %cfg.consumer, "could not create or update the consumer; using the existing one");
            stream
                .get_consumer(&cfg.consumer)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

/// The uuid of reply `index` of bot `bot` in room `room_token` to trigger `trigger` (`m:<seq>`
/// for a stored message, `e:<uuid>` for an event): the same inputs give the same uuid.
pub fn reply_uuid(room_token: &str, bot: &str, trigger: &str, index: usize) -> String {
    let mut h = Sha256::new();
    for part in [room_token, bot, trigger, &index.to_string()] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "bot-{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A seed for `random(n)` from the trigger (the same on a redelivery).
fn seed(room_token: &str, bot: &str, trigger: &str) -> u64 {
    let mut h = Sha256::new();
    for part in [room_token, bot, trigger] {
        h.update(part.as_bytes());
        h.update([1u8]);
    }
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().unwrap_or_default())
}

impl Worker {
    pub fn new(
        js: jetstream::Context,
        registry: Registry,
        sandbox: Arc<Sandbox>,
        metrics: Arc<Metrics>,
        cfg: WorkerConfig,
    ) -> Worker {
        Worker {
            js,
            registry,
            sandbox,
            metrics,
            threads: Arc::new(Semaphore::new(cfg.script_threads.max(1))),
            cfg,
            rates: Mutex::new(HashMap::new()),
        }
    }

    /// Fetch and handle stored messages until `shutdown`.
    pub async fn run_consumer(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut consumer = loop {
            match ensure_consumer(&self.js, &self.cfg).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "could not create the bots consumer; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        let mut errors = 0u32;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let batch = tokio::select! {
                b = natter_bus::pull::fetch_batch(&consumer, self.cfg.batch_size, Duration::from_secs(1)) => b,
                _ = shutdown.changed() => return,
            };
            let msgs = match batch {
                Ok(m) => {
                    errors = 0;
                    m
                }
                Err(e) => {
                    errors += 1;
                    tracing::warn!(error = %e, "fetching from the bots consumer failed");
                    if errors.is_multiple_of(5) {
                        if let Ok(c) = ensure_consumer(&self.js, &self.cfg).await {
                            consumer = c;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(errors.min(10))))
                        .await;
                    continue;
                }
            };
            if msgs.is_empty() {
                continue;
            }
            // Every bot installed before these were fetched is known here.
            if let Err(e) = self.registry.caught_up(Duration::from_secs(5)).await {
                tracing::warn!(error = %e, "bots not known yet; the batch will be redelivered");
                for m in &msgs {
                    let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
                continue;
            }
            // Triggers wait their turn in the batch: keep their ack timers from running out
            // meanwhile (a redelivery must stay well inside the stream's dedupe window).
            let next = AtomicUsize::new(0);
            let work = async {
                for (i, m) in msgs.iter().enumerate() {
                    next.store(i, Ordering::Relaxed);
                    match self.handle_stored(m).await {
                        Handled::Done => {
                            if let Err(e) = m.double_ack().await {
                                tracing::debug!(error = %e, "ack failed; the trigger will be redelivered");
                            }
                        }
                        Handled::Retry => {
                            let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                        }
                    }
                }
            };
            let keepalive = async {
                let mut tick = tokio::time::interval(self.cfg.ack_wait / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    for m in &msgs[next.load(Ordering::Relaxed)..] {
                        let _ = m.ack_with(AckKind::Progress).await;
                    }
                }
            };
            tokio::select! {
                _ = work => {}
                _ = keepalive => {}
            }
        }
    }

    async fn handle_stored(&self, m: &jetstream::Message) -> Handled {
        let Some(room_token) = m.subject.as_str().strip_prefix("room.") else {
            return Handled::Done;
        };
        let Ok(info) = m.info() else {
            return Handled::Done;
        };
        let seq = info.stream_sequence;
        if info.delivered > 1 {
            self.metrics.redeliveries.inc();
        }
        if !self.registry.room_has_bots(room_token) {
            return Handled::Done;
        }
        let from_bot = m.headers.as_ref().is_some_and(|h| h.get(HDR_BOT).is_some());
        let Some(trigger) = parse_stored(&m.payload, room_token, seq) else {
            return Handled::Done;
        };
        if from_bot || trigger.user_id.starts_with(BOT_USER_PREFIX) {
            self.metrics.skipped_bot.inc();
            return Handled::Done;
        }
        self.metrics.triggers.inc();
        let key = format!("m:{seq}");
        let mut outcome = Handled::Done;
        for bot in self.registry.bots_in(room_token) {
            if bot.record.installed_seq >= seq || bot.record.disabled {
                continue;
            }
            if let Handled::Retry = self.run_bot(&bot, room_token, &key, &trigger).await {
                outcome = Handled::Retry;
            }
        }
        outcome
    }

    /// Keep one queue subscription to `live.room.<token>` per room that has bots (rooms
    /// without bots are not listened to), and hand their `newUser` events to the bots,
    /// until `shutdown`. Each change of the bots is followed within a bucket revision: the
    /// revision whose rooms are subscribed is published through the registry.
    pub async fn run_events(
        self: Arc<Self>,
        client: async_nats::Client,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut rooms: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut changes = self.registry.changes();
        loop {
            let revision = *changes.borrow_and_update();
            let wanted = self.registry.rooms();
            rooms.retain(|room, task| {
                let keep = wanted.contains(room) && !task.is_finished();
                if !keep {
                    task.abort(); // drops the subscription: unsubscribed
                }
                keep
            });
            let mut complete = true;
            for room in wanted {
                if rooms.contains_key(&room) {
                    continue;
                }
                match client
                    .queue_subscribe(subjects::live(&room), EVENT_QUEUE.into())
                    .await
                {
                    Ok(sub) => {
                        let task = tokio::spawn(self.clone().room_events(room.clone(), sub));
                        rooms.insert(room, task);
                    }
                    Err(e) => {
                        complete = false;
                        tracing::warn!(error = %e, "subscribing to a room's events failed; retrying");
                    }
                }
            }
            if complete && client.flush().await.is_ok() {
                self.registry.mark_listening(revision);
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => break,
            }
        }
        for (_, task) in rooms {
            task.abort();
        }
    }

    /// The `newUser` events of one room, until its subscription is dropped.
    async fn room_events(self: Arc<Self>, room_token: String, mut sub: async_nats::Subscriber) {
        while let Some(msg) = sub.next().await {
            let is_new_user = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(subjects::HDR_EVENT))
                .is_some_and(|v| v.as_str() == "newUser");
            if !is_new_user {
                continue;
            }
            let Some(trigger) = parse_event(&msg.payload, &room_token) else {
                continue;
            };
            let bots = self.registry.bots_in(&room_token);
            if bots.is_empty() {
                continue;
            }
            self.metrics.events.inc();
            let key = format!("e:{}", trigger.uuid);
            for bot in bots {
                if !bot.record.disabled {
                    let _ = self.run_bot(&bot, &room_token, &key, &trigger).await;
                }
            }
        }
    }

    /// Run one bot on one trigger and post its replies.
    async fn run_bot(&self, bot: &Bot, room_token: &str, key: &str, trigger: &Trigger) -> Handled {
        let name = bot.record.name.clone();
        let Some(ast) = bot.ast.clone() else {
            self.fail(bot, "not_compiled", "the stored script does not compile")
                .await;
            return Handled::Done;
        };
        let reply_to = trigger.uuid.clone();
        let mut trigger = trigger.clone();
        trigger.seed = seed(room_token, &name, key);
        let sandbox = self.sandbox.clone();
        let Ok(_permit) = self.threads.clone().acquire_owned().await else {
            return Handled::Retry;
        };
        let (bname, room) = (name.clone(), bot.record.room.clone());
        let started = Instant::now();
        let ran =
            tokio::task::spawn_blocking(move || sandbox.run(&ast, &bname, &room, &trigger)).await;
        drop(_permit);
        self.metrics.runs.inc();
        self.metrics.run_seconds.observe(started.elapsed());
        let replies = match ran {
            Ok(Ok(r)) => r,
            Ok(Err(failure)) => {
                self.fail(bot, failure.reason(), &failure.to_string()).await;
                return Handled::Done;
            }
            Err(e) => {
                self.fail(
                    bot,
                    Failure::Error(String::new()).reason(),
                    &format!("the run panicked: {e}"),
                )
                .await;
                return Handled::Done;
            }
        };
        if let Some(long) = replies.iter().find(|r| r.len() > self.cfg.max_reply_bytes) {
            let msg = format!(
                "a reply of {} bytes is over the limit of {}",
                long.len(),
                self.cfg.max_reply_bytes
            );
            self.fail(bot, "reply_too_large", &msg).await;
            return Handled::Done;
        }
        if bot.record.failures > 0 {
            let _ = self
                .registry
                .update(&bot.key, |r| {
                    r.failures = 0;
                })
                .await;
        }
        let mut acks = Vec::new();
        for (i, text) in replies.iter().enumerate() {
            if !self.take_token(&bot.key) {
                self.metrics.dropped_rate.inc();
                tracing::info!(bot = %name, room = %bot.record.room, "reply dropped: over the replies-per-minute limit");
                continue;
            }
            let uuid = reply_uuid(room_token, &name, key, i);
            let payload = reply_payload(&name, &bot.record.room, text, &uuid, &reply_to);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(HDR_BOT, name.as_str());
            let publish = PublishMessage::build()
                .payload(payload)
                .headers(headers)
                .message_id(subjects::msg_id(room_token, &uuid));
            match tokio::time::timeout(
                self.cfg.publish_timeout,
                self.js.send_publish(subjects::room(room_token), publish),
            )
            .await
            {
                Ok(Ok(ack)) => acks.push(ack),
                other => {
                    self.metrics.publish_errors.inc();
                    tracing::warn!(bot = %name, error = ?other.err(), "publishing a reply failed; the trigger will be retried");
                    return Handled::Retry;
                }
            }
        }
        for ack in acks {
            match tokio::time::timeout(self.cfg.publish_timeout, ack).await {
                Ok(Ok(_)) => {
                    self.metrics.replies.inc();
                }
                _ => {
                    self.metrics.publish_errors.inc();
                    return Handled::Retry;
                }
            }
        }
        Handled::Done
    }

    /// Count, log and record a failed run; disable the bot after too many in a row.
    async fn fail(&self, bot: &Bot, reason: &'static str, message: &str) {
        self.metrics.failure(reason);
        let limit = self.cfg.failures_to_disable;
        let note = format!("{reason}: {message}");
        let updated = self
            .registry
            .update(&bot.key, |r| {
                r.failures = r.failures.saturating_add(1);
                r.last_failure = Some(note.clone());
                if r.failures >= limit {
                    r.disabled = true;
                }
            })
            .await;
        match updated {
            Ok(Some(r)) if r.disabled && r.failures == limit => {
                self.metrics.disabled.inc();
                tracing::warn!(bot = %bot.record.name, room = %bot.record.room, reason, failures = r.failures,
                    "bot disabled after repeated failures (replace it to enable it again)");
            }
            Ok(Some(r)) => tracing::warn!(bot = %bot.record.name, room = %bot.record.room, reason,
                failures = r.failures, error = message, "bot script failed"),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(bot = %bot.record.name, error = %e, "could not record a bot failure")
            }
        }
    }

    fn take_token(&self, key: &str) -> bool {
        let per_minute = f64::from(self.cfg.replies_per_minute);
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let b = rates.entry(key.to_owned()).or_insert(Bucket {
            tokens: per_minute,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * per_minute / 60.0;
        b.tokens = (b.tokens + refill).min(per_minute);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn str_param(p: &Map<String, Value>, k: &str) -> String {
    match p.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// A stored `textMessage` as a trigger; `None` for anything else (images, files, junk).
fn parse_stored(payload: &[u8], room_token: &str, seq: u64) -> Option<Trigger> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    if v.get("method")?.as_str()? != "textMessage" {
        return None;
    }
    let p = v.get("params")?.as_object()?;
    Some(Trigger {
        event: "textMessage".into(),
        text: str_param(p, "text"),
        user_name: str_param(p, "userName"),
        user_id: str_param(p, "userId"),
        room_name: token::decode(room_token).unwrap_or_else(|_| str_param(p, "roomName")),
        date: p.get("date").cloned(),
        uuid: str_param(p, "uuid"),
        id: seq,
        seed: 0,
    })
}

/// A `newUser` notification as a trigger.
fn parse_event(payload: &[u8], room_token: &str) -> Option<Trigger> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let p = v.get("params")?.as_object()?;
    let uuid = str_param(p, "uuid");
    if uuid.is_empty() {
        return None;
    }
    Some(Trigger {
        event: "newUser".into(),
        text: str_param(p, "text"),
        user_name: str_param(p, "userName"),
        user_id: String::new(),
        room_name: token::decode(room_token).unwrap_or_else(|_| str_param(p, "roomName")),
        date: None,
        uuid,
        id: 0,
        seed: 0,
    })
}

/// The stored form of a bot's reply: a `textMessage` from userId `bot:<name>`, user name
/// `<name> (bot)`.
pub fn reply_payload(
    name: &str,
    room: &str,
    text: &str,
    uuid: &str,
    reply_to: &str,
) -> bytes::Bytes {
    let now = time::OffsetDateTime::now_utc();
    let mut params = Map::new();
    params.insert(
        "userId".into(),
        Value::String(format!("{BOT_USER_PREFIX}{name}")),
    );
    params.insert("userName".into(), Value::String(format!("{name} (bot)")));
    params.insert("roomName".into(), Value::String(room.to_owned()));
    params.insert("text".into(), Value::String(text.to_owned()));
    params.insert("uuid".into(), Value::String(uuid.to_owned()));
    params.insert(
        "date".into(),
        Value::from((now.unix_timestamp_nanos() / 1_000_000) as i64),
    );
    params.insert("replyTo".into(), Value::String(reply_to.to_owned()));
    let ts = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    frame::stored_message("textMessage", None, params, &ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_uuids_are_stable_and_distinct() {
        let a = reply_uuid("cm9vbQ", "echo", "m:7", 0);
        assert_eq!(a, reply_uuid("cm9vbQ", "echo", "m:7", 0));
        assert_ne!(a, reply_uuid("cm9vbQ", "echo", "m:7", 1));
        assert_ne!(a, reply_uuid("cm9vbQ", "echo", "m:8", 0));
        assert_ne!(a, reply_uuid("cm9vbQ", "roll", "m:7", 0));
        assert_ne!(a, reply_uuid("b3RoZXI", "echo", "m:7", 0));
        assert!(a.starts_with("bot-") && a.len() <= 64, "{a}");
    }

    #[test]
    fn replies_are_marked_as_a_bots() {
        let p = reply_payload("echo", "Room", "hi", "u1", "m:3");
        let v: Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["method"], "textMessage");
        assert_eq!(v["params"]["userId"], "bot:echo");
        assert_eq!(v["params"]["userName"], "echo (bot)");
        assert_eq!(v["params"]["ack"], true);
        let t = parse_stored(&p, &token::encode("Room"), 4).unwrap();
        assert!(t.user_id.starts_with(BOT_USER_PREFIX));
        assert_eq!(t.room_name, "Room");
    }
}
