//! The rooms one socket has joined, and under which identity: what the commands check a
//! request against and what the session gives back when the socket goes.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::room::Membership;

/// A room joined on this socket.
pub struct Joined {
    pub membership: Membership,
    pub user_id: String,
    pub user_name: String,
    pub user_token: String,
    /// This session's key in the presence bucket (`<room>.<user>.<session>`).
    pub session_key: String,
}

/// Rooms joined on one socket, by room name.
#[derive(Default)]
pub struct JoinedRooms(Mutex<HashMap<String, Joined>>);

impl JoinedRooms {
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, Joined>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take every room out (the socket is going).
    pub fn take_all(&self) -> Vec<Joined> {
        self.lock().drain().map(|(_, j)| j).collect()
    }
}
