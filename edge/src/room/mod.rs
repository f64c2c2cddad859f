//! Rooms on this edge: the registry of rooms with local members, each with one live
//! subscription and its messages encoded once for all of them.
//!
//! - [`delivery`]: the sans-IO state machine (last sequence, seams, gaps, buffering) that
//!   decides who gets what; unit- and property-tested on its own.
//! - [`live`]: a room's I/O shell: subscription task, gap repair reads, tail check.
//! - [`coalesce`]: when a room writes what it staged (at once, or once per window);
//!   [`pressure`]: whether the edge is behind, for coalescing only then.
//! - [`tail`]: when a room checks the stream's tail (after traffic or a disruption, else
//!   once per quiet period), and when a disruption makes it relist its names.
//! - this file: the registry (join creates and starts a room, the last leave discards it).
//!
//! A room needs only [`RoomDeps`] (NATS, the stream reader, metrics, two settings), never
//! the whole edge node, so the node owns rooms and rooms do not reach back into it.

pub mod coalesce;
pub mod delivery;
pub mod live;
pub mod pressure;
pub mod tail;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use natter_bus::StreamReader;

pub use live::{Room, RoomError};

use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::presence::Presence;

/// What a room needs from the edge.
pub struct RoomDeps {
    pub nats: async_nats::Client,
    pub reader: StreamReader,
    pub metrics: Arc<Metrics>,
    /// Frames buffered for a catching-up member before it is closed as slow.
    pub buffer_cap: usize,
    /// How often a room may check the stream's tail: the tick of [`tail::TailSchedule`].
    pub tail_check: Duration,
    /// How often a room with no traffic and no disruption checks the tail.
    pub tail_check_quiet: Duration,
    /// Disruptions of the edge's NATS connection (and of the stream's leadership): after
    /// one, every room checks its tail at its next tick.
    pub disruptions: natter_bus::Disruptions,
    /// How often each room checks its names against presence.
    pub presence_check: Duration,
    /// A room writes to its sockets at most once per this window (zero: at once); see
    /// `--coalesce-ms`.
    pub coalesce: Duration,
    /// Whether the window applies now: always, or while the edge is behind
    /// (`--coalesce-lag-ms`).
    pub pressure: Arc<pressure::Pressure>,
    /// Who holds which name: a room tells its members about names that vanished without a
    /// `userLeft` reaching them.
    pub presence: Arc<Presence>,
}

/// A member's place in a room, held by its session.
pub struct Membership {
    pub room: Arc<Room>,
    pub member_id: u64,
    pub seam: u64,
}

/// Every room with local members.
pub struct Rooms {
    deps: Arc<RoomDeps>,
    map: Mutex<HashMap<String, Arc<Room>>>,
}

impl Rooms {
    pub fn new(deps: RoomDeps) -> Self {
        Rooms {
            deps: Arc::new(deps),
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn deps(&self) -> &RoomDeps {
        &self.deps
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Room>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Join `name` as a catching-up member; creates and starts the room on first use.
    pub async fn join(
        &self,
        name: &str,
        member_id: u64,
        outbox: Outbox,
        user_token: String,
    ) -> Result<Membership, RoomError> {
        let metrics = &self.deps.metrics;
        // A room closing concurrently is replaced; a few rounds always suffice.
        for _ in 0..5 {
            let room = {
                let mut map = self.lock();
                map.entry(natter_protocol::token::encode(name))
                    .or_insert_with(|| {
                        metrics.rooms.inc();
                        Arc::new(Room::new(name, self.deps.buffer_cap))
                    })
                    .clone()
            };
            if let Err(e) = room
                .started
                .get_or_try_init(|| room.start(&self.deps))
                .await
            {
                self.discard_if_empty(&room);
                return Err(e);
            }
            let seam = room
                .delivery()
                .add_member(member_id, outbox.clone(), user_token.clone());
            if let Some(seam) = seam {
                metrics.members.inc();
                return Ok(Membership {
                    room,
                    member_id,
                    seam,
                });
            }
        }
        Err(RoomError::Subscribe("the room kept closing; retry".into()))
    }

    /// Remove a member; the room's subscription ends with its last member.
    pub fn leave(&self, membership: &Membership) {
        let room = &membership.room;
        if room.delivery().remove_member(membership.member_id) {
            self.deps.metrics.members.dec();
        }
        self.discard_if_empty(room);
    }

    fn discard_if_empty(&self, room: &Arc<Room>) {
        if !room.delivery().close_if_empty() {
            return;
        }
        let mut map = self.lock();
        if map.get(&room.token).is_some_and(|r| Arc::ptr_eq(r, room)) {
            map.remove(&room.token);
            self.deps.metrics.rooms.dec();
        }
        drop(map);
        room.stop();
    }
}
