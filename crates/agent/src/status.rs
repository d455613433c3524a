//! What the agent knows about itself, for `/status` (read by `flatnet status`) and for
//! the metrics: each reconciler's last sync, duration and error; the node's network as the
//! node reconciler last saw it; what the proxy and policy programmed; this node's pods.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The reconcilers: node network, Service proxy, NetworkPolicy.
pub const RECONCILERS: [&str; 3] = ["node", "proxy", "policy"];

/// One reconciler's record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub syncs: u64,
    pub errors: u64,
    /// Seconds since the epoch.
    pub last_sync: Option<f64>,
    pub last_success: Option<f64>,
    pub last_duration_ms: Option<f64>,
    /// The error of the last sync (or why it restarted), None once a sync succeeds.
    pub last_error: Option<String>,
    pub summary: Option<String>,
    /// Times its supervisor started it again after it died (a panic).
    #[serde(default)]
    pub restarts: u64,
    /// What it waits for from the cluster before it can sync at all (this node's Pod
    /// CIDR from the node IPAM): not ready, and not an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

impl Record {
    /// Ready: it has synced, its last sync succeeded, and it waits for nothing.
    pub fn ready(&self) -> bool {
        self.last_success.is_some() && self.last_error.is_none() && self.pending.is_none()
    }
}

/// A peer node as the node reconciler last planned it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub name: String,
    pub underlay_ip: Option<String>,
    pub pod_cidr: Option<String>,
    /// Routed; or why not.
    pub routed: bool,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub ip: Option<String>,
}

/// One BGP session as the speaker last reported it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BgpSessionView {
    pub peer: String,
    pub name: String,
    pub remote_as: u32,
    /// Idle, Connect, Active, OpenSent, OpenConfirm or Established.
    pub state: String,
    /// Seconds since the epoch of the last change of state.
    pub since: f64,
    pub prefixes_received: u64,
    pub prefixes_sent: u64,
    pub graceful_restart: bool,
    pub last_error: Option<String>,
}

/// This node's BGP speaker (backend bgp).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BgpView {
    pub local_as: u32,
    pub router_id: String,
    /// `mesh`, or the peers configured.
    pub peering: String,
    pub sessions: Vec<BgpSessionView>,
    /// The best route per prefix the speaker learned.
    #[serde(default)]
    pub routes: Vec<BgpRouteView>,
}

/// A route the speaker learned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BgpRouteView {
    pub prefix: String,
    pub next_hop: String,
    /// The peer's name.
    pub peer: String,
    pub as_path: Vec<u32>,
    /// Kept from before the peer restarted, not yet confirmed.
    pub stale: bool,
}

/// The `/status` document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub node: String,
    pub backend: String,
    pub pod_cidr: Option<String>,
    pub mtu: Option<u32>,
    pub peers: Vec<PeerView>,
    pub pods: Vec<PodView>,
    pub services: u64,
    pub endpoints: u64,
    pub policies: u64,
    /// This node's pods a NetworkPolicy isolates, for ingress and for egress.
    pub isolated_ingress: u64,
    pub isolated_egress: u64,
    pub reconcilers: std::collections::BTreeMap<String, Record>,
    /// The BGP speaker, with the bgp backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpView>,
}

pub type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn reconcile_histogram() -> Histogram {
    // 1 ms … 16 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15))
}

/// Updated once per sync by each reconciler; read by `/status` and `/metrics`.
pub struct Status {
    snapshot: Mutex<Snapshot>,
    pub durations: HistogramFamily,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Status {
    /// The status of an agent running `reconcilers` (readiness waits for each of them).
    pub fn new(node: &str, backend: &str, reconcilers: &[&str]) -> Self {
        let snapshot = Snapshot {
            node: node.into(),
            backend: backend.into(),
            reconcilers: reconcilers.iter().map(|r| (r.to_string(), Record::default())).collect(),
            ..Default::default()
        };
        Status { snapshot: Mutex::new(snapshot), durations: Family::new_with_constructor(reconcile_histogram) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Snapshot) -> T) -> T {
        f(&mut self.snapshot.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Records one sync of `reconciler`: how long it took and how it ended.
    pub fn synced(&self, reconciler: &str, took: Duration, result: Result<&str, &str>) {
        self.durations.get_or_create(&vec![("reconciler".into(), reconciler.into())]).observe(took.as_secs_f64());
        self.with(|s| {
            let r = s.reconcilers.entry(reconciler.into()).or_default();
            let t = now();
            r.syncs += 1;
            r.last_sync = Some(t);
            r.last_duration_ms = Some(took.as_secs_f64() * 1e3);
            r.pending = None;
            match result {
                Ok(summary) => {
                    r.last_success = Some(t);
                    r.last_error = None;
                    if !summary.is_empty() {
                        r.summary = Some(summary.into());
                    }
                }
                Err(e) => {
                    r.errors += 1;
                    r.last_error = Some(e.into());
                }
            }
        });
    }

    /// Records that `reconciler` waits for `what` from the cluster before it can sync.
    pub fn pending(&self, reconciler: &str, what: &str) {
        self.with(|s| s.reconcilers.entry(reconciler.into()).or_default().pending = Some(what.into()));
    }

    /// Records that `reconciler` died and is being started again (`why`): it is failing
    /// until its next sync succeeds.
    pub fn restarted(&self, reconciler: &str, why: &str) {
        self.with(|s| {
            let r = s.reconcilers.entry(reconciler.into()).or_default();
            r.restarts += 1;
            r.errors += 1;
            r.last_error = Some(why.into());
        });
    }

    /// Ok when every reconciler has synced and none is failing; else who is not ready, and why.
    pub fn ready(&self) -> Result<(), String> {
        self.with(|s| {
            let not: Vec<String> = s
                .reconcilers
                .iter()
                .filter(|(_, r)| !r.ready())
                .map(|(n, r)| {
                    format!("{n}: {}", r.pending.as_deref().or(r.last_error.as_deref()).unwrap_or("not synced yet"))
                })
                .collect();
            if not.is_empty() { Ok(()) } else { Err(not.join("; ")) }
        })
    }

    pub fn set_network(&self, pod_cidr: Option<String>, mtu: Option<u32>, peers: Vec<PeerView>) {
        self.with(|s| {
            s.pod_cidr = pod_cidr;
            s.mtu = mtu;
            s.peers = peers;
        });
    }

    pub fn set_bgp(&self, bgp: Option<BgpView>) {
        self.with(|s| s.bgp = bgp);
    }

    /// What the proxy has programmed.
    pub fn set_services(&self, services: usize, endpoints: usize) {
        self.with(|s| (s.services, s.endpoints) = (services as u64, endpoints as u64));
    }

    /// What NetworkPolicy has programmed: the policies, and this node's pods they
    /// isolate (ingress, egress), and the pods themselves.
    pub fn set_policy(&self, policies: usize, isolated: (usize, usize), mut pods: Vec<PodView>) {
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.with(|s| {
            s.policies = policies as u64;
            (s.isolated_ingress, s.isolated_egress) = (isolated.0 as u64, isolated.1 as u64);
            s.pods = pods;
        });
    }

    pub fn snapshot(&self) -> Snapshot {
        self.with(|s| s.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_sync_is_recorded_until_one_succeeds() {
        let s = Status::new("node-1", "vxlan", &RECONCILERS);
        s.synced("proxy", Duration::from_millis(3), Ok("full sync: 2 Service(s)"));
        s.synced("proxy", Duration::from_millis(5), Err("nft refused the transaction: boom"));
        let snap = s.snapshot();
        let r = &snap.reconcilers["proxy"];
        assert_eq!((r.syncs, r.errors), (2, 1));
        assert_eq!(r.last_error.as_deref(), Some("nft refused the transaction: boom"));
        assert_eq!(r.summary.as_deref(), Some("full sync: 2 Service(s)"));
        s.synced("proxy", Duration::from_millis(1), Ok(""));
        let snap = s.snapshot();
        assert_eq!(snap.reconcilers["proxy"].last_error, None);
        assert_eq!(snap.reconcilers["node"].syncs, 0);
        let text = crate::metrics::render_with(&s, Vec::new());
        assert!(text.contains("flatnet_reconcile_errors_total{reconciler=\"proxy\"} 1"), "{text}");
        assert!(text.contains("flatnet_reconcile_duration_seconds_count{reconciler=\"proxy\"} 3"), "{text}");
    }
}
