//! `flatnet dns`: the cluster's DNS server (CoreDNS's job). It list/watches Services,
//! EndpointSlices and Pods, rebuilds the zone after each batch of changes and swaps it in
//! atomically; queries are answered from the current zone by the pure request path in
//! `flatnet_model::dns`, and every other name goes to the upstream resolvers.

pub mod cluster;
pub mod forward;
pub mod metrics;
pub mod server;
pub mod settings;

use arc_swap::ArcSwap;
use cluster::{Event, World};
use flatnet_kube::watch;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tracing::info;

/// Where the records come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The API server (a kubeconfig, else in-cluster).
    Api { kubeconfig: Option<PathBuf> },
    /// A fixed `kind: List` of objects, for offline runs and benchmarks.
    File(PathBuf),
}

/// Where the settings that change while the server runs come from.
#[derive(Debug, Clone)]
pub enum SettingsFrom {
    /// A directory with a file per key (a ConfigMap mounted as a volume).
    Dir(PathBuf),
    /// A ConfigMap read from the API (`namespace`, `name`); absent, the flags hold.
    ConfigMap { namespace: String, name: String, kubeconfig: Option<PathBuf> },
}

impl std::fmt::Display for SettingsFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingsFrom::Dir(d) => write!(f, "{}", d.display()),
            SettingsFrom::ConfigMap { namespace, name, .. } => write!(f, "ConfigMap {namespace}/{name}"),
        }
    }
}

/// The DNS server's metrics address: local only (CoreDNS's port).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9153";

#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    /// The domain, TTL and upstreams in force at the start.
    pub settings: settings::Settings,
    /// Where settings over the flags in `Base` come from, read again while serving.
    pub reload: Option<(SettingsFrom, settings::Base)>,
    pub udp_threads: usize,
    pub source: Source,
    /// Where to serve Prometheus metrics and health (None: nowhere).
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(String),
    #[error("read the objects in {path}: {why}")]
    Objects { path: PathBuf, why: String },
    #[error("listen on {addr}: {source} (is another DNS server there? port 53 needs root)")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

fn serial() -> u32 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_secs() as u32)
}

/// Runs until `shutdown` resolves. Nothing listens until the first zone is built, so a
/// readiness probe on the port passes only once every name can be answered.
pub async fn run(cfg: DnsConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), DnsError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Event)>();
    let mut watches = Vec::new();
    let mut world = match &cfg.source {
        Source::File(path) => {
            let bad = |why: String| DnsError::Objects { path: path.clone(), why };
            let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
            World::from_list(file).map_err(bad)?
        }
        Source::Api { kubeconfig } => {
            let client = watch::client(kubeconfig.as_deref()).await.map_err(DnsError::Client)?;
            watches = vec![
                watch::spawn(
                    Api::<Service>::all(client.clone()),
                    flatnet_kube::dns::service_of,
                    Event::Service,
                    tx.clone(),
                ),
                watch::spawn(
                    Api::<EndpointSlice>::all(client.clone()),
                    flatnet_kube::dns::slice_of,
                    Event::Slice,
                    tx.clone(),
                ),
                watch::spawn(Api::<Pod>::all(client), flatnet_kube::dns::pod_of, Event::Pod, tx),
            ];
            World::default()
        }
    };
    while !world.synced() {
        let Some((_, e)) = rx.recv().await else { break };
        world.apply(e);
    }
    let started = Instant::now();
    let mut current = cfg.settings.clone();
    let zone = world.zone(&current.zone, serial());
    let (names, records) = zone.size();
    let shared = Arc::new(server::Shared {
        zone: ArcSwap::from_pointee(zone),
        forwarder: ArcSwap::from_pointee(forward::Forwarder::new(current.upstreams.clone())),
        allow_forwarding: ArcSwap::from_pointee(current.allow_forwarding.clone()),
        metrics: Arc::new(metrics::Metrics::new(cfg.udp_threads.max(1) + 1)),
        udp_threads: cfg.udp_threads.max(1),
    });
    let metrics_task = cfg.metrics_addr.map(|a| tokio::spawn(metrics::serve(a, shared.metrics.clone())));
    let listen = |e| DnsError::Listen { addr: cfg.listen, source: e };
    let udp = std::net::UdpSocket::bind(cfg.listen).map_err(listen)?;
    server::grow_receive_buffer(&udp);
    let tcp = tokio::net::TcpListener::bind(cfg.listen).await.map_err(listen)?;
    let (jobs_tx, jobs_rx) = server::forward_queue();
    server::spawn_udp(&udp, cfg.udp_threads, shared.clone(), jobs_tx).map_err(listen)?;
    let fwd = tokio::spawn(server::run_forwarding(udp.try_clone().map_err(listen)?, shared.clone(), jobs_rx));
    let tcp = tokio::spawn(server::run_tcp(tcp, shared.clone()));
    info!(
        "flatnet dns serving {} on {} (UDP and TCP): {names} names, {records} records, built in {} ms; \
         other names go to {:?} for clients in {:?}",
        current.zone.domain,
        cfg.listen,
        started.elapsed().as_millis(),
        current.upstreams,
        current.allow_forwarding
    );
    let (reload_tx, mut reloads) = tokio::sync::mpsc::channel::<settings::Settings>(1);
    let reloader =
        cfg.reload.clone().map(|(from, base)| tokio::spawn(watch_settings(from, base, current.clone(), reload_tx)));
    tokio::pin!(shutdown);
    loop {
        let (first, mut n) = tokio::select! {
            m = rx.recv() => match m { Some((at, e)) => { world.apply(e); (at, 1) } None => { shutdown.as_mut().await; break } },
            Some(s) = reloads.recv() => {
                info!(
                    "settings changed: serving {} (TTL {} s); other names go to {:?} for clients in {:?}",
                    s.zone.domain, s.zone.ttl, s.upstreams, s.allow_forwarding
                );
                shared.forwarder.store(Arc::new(forward::Forwarder::new(s.upstreams.clone())));
                shared.allow_forwarding.store(Arc::new(s.allow_forwarding.clone()));
                current = s;
                (Instant::now(), 0)
            }
            () = &mut shutdown => break,
        };
        // The whole batch already queued, then one rebuild.
        while let Ok((_, e)) = rx.try_recv() {
            world.apply(e);
            n += 1;
        }
        let t = Instant::now();
        // Built off the runtime's threads: a zone of 10,000 Services takes milliseconds.
        let zone_cfg = current.zone.clone();
        let (back, zone) = match tokio::task::spawn_blocking(move || {
            let zone = world.zone(&zone_cfg, serial());
            (world, zone)
        })
        .await
        {
            Ok(x) => x,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        world = back;
        let (names, records) = zone.size();
        shared.zone.store(Arc::new(zone));
        info!(
            "zone rebuilt after {n} change(s): {names} names, {records} records (build {} ms, event to serving {} ms)",
            t.elapsed().as_millis(),
            first.elapsed().as_millis()
        );
    }
    drop(watches);
    reloader.iter().for_each(tokio::task::JoinHandle::abort);
    fwd.abort();
    tcp.abort();
    metrics_task.iter().for_each(tokio::task::JoinHandle::abort);
    info!("flatnet dns stopped");
    Ok(())
}

/// How often the config directory is read again (a ConfigMap volume changes within the
/// kubelet's sync period, about a minute, of an edit).
const SETTINGS_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// The overrides `from` holds now.
async fn read_overrides(from: &SettingsFrom, client: &mut Option<kube::Client>) -> Result<settings::Overrides, String> {
    match from {
        SettingsFrom::Dir(dir) => settings::read_dir(dir),
        SettingsFrom::ConfigMap { namespace, name, kubeconfig } => {
            if client.is_none() {
                *client = Some(watch::client(kubeconfig.as_deref()).await?);
            }
            let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(client.clone().expect("just made"), namespace);
            let cm = api.get_opt(name).await.map_err(|e| format!("read ConfigMap {namespace}/{name}: {e}"))?;
            Ok(settings::from_config_map(cm.as_ref().and_then(|c| c.data.as_ref())))
        }
    }
}

/// Reads the settings' source now and every [`SETTINGS_POLL`], and sends settings that
/// differ from those in force; a change that does not parse is refused and said once.
async fn watch_settings(
    from: SettingsFrom,
    base: settings::Base,
    mut current: settings::Settings,
    tx: tokio::sync::mpsc::Sender<settings::Settings>,
) {
    let mut refused: Option<String> = None;
    let mut client = None;
    let mut tick = tokio::time::interval(SETTINGS_POLL);
    loop {
        tick.tick().await;
        let next = read_overrides(&from, &mut client)
            .await
            .and_then(|o| settings::resolve(&base, &o, |p| std::fs::read_to_string(p)));
        match next {
            Ok(s) => {
                refused = None;
                if s != current {
                    current = s.clone();
                    if tx.send(s).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                if refused.as_ref() != Some(&e) {
                    tracing::warn!("the settings in {from} are refused, the ones in force stay: {e}");
                    refused = Some(e);
                }
            }
        }
    }
}
