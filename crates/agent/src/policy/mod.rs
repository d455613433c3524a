//! NetworkPolicy enforcement: watches Namespaces, Pods and NetworkPolicies, plans this
//! node's policy table with `flatnet_model::policy`, and applies the difference in one
//! nftables transaction per batch of events. A full sync (read the table, diff) runs at
//! start, after an error, and every few minutes.
//!
//! The CNI plugin registers each new pod here before the runtime starts it (see
//! `flatnet_cni::register`): the answer comes once the pod's policy is in the kernel, so
//! an isolated pod never sends or receives a packet it should not.
mod registration;
mod table;
mod world;

pub use table::{Drops, drop_counters, read_actual};
pub use world::Registration;

use crate::supervise::{Reconcile, Stop, Synced, drive};
use flatnet_kube::policy::{pod_of, policy_of};
use flatnet_kube::watch;
use flatnet_model::policy::{self, State};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use table::ensure_base;
use tokio::sync::mpsc;
use tracing::warn;
use world::{Event, World, runs_on};

/// Bridged traffic reaches the `ip` forward hook only with br_netfilter (the agent sets
/// this sysctl to 1 when it exists).
const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
/// NetworkPolicy as the reconcile driver runs it.
struct PolicySync {
    world: World,
    /// Keeps what it planned, so a change is planned in proportion to what it touches.
    planner: policy::Planner,
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
        match self.sync_parts(full)? {
            Synced::Done(summary) => Ok(summary),
            Synced::Write { write, .. } => write(),
        }
    }

    /// Plans, diffs and compiles here; the kernel write is left to run while the next
    /// batch plans (a burst of policies uses two cores), unless a CNI ADD waits on it.
    fn sync_parts(&mut self, full: bool) -> Result<Synced, String> {
        let t0 = Instant::now();
        let node = self.world.node.clone();
        let (cluster, touched) = self.world.cluster();
        // A full sync also plans from nothing: nothing the planner kept outlives it.
        let desired = if full {
            self.planner = policy::Planner::new(&node);
            self.planner.plan(cluster)
        } else {
            self.planner.plan_touched(cluster, &touched)
        };
        let policies = cluster.policies.len();
        let planned = t0.elapsed();
        // A failure leaves `applied` empty: the next sync reads the kernel.
        let old = match self.applied.take().filter(|_| !full) {
            Some(s) => s,
            None => {
                ensure_base().map_err(|e| e.to_string())?;
                read_actual().map_err(|e| e.to_string())?
            }
        };
        let t_diff = Instant::now();
        let (objects, counts) = policy::diff(&old, &desired);
        let t1 = Instant::now();
        let diffed = t1 - t_diff;
        let compiled =
            (!objects.is_empty()).then(|| crate::tables::Compiled::new(objects, crate::tables::policy_sets(&old)));
        let what = format!(
            "{}{} policies, {}; {} chain(s) added, {} removed, {} set(s) added, {} removed, {} element(s) changed (plan {:.1} ms, diff {:.1} ms",
            if full { "policy sync (full): " } else { "policy sync: " },
            policies,
            desired.summary(),
            counts.chains_added,
            counts.chains_removed,
            counts.sets_added,
            counts.sets_removed,
            counts.elements_changed,
            planned.as_secs_f64() * 1e3,
            diffed.as_secs_f64() * 1e3,
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
        let Some(compiled) = compiled else {
            let took = flatnet_kernel::nf_tables::Took::default();
            return Ok(Synced::Done(if full {
                format!("{what}, kernel write 0.0 ms: {took})")
            } else {
                String::new()
            }));
        };
        let write = move || {
            let took = compiled.write().map_err(|e| e.to_string())?;
            Ok(format!("{what}, kernel write {:.1} ms: {took})", (took.compile + took.commit).as_secs_f64() * 1e3))
        };
        Ok(Synced::Write { write: Box::new(write), answers: !self.world.waiting.is_empty() })
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
    let _server = socket.map(|p| watch::Task::spawn(registration::serve_registrations(p, tx)));
    let sync = PolicySync {
        planner: policy::Planner::new(&node),
        world: World::new(node),
        applied: None,
        dirty: true,
        status: status.clone(),
    };
    drive(sync, rx, status, stop).await;
}
