//! What the policy reconciler knows of the cluster: namespaces, pods and policies as
//! watched, and the pods the CNI plugin registered before the API shows their address,
//! with the answers those registrations wait for.

use flatnet_kernel::conntrack;
use flatnet_kube::watch::{Change, Store};
use flatnet_model::policy::{self, Cluster, Key, Touched};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::warn;

/// How long a registration waits for its pod to appear in the API.
pub(super) const REGISTRATION_WAIT: Duration = Duration::from_secs(9);

/// A pod's registration by the CNI plugin, and where to answer.
pub struct Registration {
    pub key: Key,
    pub ip: Ipv4Addr,
    pub done: oneshot::Sender<Result<(), String>>,
    pub at: Instant,
}

pub(super) enum Event {
    Namespace(Change<Key, policy::Labels>),
    Pod(Change<Key, policy::Pod>),
    Policy(Change<Key, policy::Policy>),
    Register(Registration),
}

pub(super) fn runs_on(p: &policy::Pod, node: &str) -> bool {
    p.node.as_deref() == Some(node) && !p.finished
}

/// How long a registered address stands in for the API's, at most.
const REGISTRATION_KEPT: Duration = Duration::from_secs(300);

#[derive(Default)]
pub(super) struct World {
    pub(super) node: String,
    pub(super) namespaces: Store<policy::Labels>,
    pub(super) pods: Store<policy::Pod>,
    pub(super) policies: Store<policy::Policy>,
    /// Addresses the CNI plugin gave this node's pods, which their API status may not
    /// show yet, and when.
    pub(super) registered: HashMap<Key, (Ipv4Addr, Instant)>,
    pub(super) waiting: Vec<Registration>,
    /// The cluster as the plan reads it, kept up to date event by event.
    view: Cluster,
    /// Its keys changed since the planner last read it.
    touched: Touched,
    /// The pods whose address a registration changed in the view.
    stood_in: BTreeSet<Key>,
}

/// Applies `change` to `store` and brings `view` in line: only its key, or every key
/// after a re-list; each key it changes goes in `touched`.
fn follow<V: Clone, K: Ord + Clone>(
    store: &mut Store<V>,
    change: Change<Key, V>,
    view: &mut BTreeMap<K, V>,
    touched: &mut BTreeSet<K>,
    key: impl Fn(&Key) -> K,
) {
    let (one, relisted) = match &change {
        Change::Apply(k, _) | Change::Delete(k) => (Some(k.clone()), false),
        Change::InitDone => (None, true),
        Change::Init | Change::InitApply(..) => (None, false),
    };
    store.apply(change);
    if let Some(k) = one {
        let at = key(&k);
        match store.items.get(&k) {
            Some(v) => view.insert(at.clone(), v.clone()),
            None => view.remove(&at),
        };
        touched.insert(at);
    } else if relisted {
        touched.extend(view.keys().cloned());
        *view = store.items.iter().map(|(k, v)| (key(k), v.clone())).collect();
        touched.extend(view.keys().cloned());
    }
}

impl World {
    pub(super) fn new(node: String) -> Self {
        Self { node, ..Self::default() }
    }

    pub(super) fn listed(&self) -> bool {
        self.namespaces.listed && self.pods.listed && self.policies.listed
    }

    pub(super) fn apply(&mut self, e: Event) {
        match e {
            Event::Namespace(c) => {
                let (view, touched) = (&mut self.view.namespaces, &mut self.touched.namespaces);
                follow(&mut self.namespaces, c, view, touched, |k| k.1.clone());
            }
            Event::Policy(c) => {
                follow(&mut self.policies, c, &mut self.view.policies, &mut self.touched.policies, Key::clone)
            }
            Event::Pod(c) => {
                if let Change::Delete(k) = &c {
                    self.registered.remove(k);
                }
                follow(&mut self.pods, c, &mut self.view.pods, &mut self.touched.pods, Key::clone);
            }
            Event::Register(r) => {
                // The newest registration of an address wins: whoever had it is gone.
                self.registered.retain(|k, (ip, _)| *ip != r.ip || *k == r.key);
                self.registered.insert(r.key.clone(), (r.ip, r.at));
                self.waiting.push(r);
            }
        }
    }

    /// Is `key` a pod of this node that is still running (not finished, not gone)?
    pub(super) fn runs_here(&self, key: &Key) -> bool {
        self.pods.items.get(key).is_some_and(|p| runs_on(p, &self.node))
    }

    /// The cluster as the plan reads it, and its keys changed since the last call: a
    /// registered address stands in for the API's until the API shows it (for a pod of
    /// this node that still runs), and no other pod keeps that address. Registrations
    /// that can no longer apply are forgotten.
    pub(super) fn cluster(&mut self) -> (&Cluster, Touched) {
        let waiting: Vec<Key> = self.waiting.iter().map(|r| r.key.clone()).collect();
        let pods = &self.pods.items;
        let node = &self.node;
        // Kept while its ADD waits (the API may lag); then until the API shows the address,
        // while the pod runs here.
        self.registered.retain(|k, (ip, at)| {
            waiting.contains(k)
                || pods
                    .get(k)
                    .is_some_and(|p| p.ip != Some(*ip) && runs_on(p, node) && at.elapsed() < REGISTRATION_KEPT)
        });
        // The pods the last registrations changed are the API's again, then the
        // registrations that apply now change theirs.
        for k in std::mem::take(&mut self.stood_in) {
            match self.pods.items.get(&k) {
                Some(p) => self.view.pods.insert(k.clone(), p.clone()),
                None => self.view.pods.remove(&k),
            };
            self.touched.pods.insert(k);
        }
        for (k, (ip, _)) in &self.registered {
            if !self.runs_here(k) {
                continue;
            }
            for (other, p) in self.view.pods.iter_mut() {
                if (other != k && p.ip == Some(*ip)) || (other == k && p.ip != Some(*ip)) {
                    p.ip = (other == k).then_some(*ip);
                    self.stood_in.insert(other.clone());
                    self.touched.pods.insert(other.clone());
                }
            }
        }
        (&self.view, std::mem::take(&mut self.touched))
    }

    /// Answers the registrations of running pods of this node, which the state just
    /// applied covers (after deleting any conntrack entry of their addresses, so no
    /// earlier flow passes as established); gives up on those that waited too long.
    pub(super) fn answer(&mut self, ok: bool) {
        let (ready, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.waiting).into_iter().partition(|r| ok && self.runs_here(&r.key));
        let ips: std::collections::BTreeSet<Ipv4Addr> = ready.iter().map(|r| r.ip).collect();
        if let Err(e) = conntrack::delete_involving(&ips) {
            warn!("could not delete the conntrack entries of new pod addresses {ips:?}: {e}");
        }
        for r in ready {
            let _ = r.done.send(Ok(()));
        }
        for r in rest {
            if r.at.elapsed() > REGISTRATION_WAIT {
                let why = format!(
                    "pod {}/{} is not in the API as a running pod of node {} (or not yet listed)",
                    r.key.0, r.key.1, self.node
                );
                self.registered.remove(&r.key);
                let _ = r.done.send(Err(why));
            } else {
                self.waiting.push(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: &str, ip: Option<&str>, finished: bool) -> policy::Pod {
        policy::Pod { node: Some(node.into()), ip: ip.map(|i| i.parse().unwrap()), finished, ..Default::default() }
    }

    fn key(n: &str) -> Key {
        ("ns".into(), n.into())
    }

    fn world(pods: Vec<(&str, policy::Pod)>) -> World {
        let mut w = World::new("node-1".into());
        for (n, p) in pods {
            w.apply(Event::Pod(Change::Apply(key(n), Some(p))));
        }
        w
    }

    fn register(w: &mut World, n: &str, ip: &str) -> oneshot::Receiver<Result<(), String>> {
        let (done, rx) = oneshot::channel();
        w.apply(Event::Register(Registration { key: key(n), ip: ip.parse().unwrap(), done, at: Instant::now() }));
        rx
    }

    fn ip_of(c: &Cluster, n: &str) -> Option<Ipv4Addr> {
        c.pods[&key(n)].ip
    }

    #[test]
    fn a_registration_stands_in_for_the_api_and_takes_the_address_from_its_old_owner() {
        let mut w = world(vec![("old", pod("node-1", Some("10.244.1.5"), false)), ("new", pod("node-1", None, false))]);
        let mut rx = register(&mut w, "new", "10.244.1.5");
        let c = w.cluster().0.clone();
        assert_eq!(ip_of(&c, "new"), Some("10.244.1.5".parse().unwrap()));
        assert_eq!(ip_of(&c, "old"), None, "the address has a new owner");
        w.answer(true);
        assert_eq!(rx.try_recv().unwrap(), Ok(()));
        // The newest registration of an address wins.
        w.apply(Event::Pod(Change::Apply(key("newer"), Some(pod("node-1", None, false)))));
        let _rx = register(&mut w, "newer", "10.244.1.5");
        let c = w.cluster().0.clone();
        assert_eq!((ip_of(&c, "newer"), ip_of(&c, "new")), (Some("10.244.1.5".parse().unwrap()), None));
    }

    #[test]
    fn only_running_pods_of_this_node_are_confirmed() {
        let mut w = world(vec![("elsewhere", pod("node-2", None, false)), ("done", pod("node-1", None, true))]);
        let mut a = register(&mut w, "elsewhere", "10.244.1.6");
        let mut b = register(&mut w, "done", "10.244.1.7");
        let mut c = register(&mut w, "unknown", "10.244.1.8");
        let cl = w.cluster().0.clone();
        assert_eq!((ip_of(&cl, "elsewhere"), ip_of(&cl, "done")), (None, None));
        w.answer(true);
        for rx in [&mut a, &mut b, &mut c] {
            assert!(rx.try_recv().is_err(), "no answer before the pod runs here");
        }
        // The pod is bound here: the next applied state confirms it.
        w.apply(Event::Pod(Change::Apply(key("elsewhere"), Some(pod("node-1", None, false)))));
        assert_eq!(ip_of(w.cluster().0, "elsewhere"), Some("10.244.1.6".parse().unwrap()));
        w.answer(true);
        assert_eq!(a.try_recv().unwrap(), Ok(()));
        // A failed apply confirms nothing.
        let _pending = register(&mut w, "elsewhere", "10.244.1.6");
        w.answer(false);
        assert_eq!(w.waiting.len(), 3);
    }

    #[test]
    fn the_view_follows_every_event_and_names_what_changed() {
        let a = "10.244.1.5".parse().ok();
        let mut w = world(vec![("a", pod("node-1", Some("10.244.1.5"), false))]);
        assert_eq!(w.cluster().1.pods, [key("a")].into());
        assert!(w.cluster().1.is_empty(), "nothing changed since");
        // A registration stands in for the API: both pods it changes are named.
        w.apply(Event::Pod(Change::Apply(key("b"), Some(pod("node-1", None, false)))));
        let _rx = register(&mut w, "b", "10.244.1.5");
        let (c, t) = w.cluster();
        assert_eq!((ip_of(c, "a"), ip_of(c, "b")), (None, a));
        assert_eq!(t.pods, [key("a"), key("b")].into());
        // The pod is deleted: the view has the API's pod `a` again.
        w.apply(Event::Pod(Change::Delete(key("b"))));
        let (c, t) = w.cluster();
        assert_eq!(ip_of(c, "a"), a);
        assert!(!c.pods.contains_key(&key("b")));
        assert!(t.pods.contains(&key("a")) && t.pods.contains(&key("b")));
        // A re-list that no longer has a pod drops it.
        w.apply(Event::Pod(Change::Init));
        w.apply(Event::Pod(Change::InitDone));
        let (c, t) = w.cluster();
        assert!(c.pods.is_empty());
        assert_eq!(t.pods, [key("a")].into());
    }
}
