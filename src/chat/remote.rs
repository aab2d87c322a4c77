//! Users on other nodes: who they are and which rooms they are in, as their nodes tell us
//! (`remote_join`, `remote_room`, `remote_leave`, `remote_roster`), and a node that is gone.

use super::ids::key;
use super::{Chat, Remote};
use crate::protocol;
use std::rc::Rc;

impl Chat {
    /// `id` is on `node`. A local user of that id wins: Redis gave it to us, so the remote
    /// news is stale or a conflict that re-registration will settle.
    pub fn remote_join(&mut self, node: &str, id: &str) {
        if !protocol::valid_id(id) {
            return;
        }
        if self.users.contains(id) {
            return;
        }
        let k = key(id);
        match self.remote.get_mut(k.as_str()) {
            Some(r) if &*r.node == node && &*r.id == id => {}
            Some(_) => {
                // Moved, or renamed in case: start over from what `node` says next.
                self.remote_forget(&k);
                self.remote_join(node, id);
            }
            None => {
                let r = Remote { id: Rc::from(id), node: Rc::from(node), rooms: Vec::new() };
                self.remote.insert(Rc::from(k), r);
            }
        }
    }

    /// `id` on `node` joined (`joined`) or left room `room`. A join of an unknown user makes
    /// it known (an event may overtake the user's own join).
    pub fn remote_room(&mut self, node: &str, id: &str, room: &str, joined: bool) {
        let Some(room) = protocol::room_name(room) else { return };
        if joined {
            self.remote_join(node, id);
        }
        let k = key(id);
        let Some((ukey, r)) = self.remote.get_key_value(k.as_str()) else { return };
        if &*r.node != node {
            return;
        }
        let (ukey, rid) = (Rc::clone(ukey), Rc::clone(&r.id));
        let at = self.rooms.key(&room).filter(|rk| r.rooms.contains(&(*rk as u32)));
        match (joined, at) {
            (true, None) => {
                if self.rooms.len() >= self.limits.max_rooms && self.rooms.key(&room).is_none() {
                    return; // over our own limit: this node does not track more rooms
                }
                let rk = self.rooms.join_remote(&room, &ukey, &rid);
                self.remote.get_mut(&*ukey).expect("known").rooms.push(rk as u32);
            }
            (false, Some(rk)) => {
                self.rooms.leave_remote(rk, &ukey);
                self.remote.get_mut(&*ukey).expect("known").rooms.retain(|x| *x != rk as u32);
            }
            _ => {}
        }
    }

    /// `id` left `node` (and every room); ignored if we know it on another node since.
    pub fn remote_leave(&mut self, node: &str, id: &str) {
        let k = key(id);
        if self.remote.get(k.as_str()).is_some_and(|r| &*r.node == node) {
            self.remote_forget(&k);
        }
    }

    pub(super) fn remote_forget(&mut self, k: &str) {
        if let Some(r) = self.remote.remove(k) {
            for room in r.rooms {
                self.rooms.leave_remote(room as usize, k);
            }
        }
    }

    /// Everyone on `node` with their rooms, replacing what we knew: joins and leaves for the
    /// difference.
    pub fn remote_roster(&mut self, node: &str, members: &[(&str, Vec<&str>)]) {
        let listed: std::collections::HashSet<String> = members.iter().map(|(i, _)| key(i)).collect();
        let gone: Vec<Rc<str>> = self
            .remote
            .iter()
            .filter(|(k, r)| &*r.node == node && !listed.contains(&***k))
            .map(|(_, r)| Rc::clone(&r.id))
            .collect();
        for id in gone {
            self.remote_leave(node, &id);
        }
        for (id, rooms) in members {
            self.remote_join(node, id);
            let k = key(id);
            let Some(r) = self.remote.get(k.as_str()).filter(|r| &*r.node == node) else { continue };
            let wanted: Vec<String> =
                rooms.iter().filter_map(|n| protocol::room_name(n).map(String::from)).collect();
            let stale: Vec<Rc<str>> = r
                .rooms
                .iter()
                .map(|rk| Rc::clone(&self.rooms.room(*rk as usize).name))
                .filter(|n| !wanted.iter().any(|w| **w == **n))
                .collect();
            for room in stale {
                self.remote_room(node, id, &room, false);
            }
            for room in &wanted {
                self.remote_room(node, id, room, true);
            }
        }
    }

    /// `node` is gone: so are its users.
    pub fn drop_node(&mut self, node: &str) {
        self.remote_roster(node, &[]);
    }

    /// The users we believe are on `node`, each with the names of its rooms (for the event
    /// stream's leaves and offlines when that node dies).
    pub fn users_on(&self, node: &str) -> Vec<(Rc<str>, Vec<Rc<str>>)> {
        let name = |r: &u32| Rc::clone(&self.rooms.room(*r as usize).name);
        let on = self.remote.values().filter(|r| &*r.node == node);
        on.map(|r| (Rc::clone(&r.id), r.rooms.iter().map(name).collect())).collect()
    }

    /// How many users, and memberships, we believe `node` has.
    pub fn count_on(&self, node: &str) -> (usize, usize) {
        self.remote.values().filter(|r| &*r.node == node).fold((0, 0), |(u, m), r| (u + 1, m + r.rooms.len()))
    }
}
