//! The agent: three reconcilers under one supervisor each (see `supervise`). The node
//! reconciler keeps every Node in memory and, on each change and every `resync`, makes
//! this node's network match the plan; errors are shown on the Node and retried with
//! back-off. Nothing is torn down when the agent stops, so a restart drops no packet.

use crate::config::AgentConfig;
use crate::dataplane::{self, DataplaneError};
use crate::supervise::{Reconcile, Stop, drive, supervise};
use flatnet_kernel::Netlink;
use flatnet_kube::node::{self, REASON_PEERS_PENDING, REASON_UP};
use flatnet_kube::watch::{self, Change, Store};
use flatnet_model::bgp::{MeshCandidate, NodeBgp, Peering};
use flatnet_model::node_network::{Backend, annotations};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot configure a Kubernetes client: {0}")]
    Client(String),
    #[error("{0}")]
    Pass(String),
}

/// How often the node pass checks the base of the proxy's table (hooks and the
/// masquerade of traffic leaving the cluster): listing a chain reads every chain name.
const BASE_CHECK_EVERY: Duration = Duration::from_secs(10);

/// Runs until `shutdown` resolves.
pub async fn run(cfg: AgentConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
    let client = client(&cfg).await?;
    let reconcilers: Vec<&str> =
        crate::status::RECONCILERS.into_iter().filter(|r| cfg.service_proxy || *r != "proxy").collect();
    let status = Arc::new(crate::status::Status::new(&cfg.node_name, &cfg.backend.to_string(), &reconcilers));
    let _metrics = cfg.metrics_addr.map(|a| watch::Task::spawn(crate::metrics::serve(a, status.clone())));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    info!(node = %cfg.node_name, backend = %cfg.backend, "flatnet agent starting");
    let (c, k, s) = (cfg.clone(), client.clone(), status.clone());
    let node =
        supervise("node", status.clone(), stop.clone(), move |stop| run_node(c.clone(), k.clone(), s.clone(), stop));
    let (c, k, s) = (cfg.clone(), client.clone(), status.clone());
    let proxy = cfg.service_proxy.then(|| {
        supervise("proxy", status.clone(), stop.clone(), move |stop| {
            crate::proxy::run(c.clone(), k.clone(), s.clone(), stop)
        })
    });
    if !cfg.service_proxy {
        info!("not the Service proxy (--service-proxy none): another proxy carries Services on this node");
    }
    let (c, k, s) = (cfg.clone(), client, status.clone());
    let policy = supervise("policy", status.clone(), stop, move |stop| {
        crate::policy::run(c.node_name.clone(), k.clone(), c.policy_socket.clone(), s.clone(), stop)
    });
    let all = tokio::spawn(async move {
        let proxy = async move {
            if let Some(p) = proxy {
                p.await;
            }
        };
        tokio::join!(node, proxy, policy);
    });
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = all.await;
    info!("flatnet agent stopped; the node's network is left as it is");
    Ok(())
}

/// What wakes the node reconciler: a Node changed, or what BGP learned did.
enum NodeEvent {
    Api(Box<Change<(String, String), Node>>),
    Bgp,
}

/// The node reconciler: a watch of every Node, driven like the others.
async fn run_node(cfg: AgentConfig, client: kube::Client, status: Arc<crate::status::Status>, stop: Stop) {
    let api: Api<Node> = Api::all(client);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, NodeEvent)>();
    let bgp_tx = tx.clone();
    let _watch = watch::spawn(api.clone(), |n: &Node| Some(n.clone()), |c| NodeEvent::Api(Box::new(c)), tx);
    let sync = NodeSync {
        bgp: crate::bgp::Bgp::new(move || {
            let _ = bgp_tx.send((Instant::now(), NodeEvent::Bgp));
        }),
        cfg,
        api,
        nodes: Store::default(),
        status: status.clone(),
        base_checked: None,
        changed: true,
        last_summary: None,
        runtime: tokio::runtime::Handle::current(),
    };
    drive(sync, rx, status, stop).await;
}

struct NodeSync {
    bgp: crate::bgp::Bgp,
    cfg: AgentConfig,
    api: Api<Node>,
    nodes: Store<Node>,
    status: Arc<crate::status::Status>,
    base_checked: Option<Instant>,
    changed: bool,
    last_summary: Option<String>,
    /// The sync runs on a blocking thread; its API calls run here.
    runtime: tokio::runtime::Handle,
}

impl Reconcile for NodeSync {
    type Event = NodeEvent;
    const NAME: &'static str = "node";

    fn apply(&mut self, ev: Self::Event) -> bool {
        if let NodeEvent::Api(ev) = ev {
            self.nodes.apply(*ev);
        }
        self.changed = true;
        true
    }

    fn listed(&self) -> bool {
        self.nodes.listed
    }

    /// A change is synced with the whole plan, like every `resync`.
    fn dirty(&self) -> bool {
        self.changed
    }

    fn resync(&self) -> Duration {
        self.cfg.resync
    }

    /// A Node change (this node registered, its podCIDR assigned) is retried at once.
    fn retry_on_change(&self) -> bool {
        true
    }

    /// This node registered, with a Pod CIDR: on an upstream control plane the node IPAM
    /// assigns it a moment after the kubelet registers the Node.
    fn pending(&self) -> Option<String> {
        match self.nodes.items.get(&(String::new(), self.cfg.node_name.clone())) {
            None => Some(format!("node {} to be registered with the API", self.cfg.node_name)),
            Some(me) if node::pod_cidr(me).is_none() => Some(format!(
                "node {}'s spec.podCIDR from the API's node IPAM (kube-controller-manager --allocate-node-cidrs)",
                self.cfg.node_name
            )),
            Some(_) => None,
        }
    }

    fn sync(&mut self, _full: bool) -> Result<String, String> {
        self.changed = false;
        let runtime = self.runtime.clone();
        let me = self.nodes.items.get(&(String::new(), self.cfg.node_name.clone()));
        let all: Vec<&Node> = self.nodes.items.values().collect();
        let result = match me {
            Some(me) => runtime.block_on(pass(&self.cfg, &self.api, me, &all, &self.status, &mut self.bgp)),
            None => Err(AgentError::Pass(format!("node {} is not registered with the API yet", self.cfg.node_name))),
        };
        let result = result.and_then(|(summary, complete)| {
            if self.base_checked.is_none_or(|t| t.elapsed() >= BASE_CHECK_EVERY) {
                let base = crate::proxy::ensure_base(&self.cfg).map_err(|e| AgentError::Pass(e.to_string()))?;
                self.base_checked = Some(Instant::now());
                if base {
                    info!(
                        "wrote the base of table ip flatnet (Service dispatch, masquerade for pod traffic leaving {})",
                        self.cfg.cluster_cidr
                    );
                }
            }
            Ok((summary, complete))
        });
        if let Some(me) = me {
            // Up with every peer routed, or up with some peers still missing what they need.
            let (unavailable, reason, text) = match &result {
                Ok((summary, true)) => (false, REASON_UP, summary.clone()),
                Ok((summary, false)) => (false, REASON_PEERS_PENDING, summary.clone()),
                Err(e) => (true, "FlatnetNotReady", e.to_string()),
            };
            runtime.block_on(report(&self.api, me, unavailable, reason, &text));
        }
        // Logged (and shown) when it changes, not every second.
        match result {
            Ok((summary, _)) if self.last_summary.as_ref() == Some(&summary) => Ok(String::new()),
            Ok((summary, _)) => {
                self.last_summary = Some(summary.clone());
                Ok(summary)
            }
            Err(e) => {
                self.last_summary = None;
                Err(e.to_string())
            }
        }
    }
}

async fn client(cfg: &AgentConfig) -> Result<kube::Client, AgentError> {
    watch::client(cfg.kubeconfig.as_deref()).await.map_err(AgentError::Client)
}

/// One reconcile pass; returns a one-line summary and whether every peer is routed.
async fn pass(
    cfg: &AgentConfig,
    api: &Api<Node>,
    me: &Node,
    all: &[&Node],
    status: &crate::status::Status,
    bgp: &mut crate::bgp::Bgp,
) -> Result<(String, bool), AgentError> {
    let (internal_ip, iface) = (node::internal_ip(me), cfg.underlay_iface.clone());
    let underlay = blocking(move |nl| dataplane::find_underlay(nl, iface.as_deref(), internal_ip)).await?;
    // The node's BGP settings are checked before anything is published or changed.
    let bgp_settings = (cfg.backend == Backend::Bgp)
        .then(|| {
            let none = std::collections::BTreeMap::new();
            NodeBgp::from_annotations(me.metadata.annotations.as_ref().unwrap_or(&none), &cfg.bgp)
        })
        .transpose()
        .map_err(|e| AgentError::Pass(format!("BGP settings refused, nothing changed: {e}")))?;
    let mut want = desired_annotations(cfg, underlay.addr.addr());
    if let Some(b) = &bgp_settings {
        want.insert(annotations::BGP_AS, b.local_as.to_string());
        want.insert(annotations::BGP_PEERS, b.peering.to_string());
        want.insert(annotations::BGP_ROUTER_ID, underlay.addr.addr().to_string());
    }
    if let Some(patch) = node::annotation_patch(me, &want) {
        api.patch(&cfg.node_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| AgentError::Pass(format!("publish this node's annotations: {e}")))?;
        info!("published {}", want.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
    }
    let pod_cidr = node::pod_cidr(me).ok_or_else(|| {
        AgentError::Pass(format!(
            "node {} has no spec.podCIDR: the API's node IPAM (kube-controller-manager --allocate-node-cidrs) must assign one",
            cfg.node_name
        ))
    })?;
    let mtu = dataplane::pod_mtu(cfg.backend, &underlay, cfg.mtu).map_err(|e| AgentError::Pass(e.to_string()))?;
    write_subnet_file(cfg, pod_cidr, mtu)?;
    let peers: Vec<_> = all.iter().map(|n| node::peer(n)).collect();
    let routes = match &bgp_settings {
        Some(settings) => {
            let peering = match &settings.peering {
                Peering::Mesh => {
                    let none = std::collections::BTreeMap::new();
                    let candidates: Vec<MeshCandidate<'_>> = peers
                        .iter()
                        .zip(all)
                        .map(|(peer, n)| MeshCandidate {
                            peer,
                            annotations: n.metadata.annotations.as_ref().unwrap_or(&none),
                        })
                        .collect();
                    flatnet_model::bgp::mesh_peers(&cfg.node_name, &candidates)
                }
                Peering::Peers(p) => p.clone(),
            };
            // Read only when the speaker is about to start, not on every pass.
            let restarting = !bgp.runs_as(settings.local_as, underlay.addr.addr())
                && blocking(|nl| {
                    Ok(flatnet_kernel::route::list_owned(nl)?
                        .iter()
                        .any(|r| r.protocol == flatnet_kernel::route::FLATNET_BGP_PROTOCOL))
                })
                .await?;
            let session = crate::bgp::Session {
                router_id: underlay.addr.addr(),
                pod_cidr,
                hold_time: cfg.bgp_hold_time,
                port: cfg.bgp_port,
                restarting,
            };
            let routes = bgp.sync(settings, &peering, &session).await.map_err(AgentError::Pass)?;
            status.set_bgp(bgp.view(settings));
            routes
        }
        None => dataplane::BgpRoutes::default(),
    };
    let views = peers.clone();
    let cfg2 = cfg.clone();
    let outcome = blocking(move |nl| dataplane::reconcile(nl, &cfg2, &underlay, pod_cidr, &peers, &routes)).await?;
    for c in &outcome.changes {
        info!("{c}");
    }
    status.set_network(
        Some(pod_cidr.to_string()),
        Some(mtu),
        views
            .into_iter()
            .filter(|p| p.name != cfg.node_name)
            .map(|p| {
                let reason = outcome.skipped.iter().find(|s| s.node == p.name).map(|s| s.reason.clone());
                crate::status::PeerView {
                    routed: reason.is_none(),
                    reason,
                    underlay_ip: p.underlay_ip.map(|i| i.to_string()),
                    pod_cidr: p.pod_cidr.map(|c| c.to_string()),
                    name: p.name,
                }
            })
            .collect(),
    );
    let mut summary = format!("{}: {} peer route(s), pod CIDR {pod_cidr}, MTU {mtu}", cfg.backend, outcome.peers);
    if !outcome.skipped.is_empty() {
        let list: Vec<String> = outcome.skipped.iter().map(ToString::to_string).collect();
        summary.push_str(&format!("; not routed: {}", list.join("; ")));
    }
    Ok((summary, outcome.skipped.is_empty()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce(&mut Netlink) -> Result<T, DataplaneError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(move || {
        let mut nl = Netlink::open()?;
        f(&mut nl)
    })
    .await
    .map_err(|e| AgentError::Pass(format!("reconcile task failed: {e}")))?
    .map_err(|e| AgentError::Pass(e.to_string()))
}

/// Writes the subnet file when its content differs (the CNI plugin reads it on every ADD).
fn write_subnet_file(cfg: &AgentConfig, subnet: ipnet::Ipv4Net, mtu: u32) -> Result<(), AgentError> {
    let text =
        flatnet_model::subnet_file::NodeSubnet { network: Some(cfg.cluster_cidr), subnet, mtu: Some(mtu) }.render();
    if std::fs::read_to_string(&cfg.subnet_file).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let fail = |e: std::io::Error| AgentError::Pass(format!("write {}: {e}", cfg.subnet_file.display()));
    if let Some(dir) = cfg.subnet_file.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = cfg.subnet_file.with_extension("tmp");
    std::fs::write(&tmp, &text).map_err(fail)?;
    std::fs::rename(&tmp, &cfg.subnet_file).map_err(fail)?;
    info!("wrote {}: subnet {subnet}, MTU {mtu}", cfg.subnet_file.display());
    Ok(())
}

/// Sets the NetworkUnavailable condition when its status or message changed.
async fn report(api: &Api<Node>, me: &Node, unavailable: bool, reason: &str, message: &str) {
    let want = (if unavailable { "True" } else { "False" }.to_string(), reason.to_string(), message.to_string());
    if node::network_condition(me).as_ref() == Some(&want) {
        return;
    }
    let name = me.metadata.name.clone().unwrap_or_default();
    let transition = node::network_condition(me).is_none_or(|(status, _, _)| status != want.0);
    let patch = node::condition_patch(unavailable, reason, message, transition);
    if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
        warn!("could not report the network condition on node {name}: {e}");
    }
}

/// The annotations this node must carry.
pub fn desired_annotations(
    cfg: &AgentConfig,
    underlay_ip: std::net::Ipv4Addr,
) -> std::collections::BTreeMap<&'static str, String> {
    let mut want = std::collections::BTreeMap::from([
        (flatnet_model::node_network::annotations::BACKEND, cfg.backend.to_string()),
        (flatnet_model::node_network::annotations::UNDERLAY_IP, underlay_ip.to_string()),
    ]);
    if cfg.backend == flatnet_model::node_network::Backend::Vxlan {
        want.insert(
            flatnet_model::node_network::annotations::VTEP_MAC,
            flatnet_model::names::format_mac(&cfg.vtep_mac()),
        );
    }
    want
}
