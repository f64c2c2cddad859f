//! Which bots exist: stored durably in the NATS KV bucket `bots` (key
//! `<room token>.<bot name>`, value a [`BotRecord`]), and mirrored in every replica's memory
//! with each script compiled once.
//!
//! Every replica watches the bucket, so a bot installed, replaced, disabled or removed
//! through any replica reaches all of them. [`Registry::caught_up`] lets the worker wait,
//! before it handles a batch, until its mirror holds every change the bucket had when the
//! batch was fetched: a trigger stored after an install was acknowledged is therefore
//! always handled with that bot known, whichever replica gets it.
//!
//! Failure counts and the disabled flag live in the record too (compare-and-set updates), so
//! a bot disabled by one replica is disabled for all, and survives restarts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use rhai::AST;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::sandbox::Sandbox;

/// The KV bucket holding the bots.
pub const BUCKET: &str = "bots";

/// A bot as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BotRecord {
    pub room: String,
    pub name: String,
    pub script: String,
    /// The stream's last sequence when the bot was installed (or replaced): triggers at or
    /// below it are never handed to this bot.
    pub installed_seq: u64,
    pub installed_at: String,
    /// Consecutive failed runs.
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub disabled: bool,
    /// The last failure: its reason and message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

/// A bot as the worker uses it: its record and its compiled script.
#[derive(Clone)]
pub struct Bot {
    pub key: String,
    pub record: BotRecord,
    /// `None` when the stored script does not compile with this replica's engine.
    pub ast: Option<Arc<AST>>,
}

/// The KV key of bot `name` in the room with token `room_token`.
pub fn key(room_token: &str, name: &str) -> String {
    format!("{room_token}.{name}")
}

/// Whether `name` may name a bot: 1 to 32 of `A-Z a-z 0-9 _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("bots bucket: {0}")]
    Nats(String),
    #[error("the bot changed meanwhile; retry")]
    Conflict,
}

/// The bucket and this replica's mirror of it.
#[derive(Clone)]
pub struct Registry {
    kv: kv::Store,
    js: jetstream::Context,
    sandbox: Arc<Sandbox>,
    /// room token → bot name → bot.
    bots: Arc<RwLock<HashMap<String, BTreeMap<String, Bot>>>>,
    /// The highest bucket revision the mirror has applied.
    applied: watch::Receiver<u64>,
    loaded: Arc<AtomicBool>,
    /// The highest revision whose rooms this replica listens to for events.
    listening: Arc<watch::Sender<u64>>,
}

impl Registry {
    /// Open (or create) the bucket and start mirroring it.
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
        sandbox: Arc<Sandbox>,
    ) -> Result<Registry, RegistryError> {
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: BUCKET.into(),
                    description: "natter: room bots (<room token>.<bot name> -> script and state)"
                        .into(),
                    history: 1,
                    max_value_size: 256 * 1024,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|e| RegistryError::Nats(e.to_string()))?,
        };
        let (tx, applied) = watch::channel(0u64);
        let reg = Registry {
            kv,
            js: js.clone(),
            sandbox,
            bots: Arc::default(),
            applied,
            loaded: Arc::default(),
            listening: Arc::new(watch::channel(0).0),
        };
        tokio::spawn(reg.clone().mirror(tx));
        Ok(reg)
    }

    /// The bots of a room (disabled ones included).
    pub fn bots_in(&self, room_token: &str) -> Vec<Bot> {
        let bots = self.bots.read().unwrap_or_else(|p| p.into_inner());
        bots.get(room_token)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The rooms (tokens) that have bots.
    pub fn rooms(&self) -> HashSet<String> {
        let bots = self.bots.read().unwrap_or_else(|p| p.into_inner());
        bots.keys().cloned().collect()
    }

    /// Changes of the mirror (its applied revision).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// The event listener follows the bots up to `revision`.
    pub fn mark_listening(&self, revision: u64) {
        self.listening.send_modify(|r| *r = (*r).max(revision));
    }

    /// Wait (up to `timeout`) until this replica listens to the events of the rooms as they
    /// are at `revision`; whether it does.
    pub async fn listening_at(&self, revision: u64, timeout: Duration) -> bool {
        let mut rx = self.listening.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether the room has any bot.
    pub fn room_has_bots(&self, room_token: &str) -> bool {
        let bots = self.bots.read().unwrap_or_else(|p| p.into_inner());
        bots.get(room_token).is_some_and(|m| !m.is_empty())
    }

    /// Bots known to this replica.
    pub fn count(&self) -> usize {
        let bots = self.bots.read().unwrap_or_else(|p| p.into_inner());
        bots.values().map(BTreeMap::len).sum()
    }

    /// Wait (up to `timeout`) until the mirror holds every change the bucket has now.
    pub async fn caught_up(&self, timeout: Duration) -> Result<(), RegistryError> {
        let last = self.last_revision().await?;
        let mut rx = self.applied.clone();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= last))
            .await
            .is_ok_and(|r| r.is_ok());
        match reached {
            true => Ok(()),
            false => Err(RegistryError::Nats(format!(
                "the bots mirror did not reach revision {last} within {timeout:?}"
            ))),
        }
    }

    /// Whether the mirror has loaded the bucket once.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    async fn last_revision(&self) -> Result<u64, RegistryError> {
        let mut stream = self
            .js
            .get_stream(format!("KV_{BUCKET}"))
            .await
            .map_err(|e| RegistryError::Nats(e.to_string()))?;
        let info = stream
            .info()
            .await
            .map_err(|e| RegistryError::Nats(e.to_string()))?;
        Ok(info.state.last_sequence)
    }

    /// The stored record of a bot and its revision.
    pub async fn get(&self, key: &str) -> Result<Option<(BotRecord, u64)>, RegistryError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| RegistryError::Nats(e.to_string()))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| {
                serde_json::from_slice::<BotRecord>(&e.value)
                    .ok()
                    .map(|r| (r, e.revision))
            }))
    }

    /// Store a bot (install or replace); returns its revision.
    pub async fn put(&self, key: &str, record: &BotRecord) -> Result<u64, RegistryError> {
        let value = serde_json::to_vec(record).map_err(|e| RegistryError::Nats(e.to_string()))?;
        self.kv
            .put(key, value.into())
            .await
            .map_err(|e| RegistryError::Nats(e.to_string()))
    }

    /// Remove a bot.
    pub async fn delete(&self, key: &str) -> Result<(), RegistryError> {
        self.kv
            .delete(key)
            .await
            .map_err(|e| RegistryError::Nats(e.to_string()))
    }

    /// Change a stored bot with `change` (compare-and-set, retried on a concurrent change).
    /// `None` when the bot is gone.
    pub async fn update(
        &self,
        key: &str,
        change: impl Fn(&mut BotRecord),
    ) -> Result<Option<BotRecord>, RegistryError> {
        for _ in 0..5 {
            let Some((mut record, revision)) = self.get(key).await? else {
                return Ok(None);
            };
            change(&mut record);
            let value =
                serde_json::to_vec(&record).map_err(|e| RegistryError::Nats(e.to_string()))?;
            match self.kv.update(key, value.into(), revision).await {
                Ok(_) => return Ok(Some(record)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(RegistryError::Nats(e.to_string())),
            }
        }
        Err(RegistryError::Conflict)
    }

    /// The stream's last sequence now: what a bot installed now must not see.
    pub async fn stream_last_seq(&self) -> Result<u64, RegistryError> {
        let mut stream = self
            .js
            .get_stream(natter_bus::subjects::STREAM)
            .await
            .map_err(|e| RegistryError::Nats(e.to_string()))?;
        let info = stream
            .info()
            .await
            .map_err(|e| RegistryError::Nats(e.to_string()))?;
        Ok(info.state.last_sequence)
    }

    /// Keep the mirror in step with the bucket, forever (re-watching after an error).
    async fn mirror(self, applied: watch::Sender<u64>) {
        loop {
            match self.watch_once(&applied).await {
                Ok(()) => tracing::warn!("the bots bucket watch ended; watching again"),
                Err(e) => tracing::warn!(error = %e, "watching the bots bucket failed; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn watch_once(&self, applied: &watch::Sender<u64>) -> Result<(), RegistryError> {
        // An empty bucket delivers nothing: it is loaded as soon as it is read.
        let last = self.last_revision().await?;
        let mut watch = self
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| RegistryError::Nats(e.to_string()))?;
        if last == 0 {
            self.loaded.store(true, Ordering::Relaxed);
        }
        let mut fresh: HashMap<String, BTreeMap<String, Bot>> = HashMap::new();
        let mut loading = last > 0;
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| RegistryError::Nats(e.to_string()))?;
            let (room_token, name) = match entry.key.split_once('.') {
                Some((r, n)) => (r.to_owned(), n.to_owned()),
                None => continue,
            };
            let bot = match entry.operation {
                kv::Operation::Put => match serde_json::from_slice::<BotRecord>(&entry.value) {
                    Ok(record) => Some(self.compile(entry.key.clone(), record)),
                    Err(e) => {
                        tracing::warn!(key = %entry.key, error = %e, "unreadable bot record ignored");
                        None
                    }
                },
                _ => None,
            };
            if loading {
                // Build the first view aside, then swap it in whole.
                apply(&mut fresh, room_token, name, bot);
                if entry.revision >= last || entry.delta == 0 {
                    loading = false;
                    *self.bots.write().unwrap_or_else(|p| p.into_inner()) =
                        std::mem::take(&mut fresh);
                    self.loaded.store(true, Ordering::Relaxed);
                }
            } else {
                let mut bots = self.bots.write().unwrap_or_else(|p| p.into_inner());
                apply(&mut bots, room_token, name, bot);
            }
            if !loading {
                applied.send_modify(|r| *r = (*r).max(entry.revision));
            }
        }
        Ok(())
    }

    fn compile(&self, key: String, record: BotRecord) -> Bot {
        let ast = match self.sandbox.compile(&record.script) {
            Ok(ast) => Some(Arc::new(ast)),
            Err(e) => {
                tracing::warn!(bot = %record.name, room = %record.room, error = %e, "stored script does not compile");
                None
            }
        };
        Bot { key, record, ast }
    }
}

fn apply(
    map: &mut HashMap<String, BTreeMap<String, Bot>>,
    room_token: String,
    name: String,
    bot: Option<Bot>,
) {
    match bot {
        Some(b) => {
            map.entry(room_token).or_default().insert(name, b);
        }
        None => {
            if let Some(m) = map.get_mut(&room_token) {
                m.remove(&name);
                if m.is_empty() {
                    map.remove(&room_token);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("greeter"));
        assert!(valid_name("dice_2-x"));
        assert!(!valid_name(""));
        assert!(!valid_name("a.b"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"x".repeat(33)));
        assert_eq!(key("cm9vbQ", "greeter"), "cm9vbQ.greeter");
    }
}
