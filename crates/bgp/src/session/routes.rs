//! The routes of one session: what the peer announced to us (its Adj-RIB-In, with the
//! stale marks of graceful restart) and the UPDATEs that tell it what we announce.

use super::{Action, LearnedRoute, Session, State};
use crate::wire::{AsSegment, Message, Origin, PathAttributes, Update};
use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use tracing::info;

/// Prefixes per UPDATE: 400 × 5 bytes stays well under 4096.
const PREFIXES_PER_UPDATE: usize = 400;

impl Session {
    pub(super) fn drop_routes(&mut self, out: &mut Vec<Action>) {
        self.stale_until = None;
        if !self.routes.is_empty() {
            self.routes.clear();
            out.push(Action::RoutesChanged);
        }
    }

    pub(super) fn drop_stale(&mut self, out: &mut Vec<Action>) {
        self.stale_until = None;
        let before = self.routes.len();
        self.routes.retain(|_, r| !r.stale);
        if self.routes.len() != before {
            info!(peer = %self.cfg.peer, removed = before - self.routes.len(), "BGP stale routes removed");
            out.push(Action::RoutesChanged);
        }
    }

    pub(super) fn update_received(&mut self, update: Update, out: &mut Vec<Action>) {
        if update.is_end_of_rib() {
            info!(peer = %self.cfg.peer, "BGP End-of-RIB received");
            self.synced = true;
            if self.awaiting_eor {
                self.awaiting_eor = false;
                self.drop_stale(out);
            }
            return;
        }
        let mut changed = false;
        for prefix in &update.withdrawn {
            changed |= self.routes.remove(prefix).is_some();
        }
        let attrs = &update.attributes;
        let as_path: Vec<u32> = attrs
            .as_path
            .iter()
            .flatten()
            .flat_map(|seg| match seg {
                AsSegment::Sequence(a) | AsSegment::Set(a) => a.iter().copied(),
            })
            .collect();
        let looped = as_path.contains(&self.cfg.local_as);
        for prefix in &update.nlri {
            if looped {
                changed |= self.routes.remove(prefix).is_some();
            } else if let Some(next_hop) = attrs.next_hop {
                let route = LearnedRoute { next_hop, as_path: as_path.clone(), stale: false };
                changed |= self.routes.insert(*prefix, route.clone()) != Some(route);
            }
        }
        if changed {
            out.push(Action::RoutesChanged);
        }
    }

    pub(super) fn set_prefixes(&mut self, prefixes: BTreeSet<Ipv4Net>, out: &mut Vec<Action>) {
        if prefixes == self.announce {
            return;
        }
        let hides_learned = |set: &BTreeSet<Ipv4Net>| set.iter().filter(|p| self.routes.contains_key(p)).count();
        let learned_visibility_changed = hides_learned(&prefixes) != 0 || hides_learned(&self.announce) != 0;
        self.announce = prefixes;
        if learned_visibility_changed {
            out.push(Action::RoutesChanged);
        }
        if self.state != State::Established {
            return;
        }
        let gone: Vec<Ipv4Net> = self.sent.difference(&self.announce).copied().collect();
        let new: Vec<Ipv4Net> = self.announce.difference(&self.sent).copied().collect();
        for chunk in gone.chunks(PREFIXES_PER_UPDATE) {
            out.push(Action::Send(Message::Update(Update { withdrawn: chunk.to_vec(), ..Update::default() })));
        }
        out.extend(self.announcements(&new).into_iter().map(Action::Send));
        self.sent = self.announce.clone();
    }

    /// UPDATEs announcing `prefixes` with next hop self.
    pub(super) fn announcements(&self, prefixes: &[Ipv4Net]) -> Vec<Message> {
        let Some(next_hop) = self.local_addr else {
            return Vec::new();
        };
        let ibgp = self.cfg.local_as == self.cfg.remote_as;
        let attributes = PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(if ibgp { Vec::new() } else { vec![AsSegment::Sequence(vec![self.cfg.local_as])] }),
            next_hop: Some(next_hop),
            med: None,
            local_pref: ibgp.then_some(100),
            other: Vec::new(),
        };
        prefixes
            .chunks(PREFIXES_PER_UPDATE)
            .map(|chunk| {
                Message::Update(Update { withdrawn: Vec::new(), attributes: attributes.clone(), nlri: chunk.to_vec() })
            })
            .collect()
    }
}
