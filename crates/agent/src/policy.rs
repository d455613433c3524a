//! NetworkPolicy enforcement: watches Namespaces, Pods and NetworkPolicies, plans this
//! node's policy table with `flatnet_model::policy`, and applies the difference in one
//! nftables transaction per batch of events. A full sync (read the table, diff) runs at
//! start, after an error, and every few minutes.
//!
//! The CNI plugin registers each new pod here before the runtime starts it (see
//! `flatnet_cni::register`): the answer comes once the pod's policy is in the kernel, so
//! an isolated pod never sends or receives a packet it should not.

use crate::watch::{self, Change, Store};
use flatnet_kernel::nft;
use flatnet_model::policy::{self, Cluster, Key, NamedPort, Namespaces, Peer, PortMatch, Proto, Rule, State};
use flatnet_model::selector::{LabelSelector, Requirement};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;
use nftables::types::NfFamily;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

const FULL_SYNC_EVERY: Duration = Duration::from_secs(300);
/// How long a registration waits for its pod to appear in the API.
const REGISTRATION_WAIT: Duration = Duration::from_secs(9);

/// A Kubernetes label selector as flatnet's; Err for an operator it does not know.
pub fn selector_of(s: &meta::LabelSelector) -> Result<LabelSelector, String> {
    let mut reqs: Vec<Requirement> =
        s.match_labels.iter().flatten().map(|(k, v)| Requirement::Equals(k.clone(), v.clone())).collect();
    for e in s.match_expressions.iter().flatten() {
        let values = || e.values.iter().flatten().cloned().collect();
        reqs.push(match e.operator.as_str() {
            "In" => Requirement::In(e.key.clone(), values()),
            "NotIn" => Requirement::NotIn(e.key.clone(), values()),
            "Exists" => Requirement::Exists(e.key.clone()),
            "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
            op => return Err(format!("matchExpressions operator {op:?} is not In, NotIn, Exists or DoesNotExist")),
        });
    }
    Ok(LabelSelector(reqs))
}

/// What policy needs of a pod: labels, its own address (not for host-network pods, nor
/// for finished ones, whose address may be someone else's now), node and named ports.
pub fn pod_of(p: &Pod) -> Option<policy::Pod> {
    let spec = p.spec.as_ref()?;
    let status = p.status.as_ref();
    let finished = status.and_then(|s| s.phase.as_deref()).is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
    let ip = status.filter(|_| spec.host_network != Some(true) && !finished).and_then(|s| {
        s.pod_ip.iter().chain(s.pod_ips.iter().flatten().map(|i| &i.ip)).find_map(|ip| ip.parse::<Ipv4Addr>().ok())
    });
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone()?,
                proto: Proto::parse(p.protocol.as_deref().unwrap_or("TCP"))?,
                port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect();
    Some(policy::Pod { labels: p.metadata.labels.clone().unwrap_or_default(), ip, node: spec.node_name.clone(), ports })
}

fn peer_of(ns: &str, p: &NetworkPolicyPeer) -> Result<Peer, String> {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err("a peer with an ipBlock may have no selector".into());
        }
        let cidr = b.cidr.parse().map_err(|_| format!("ipBlock cidr {:?} is not an IPv4 CIDR", b.cidr))?;
        let except = b
            .except
            .iter()
            .flatten()
            .map(|e| e.parse().map_err(|_| format!("ipBlock except {e:?} is not an IPv4 CIDR")))
            .collect::<Result<_, _>>()?;
        return Ok(Peer::Block { cidr, except });
    }
    let pods = p.pod_selector.as_ref().map(selector_of).transpose()?.unwrap_or_default();
    let namespaces = match &p.namespace_selector {
        Some(s) => Namespaces::Matching(selector_of(s)?),
        None if p.pod_selector.is_some() => Namespaces::Own(ns.to_string()),
        None => return Err("a peer needs a podSelector, a namespaceSelector or an ipBlock".into()),
    };
    Ok(Peer::Pods { namespaces, pods })
}

fn port_of(p: &NetworkPolicyPort) -> Result<PortMatch, String> {
    let proto = p.protocol.as_deref().unwrap_or("TCP");
    let proto = Proto::parse(proto).ok_or_else(|| format!("protocol {proto:?} is not TCP, UDP or SCTP"))?;
    let number = |n: i32| u16::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| format!("port {n} is out of range"));
    Ok(match &p.port {
        None => PortMatch::Any(proto),
        Some(IntOrString::Int(n)) => {
            let (a, b) = (number(*n)?, number(p.end_port.unwrap_or(*n))?);
            if b < a {
                return Err(format!("endPort {b} is below port {a}"));
            }
            PortMatch::Range(proto, a, b)
        }
        Some(IntOrString::String(_)) if p.end_port.is_some() => return Err("endPort needs a numeric port".into()),
        Some(IntOrString::String(name)) => PortMatch::Named(proto, name.clone()),
    })
}

/// A rule with its peers and ports; a peer or port that is invalid is left out, and a
/// rule left with none of the ones it had allows nothing (fails closed). Problems are
/// returned for the log.
fn rule_of(
    ns: &str,
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
    problems: &mut Vec<String>,
) -> Option<Rule> {
    let (peers, ports) = (peers.map_or(&[][..], Vec::as_slice), ports.map_or(&[][..], Vec::as_slice));
    let mut r = Rule::default();
    for p in peers {
        match peer_of(ns, p) {
            Ok(p) => r.peers.push(p),
            Err(e) => problems.push(e),
        }
    }
    for p in ports {
        match port_of(p) {
            Ok(p) => r.ports.push(p),
            Err(e) => problems.push(e),
        }
    }
    let emptied = (!peers.is_empty() && r.peers.is_empty()) || (!ports.is_empty() && r.ports.is_empty());
    (!emptied).then_some(r)
}

/// A NetworkPolicy with `policyTypes` applied (inferred as the API does when absent:
/// Ingress, and Egress when there are egress rules), and problems found in it.
pub fn policy_of(np: &NetworkPolicy) -> (Option<policy::Policy>, Vec<String>) {
    let ns = np.metadata.namespace.clone().unwrap_or_default();
    let Some(spec) = np.spec.as_ref() else { return (None, vec!["it has no spec".into()]) };
    let mut problems = Vec::new();
    let pod_selector = match spec.pod_selector.as_ref().map(selector_of).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => return (None, vec![format!("podSelector: {e}; the policy is ignored")]),
    };
    let types: Vec<&str> = match &spec.policy_types {
        Some(t) => t.iter().map(String::as_str).collect(),
        None if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => vec!["Ingress", "Egress"],
        None => vec!["Ingress"],
    };
    let ingress = types.contains(&"Ingress").then(|| {
        spec.ingress
            .iter()
            .flatten()
            .filter_map(|r| rule_of(&ns, r.from.as_ref(), r.ports.as_ref(), &mut problems))
            .collect()
    });
    let egress = types.contains(&"Egress").then(|| {
        spec.egress
            .iter()
            .flatten()
            .filter_map(|r| rule_of(&ns, r.to.as_ref(), r.ports.as_ref(), &mut problems))
            .collect()
    });
    (Some(policy::Policy { pod_selector, ingress, egress }), problems)
}

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

#[derive(Default)]
struct World {
    namespaces: Store<policy::Labels>,
    pods: Store<policy::Pod>,
    policies: Store<policy::Policy>,
    /// Addresses the CNI plugin gave pods whose API status may not show them yet.
    registered: HashMap<Key, Ipv4Addr>,
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
                self.registered.insert(r.key.clone(), r.ip);
                self.waiting.push(r);
            }
        }
    }

    /// The cluster as the plan reads it: a registered address stands in for the API's
    /// until the API shows it, and no other pod keeps that address.
    fn cluster(&mut self) -> Cluster {
        self.registered.retain(|k, ip| self.pods.items.get(k).is_none_or(|p| p.ip != Some(*ip)));
        let mut pods: BTreeMap<Key, policy::Pod> =
            self.pods.items.iter().map(|(k, p)| (k.clone(), p.clone())).collect();
        for (k, ip) in &self.registered {
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

    /// Answers the registrations whose pod the state just applied covers; gives up on
    /// those that waited too long for their pod to appear.
    fn answer(&mut self, ok: bool) {
        let known = |r: &Registration| self.pods.items.contains_key(&r.key);
        let (ready, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.waiting).into_iter().partition(|r| ok && known(r));
        for r in ready {
            let _ = r.done.send(Ok(()));
        }
        for r in rest {
            if r.at.elapsed() > REGISTRATION_WAIT {
                let why = format!("pod {}/{} is not in the API (or not yet listed)", r.key.0, r.key.1);
                let _ = r.done.send(Err(why));
            } else {
                self.waiting.push(r);
            }
        }
    }
}

/// Makes the table's base when its marker says it differs.
fn ensure_base() -> Result<(), nft::NftError> {
    let comments = nft::chain_rule_comments(NfFamily::IP, policy::TABLE, policy::MARKED_CHAIN)?;
    if comments.as_ref().and_then(|c| c.first()) == Some(&policy::base_marker()) {
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
    info!("pod registrations on {}", path.display());
    loop {
        let Ok((conn, _)) = listener.accept().await else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut line = String::new();
            if BufReader::new(r).read_line(&mut line).await.is_err() {
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

/// Runs until `shutdown` resolves.
pub async fn run(
    node: String,
    client: kube::Client,
    socket: Option<PathBuf>,
    stats: Arc<crate::metrics::PolicyStats>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Event)>();
    let tasks = [
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
    let server = socket.clone().map(|p| tokio::spawn(serve_registrations(p, tx)));
    tokio::pin!(shutdown);
    let mut world = World::default();
    let mut applied: Option<State> = None;
    let mut first_event: Option<Instant> = None;
    let mut last_full = Instant::now();
    let mut dirty = true;
    loop {
        let tick = tokio::time::sleep(if applied.is_none() || !world.waiting.is_empty() {
            Duration::from_millis(500)
        } else {
            FULL_SYNC_EVERY
        });
        tokio::select! {
            m = rx.recv() => {
                let Some((at, ev)) = m else { break };
                first_event.get_or_insert(at);
                world.apply(ev);
                while let Ok((_, ev)) = rx.try_recv() {
                    world.apply(ev);
                }
                dirty = true;
            }
            () = tick => {
                if last_full.elapsed() >= FULL_SYNC_EVERY { applied = None; }
            }
            () = &mut shutdown => break,
        }
        if !world.listed() {
            continue;
        }
        if !dirty && applied.is_some() {
            world.answer(true);
            continue;
        }
        let started = first_event.take().unwrap_or_else(Instant::now);
        let cluster = world.cluster();
        let full = applied.is_none();
        let previous = applied.take();
        let result = tokio::task::block_in_place(|| -> Result<(State, String), nft::NftError> {
            let t0 = Instant::now();
            let desired = policy::plan(&cluster, &node);
            let planned = t0.elapsed();
            let old = match previous {
                Some(s) => s,
                None => {
                    ensure_base()?;
                    read_actual()?
                }
            };
            let (objects, counts) = policy::diff(&old, &desired);
            let t1 = Instant::now();
            if !objects.is_empty() {
                nft::apply_objects(&objects)?;
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
            Ok((desired, if objects.is_empty() && !full { String::new() } else { what }))
        });
        match result {
            Ok((state, what)) => {
                stats.syncs.fetch_add(1, Ordering::Relaxed);
                stats.policies.store(world.policies.items.len() as u64, Ordering::Relaxed);
                stats.isolated_ingress.store(state.ingress.len() as u64, Ordering::Relaxed);
                stats.isolated_egress.store(state.egress.len() as u64, Ordering::Relaxed);
                stats.last_sync_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                applied = Some(state);
                dirty = false;
                if full {
                    last_full = Instant::now();
                }
                if !what.is_empty() {
                    info!(
                        "{what} in {:.1} ms (from the watch event to the kernel)",
                        started.elapsed().as_secs_f64() * 1e3
                    );
                }
                world.answer(true);
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!("programming NetworkPolicy failed, a full sync follows: {e}");
                world.answer(false);
            }
        }
    }
    for t in tasks {
        t.abort();
    }
    if let Some(s) = server {
        s.abort();
    }
    if let Some(p) = socket {
        let _ = std::fs::remove_file(p);
    }
}
