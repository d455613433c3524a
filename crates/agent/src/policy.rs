//! NetworkPolicy enforcement: watches Namespaces, Pods and NetworkPolicies, plans this
//! node's policy table with `flatnet_model::policy`, and applies the difference in one
//! nftables transaction per batch of events. A full sync (read the table, diff) runs at
//! start, after an error, and every few minutes.
//!
//! The CNI plugin registers each new pod here before the runtime starts it (see
//! `flatnet_cni::register`): the answer comes once the pod's policy is in the kernel, so
//! an isolated pod never sends or receives a packet it should not.

use crate::supervise::{Reconcile, Stop, drive};
use flatnet_kernel::{conntrack, nft};
use flatnet_kube::policy::{pod_of, policy_of};
use flatnet_kube::watch::{self, Change, Store};
use flatnet_model::policy::{self, Cluster, Key, State};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use nftables::types::NfFamily;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Bridged traffic reaches the `ip` forward hook only with br_netfilter (the agent sets
/// this sysctl to 1 when it exists).
const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
/// How long a registration waits for its pod to appear in the API.
const REGISTRATION_WAIT: Duration = Duration::from_secs(9);

/// A pod's registration by the CNI plugin, and where to answer.
pub struct Registration {
    pub key: Key,
    pub ip: Ipv4Addr,
    pub done: oneshot::Sender<Result<(), String>>,
    pub at: Instant,
}

enum Event {
    Namespace(Change<Key, policy::Labels>),
    Pod(Change<Key, policy::Pod>),
    Policy(Change<Key, policy::Policy>),
    Register(Registration),
}

fn runs_on(p: &policy::Pod, node: &str) -> bool {
    p.node.as_deref() == Some(node) && !p.finished
}

/// How long a registered address stands in for the API's, at most.
const REGISTRATION_KEPT: Duration = Duration::from_secs(300);

#[derive(Default)]
struct World {
    node: String,
    namespaces: Store<policy::Labels>,
    pods: Store<policy::Pod>,
    policies: Store<policy::Policy>,
    /// Addresses the CNI plugin gave this node's pods, which their API status may not
    /// show yet, and when.
    registered: HashMap<Key, (Ipv4Addr, Instant)>,
    waiting: Vec<Registration>,
}

impl World {
    fn listed(&self) -> bool {
        self.namespaces.listed && self.pods.listed && self.policies.listed
    }

    fn apply(&mut self, e: Event) {
        match e {
            Event::Namespace(c) => self.namespaces.apply(c),
            Event::Policy(c) => self.policies.apply(c),
            Event::Pod(c) => {
                if let Change::Delete(k) = &c {
                    self.registered.remove(k);
                }
                self.pods.apply(c);
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
    fn runs_here(&self, key: &Key) -> bool {
        self.pods.items.get(key).is_some_and(|p| runs_on(p, &self.node))
    }

    /// The cluster as the plan reads it: a registered address stands in for the API's
    /// until the API shows it (for a pod of this node that still runs), and no other pod
    /// keeps that address. Registrations that can no longer apply are forgotten.
    fn cluster(&mut self) -> Cluster {
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
        let mut pods: BTreeMap<Key, policy::Pod> =
            self.pods.items.iter().map(|(k, p)| (k.clone(), p.clone())).collect();
        for (k, (ip, _)) in &self.registered {
            if !self.runs_here(k) {
                continue;
            }
            for (other, p) in pods.iter_mut() {
                if other != k && p.ip == Some(*ip) {
                    p.ip = None;
                }
            }
            if let Some(p) = pods.get_mut(k) {
                p.ip = Some(*ip);
            }
        }
        Cluster {
            namespaces: self.namespaces.items.iter().map(|((_, n), l)| (n.clone(), l.clone())).collect(),
            pods,
            policies: self.policies.items.iter().map(|(k, p)| (k.clone(), p.clone())).collect(),
        }
    }

    /// Answers the registrations of running pods of this node, which the state just
    /// applied covers (after deleting any conntrack entry of their addresses, so no
    /// earlier flow passes as established); gives up on those that waited too long.
    fn answer(&mut self, ok: bool) {
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

/// Makes the table's base when the marker on either base chain says it differs (or
/// the chain is gone).
fn ensure_base() -> Result<(), nft::NftError> {
    let mut right = true;
    for chain in policy::BASE_CHAIN_NAMES {
        let comments = nft::chain_rule_comments(NfFamily::IP, policy::TABLE, chain)?;
        right &= comments.as_ref().and_then(|c| c.first()) == Some(&policy::base_marker());
    }
    if right {
        return Ok(());
    }
    nft::apply_objects(policy::base_transaction().iter().map(|o| o.to_string()))
}

/// The policy table as the kernel has it: chain names, sets and maps with their
/// elements, counters (never the rules, which are the bulk of a listing).
pub fn read_actual() -> Result<State, nft::NftError> {
    let (chains, _) = nft::table_names(NfFamily::IP, policy::TABLE)?;
    let mut objects: Vec<serde_json::Value> =
        chains.into_iter().map(|c| serde_json::json!({"chain": {"table": policy::TABLE, "name": c}})).collect();
    for what in ["sets", "maps", "counters"] {
        objects.extend(nft::list_objects(NfFamily::IP, what, policy::TABLE)?);
    }
    Ok(State::from_listing(&serde_json::json!({ "nftables": objects })))
}

/// What one policy dropped on this node, in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drops {
    pub direction: policy::Direction,
    pub namespace: String,
    pub policy: String,
    pub packets: u64,
    pub bytes: u64,
}

/// The kernel's per-policy drop counters on this node.
pub fn drop_counters() -> Result<Vec<Drops>, nft::NftError> {
    Ok(nft::list_objects(NfFamily::IP, "counters", policy::TABLE)?
        .iter()
        .filter_map(|o| {
            let c = o.get("counter")?;
            let (direction, namespace, policy) = policy::parse_counter_name(c["name"].as_str()?)?;
            Some(Drops { direction, namespace, policy, packets: c["packets"].as_u64()?, bytes: c["bytes"].as_u64()? })
        })
        .collect())
}

/// Serves registrations on `path` (replacing a stale socket file) until the task ends.
async fn serve_registrations(path: PathBuf, tx: mpsc::UnboundedSender<(Instant, Event)>) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(
                "cannot listen for pod registrations on {}: {e}; new pods start without waiting for policy",
                path.display()
            );
            return;
        }
    };
    // Only root may register a pod: a registration decides a pod's isolation.
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        warn!("cannot make {} private: {e}", path.display());
    }
    info!("pod registrations on {}", path.display());
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                warn!("accepting a pod registration: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut line = String::new();
            // One short line, sent at once.
            let mut reader = BufReader::new(r.take(4096));
            let read = reader.read_line(&mut line);
            if !matches!(tokio::time::timeout(Duration::from_secs(5), read).await, Ok(Ok(_))) {
                return;
            }
            let answer = match parse_registration(&line) {
                Ok((key, ip)) => {
                    let (done, wait) = oneshot::channel();
                    let _ =
                        tx.send((Instant::now(), Event::Register(Registration { key, ip, done, at: Instant::now() })));
                    match tokio::time::timeout(REGISTRATION_WAIT + Duration::from_millis(500), wait).await {
                        Ok(Ok(r)) => r,
                        _ => Err("the agent did not program the pod's policy in time".into()),
                    }
                }
                Err(e) => Err(e),
            };
            let reply = match answer {
                Ok(()) => serde_json::json!({"ok": true}),
                Err(e) => serde_json::json!({"error": e}),
            };
            let _ = w.write_all(format!("{reply}\n").as_bytes()).await;
        });
    }
}

fn parse_registration(line: &str) -> Result<(Key, Ipv4Addr), String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("registration is not JSON: {e}"))?;
    let text = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| format!("registration has no {k:?}"));
    let ip = text("ip")?.parse().map_err(|_| "registration ip is not an IPv4 address".to_string())?;
    Ok(((text("namespace")?, text("name")?), ip))
}

/// NetworkPolicy as the reconcile driver runs it.
struct PolicySync {
    world: World,
    /// What the last successful sync put in the kernel.
    applied: Option<State>,
    dirty: bool,
    status: Arc<crate::status::Status>,
}

impl Reconcile for PolicySync {
    type Event = Event;
    const NAME: &'static str = "policy";

    fn apply(&mut self, ev: Event) -> bool {
        self.world.apply(ev);
        self.dirty = true;
        true
    }

    fn listed(&self) -> bool {
        self.world.listed()
    }

    fn dirty(&self) -> bool {
        self.dirty
    }

    fn waiting(&self) -> bool {
        !self.world.waiting.is_empty()
    }

    fn sync(&mut self, full: bool) -> Result<String, String> {
        let cluster = self.world.cluster();
        let node = self.world.node.clone();
        let t0 = Instant::now();
        let desired = policy::plan(&cluster, &node);
        let planned = t0.elapsed();
        // A failure leaves `applied` empty: the next sync reads the kernel.
        let old = match self.applied.take().filter(|_| !full) {
            Some(s) => s,
            None => {
                ensure_base().map_err(|e| e.to_string())?;
                read_actual().map_err(|e| e.to_string())?
            }
        };
        let (objects, counts) = policy::diff(&old, &desired);
        let t1 = Instant::now();
        if !objects.is_empty() {
            nft::apply_objects(&objects).map_err(|e| e.to_string())?;
        }
        let what = format!(
            "{}{} policies, {}; {} chain(s) added, {} removed, {} set(s) added, {} removed, {} element(s) changed (plan {:.1} ms, nft {:.1} ms)",
            if full { "policy sync (full): " } else { "policy sync: " },
            cluster.policies.len(),
            desired.summary(),
            counts.chains_added,
            counts.chains_removed,
            counts.sets_added,
            counts.sets_removed,
            counts.elements_changed,
            planned.as_secs_f64() * 1e3,
            t1.elapsed().as_secs_f64() * 1e3,
        );
        let pods = self
            .world
            .pods
            .items
            .iter()
            .filter(|(_, p)| runs_on(p, &node))
            .map(|((ns, name), p)| crate::status::PodView {
                namespace: ns.clone(),
                name: name.clone(),
                ip: p.ip.map(|i| i.to_string()),
            })
            .collect();
        self.status.set_policy(self.world.policies.items.len(), (desired.ingress.len(), desired.egress.len()), pods);
        self.applied = Some(desired);
        self.dirty = false;
        Ok(if objects.is_empty() && !full { String::new() } else { what })
    }

    fn after(&mut self, ok: bool) {
        self.world.answer(ok);
    }
}

/// Runs until `stop`.
pub async fn run(
    node: String,
    client: kube::Client,
    socket: Option<PathBuf>,
    status: Arc<crate::status::Status>,
    stop: Stop,
) {
    if !std::path::Path::new(BRIDGE_NF).exists() {
        warn!(
            "{BRIDGE_NF} is missing (br_netfilter is not loaded): traffic between pods of this node crosses \
             the bridge without reaching the forward hook, so NetworkPolicy does not hold between them; \
             load it (modprobe br_netfilter) and restart the agent"
        );
    }
    let (tx, rx) = mpsc::unbounded_channel::<(Instant, Event)>();
    let _watches = [
        watch::spawn(
            Api::<Namespace>::all(client.clone()),
            |n| Some(n.metadata.labels.clone().unwrap_or_default()),
            Event::Namespace,
            tx.clone(),
        ),
        watch::spawn(Api::<Pod>::all(client.clone()), pod_of, Event::Pod, tx.clone()),
        watch::spawn(
            Api::<NetworkPolicy>::all(client),
            |np| {
                let (p, problems) = policy_of(np);
                if !problems.is_empty() {
                    let m = &np.metadata;
                    warn!(
                        "NetworkPolicy {}/{}: {}",
                        m.namespace.as_deref().unwrap_or(""),
                        m.name.as_deref().unwrap_or(""),
                        problems.join("; ")
                    );
                }
                p
            },
            Event::Policy,
            tx.clone(),
        ),
    ];
    // The socket file stays when the agent stops: while it is away, ADD fails (and is
    // retried) rather than start a pod whose policy nobody put in force.
    let _server = socket.map(|p| watch::Task::spawn(serve_registrations(p, tx)));
    let sync =
        PolicySync { world: World { node, ..World::default() }, applied: None, dirty: true, status: status.clone() };
    drive(sync, rx, status, stop).await;
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
        let mut w = World { node: "node-1".into(), ..World::default() };
        for (n, p) in pods {
            w.pods.apply(Change::Apply(key(n), Some(p)));
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
        let c = w.cluster();
        assert_eq!(ip_of(&c, "new"), Some("10.244.1.5".parse().unwrap()));
        assert_eq!(ip_of(&c, "old"), None, "the address has a new owner");
        w.answer(true);
        assert_eq!(rx.try_recv().unwrap(), Ok(()));
        // The newest registration of an address wins.
        w.pods.apply(Change::Apply(key("newer"), Some(pod("node-1", None, false))));
        let _rx = register(&mut w, "newer", "10.244.1.5");
        let c = w.cluster();
        assert_eq!((ip_of(&c, "newer"), ip_of(&c, "new")), (Some("10.244.1.5".parse().unwrap()), None));
    }

    #[test]
    fn only_running_pods_of_this_node_are_confirmed() {
        let mut w = world(vec![("elsewhere", pod("node-2", None, false)), ("done", pod("node-1", None, true))]);
        let mut a = register(&mut w, "elsewhere", "10.244.1.6");
        let mut b = register(&mut w, "done", "10.244.1.7");
        let mut c = register(&mut w, "unknown", "10.244.1.8");
        let cl = w.cluster();
        assert_eq!((ip_of(&cl, "elsewhere"), ip_of(&cl, "done")), (None, None));
        w.answer(true);
        for rx in [&mut a, &mut b, &mut c] {
            assert!(rx.try_recv().is_err(), "no answer before the pod runs here");
        }
        // The pod is bound here: the next applied state confirms it.
        w.pods.apply(Change::Apply(key("elsewhere"), Some(pod("node-1", None, false))));
        assert_eq!(ip_of(&w.cluster(), "elsewhere"), Some("10.244.1.6".parse().unwrap()));
        w.answer(true);
        assert_eq!(a.try_recv().unwrap(), Ok(()));
        // A failed apply confirms nothing.
        let _pending = register(&mut w, "elsewhere", "10.244.1.6");
        w.answer(false);
        assert_eq!(w.waiting.len(), 3);
    }
}
