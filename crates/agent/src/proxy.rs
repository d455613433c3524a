//! The Service proxy (kube-proxy's job): watches Services and EndpointSlices, keeps a
//! compact copy of what it needs, and programs `ip flatnet` through the pure planner in
//! `flatnet_model::proxy`. A full sync (read the table, diff, one transaction) runs at
//! start, after any error, and every few minutes; otherwise each batch of watch events
//! re-plans only the Services it touched and applies the difference in one transaction.

use crate::config::AgentConfig;
use crate::supervise::{Reconcile, Stop, drive};
use flatnet_kernel::{conntrack, nf_tables, nft};
use flatnet_kube::proxy::{service_of, slice_of};
use flatnet_kube::watch::{self, Change, Store};
use flatnet_model::proxy::{self, Actual, Context, Proxier, ServiceKey, Slice};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Instant;
use tracing::{info, warn};

/// A slice's (namespace, name), and what it holds: its Service and endpoints.
type SliceKey = (String, String);
type OwnedSlice = (ServiceKey, Slice);

enum Event {
    Service(Change<ServiceKey, proxy::Service>),
    Slice(Change<SliceKey, OwnedSlice>),
}

/// The proxy's view of the cluster.
#[derive(Default)]
struct World {
    services: Store<proxy::Service>,
    slices: HashMap<ServiceKey, BTreeMap<String, Slice>>,
    /// Which Service each slice (namespace, name) belongs to.
    owners: HashMap<(String, String), ServiceKey>,
    relist_slices: Option<Vec<(SliceKey, OwnedSlice)>>,
    slices_listed: bool,
}

impl World {
    /// Removes slice `key` from wherever it was; returns its Service.
    fn remove_slice(&mut self, key: &(String, String)) -> Option<ServiceKey> {
        let owner = self.owners.remove(key)?;
        if let Some(m) = self.slices.get_mut(&owner) {
            m.remove(&key.1);
            if m.is_empty() {
                self.slices.remove(&owner);
            }
        }
        Some(owner)
    }

    fn put_slice(&mut self, key: (String, String), owner: ServiceKey, slice: Slice) {
        self.slices.entry(owner.clone()).or_default().insert(key.1.clone(), slice);
        self.owners.insert(key, owner);
    }

    /// Applies one event; returns the Services it touched, or None when it ended a
    /// re-list (everything may have changed).
    fn apply(&mut self, ev: Event) -> Option<BTreeSet<ServiceKey>> {
        let mut touched = BTreeSet::new();
        match ev {
            Event::Service(c) => {
                match &c {
                    Change::InitDone => {
                        self.services.apply(c);
                        return None;
                    }
                    Change::Apply(k, _) | Change::Delete(k) => {
                        touched.insert(k.clone());
                    }
                    Change::Init | Change::InitApply(..) => {}
                }
                self.services.apply(c);
            }
            Event::Slice(c) => match c {
                Change::Init => self.relist_slices = Some(Vec::new()),
                Change::InitApply(k, v) => {
                    if let (Some(m), Some(v)) = (self.relist_slices.as_mut(), v) {
                        m.push((k, v));
                    }
                }
                Change::InitDone => {
                    self.slices.clear();
                    self.owners.clear();
                    for (k, (owner, slice)) in self.relist_slices.take().unwrap_or_default() {
                        self.put_slice(k, owner, slice);
                    }
                    self.slices_listed = true;
                    return None;
                }
                Change::Apply(k, v) => {
                    touched.extend(self.remove_slice(&k));
                    if let Some((owner, slice)) = v {
                        touched.insert(owner.clone());
                        self.put_slice(k, owner, slice);
                    }
                }
                Change::Delete(k) => touched.extend(self.remove_slice(&k)),
            },
        }
        Some(touched)
    }

    fn plan(&self, ctx: &Context, key: &ServiceKey) -> Option<proxy::Fragment> {
        let svc = self.services.items.get(key)?;
        let slices: Vec<Slice> = self.slices.get(key).map(|m| m.values().cloned().collect()).unwrap_or_default();
        Some(proxy::plan_service(ctx, svc, &slices))
    }
}

/// Makes the base of the table (hooks, maps, sets, masquerade) as planned, when the
/// marker on it says it differs. Cheap when nothing changed: one listing of one chain.
pub fn ensure_base(cfg: &AgentConfig) -> Result<bool, nft::NftError> {
    let marker = proxy::base_marker(cfg.cluster_cidr, cfg.service_cidr);
    let comments = nf_tables::rule_comments(proxy::TABLE, "services")?;
    if comments.as_ref().and_then(|c| c.first()) == Some(&marker) {
        return Ok(false);
    }
    let base: Vec<String> =
        proxy::base_transaction(cfg.cluster_cidr, cfg.service_cidr).iter().map(|o| o.to_string()).collect();
    crate::tables::write(&base, crate::tables::proxy_sets())?;
    Ok(true)
}

/// What table `ip flatnet` holds, as a full sync reads it (chain and set names, the
/// base maps' elements), by netlink dumps.
pub fn read_actual() -> Result<Actual, nft::NftError> {
    let (chains, sets) = nf_tables::table_names(proxy::TABLE)?.unwrap_or_default();
    let shapes: HashMap<String, nf_tables::SetShape> = crate::tables::proxy_sets().into_iter().collect();
    // Each set is read when it is asked for, and made typed before the next is read: at
    // 10,000 Services a map's elements as JSON are 6 MB.
    let mut failed = None;
    let actual = Actual::from_listing(chains, sets, &mut |name| {
        let Some(shape) = shapes.get(name) else { return Vec::new() };
        nf_tables::set_elements(proxy::TABLE, name, shape)
            .unwrap_or_else(|e| {
                failed.get_or_insert(e);
                None
            })
            .unwrap_or_default()
    });
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(actual),
    }
}

/// Flushes the conntrack entries of UDP flows DNATed to endpoints that were removed.
fn flush_udp(endpoints: &BTreeSet<(Ipv4Addr, u16)>) {
    for (ip, port) in endpoints {
        match conntrack::delete_dnat_to(17, *ip, *port) {
            Ok(0) => {}
            Ok(n) => info!(
                "flushed {n} UDP conntrack entr{} to removed endpoint {ip}:{port}",
                if n == 1 { "y" } else { "ies" }
            ),
            Err(e) => warn!("could not flush UDP conntrack entries to {ip}:{port}: {e}"),
        }
    }
}

/// The proxy as the reconcile driver runs it.
struct ProxySync {
    cfg: AgentConfig,
    ctx: Context,
    world: World,
    proxier: Proxier,
    /// Services changed since the last successful sync.
    dirty: BTreeSet<ServiceKey>,
    status: std::sync::Arc<crate::status::Status>,
}

impl Reconcile for ProxySync {
    type Event = Event;
    const NAME: &'static str = "proxy";

    fn apply(&mut self, ev: Event) -> bool {
        match self.world.apply(ev) {
            Some(touched) => {
                self.dirty.extend(touched);
                true
            }
            None => false,
        }
    }

    fn listed(&self) -> bool {
        self.world.services.listed && self.world.slices_listed
    }

    fn dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    fn sync(&mut self, full: bool) -> Result<String, String> {
        let r = if full { self.full_sync() } else { self.update() };
        if full {
            // The transaction is sent and dropped; its pages go back to the kernel.
            flatnet_kernel::memory::release_free();
        }
        let (services, endpoints) = self.proxier.counts();
        self.status.set_services(services, endpoints);
        r.map_err(|e| e.to_string())
    }
}

/// Applies `t` in one nf_tables transaction over netlink (nothing when it is empty),
/// then flushes the UDP flows of removed endpoints; returns how long the writer took.
fn apply(t: &proxy::Transaction) -> Result<nf_tables::Took, nft::NftError> {
    let took = if t.is_empty() {
        nf_tables::Took::default()
    } else {
        crate::tables::write(&t.objects, crate::tables::proxy_sets())?
    };
    flush_udp(&t.removed_udp_endpoints);
    Ok(took)
}

/// The plan of every Service, one at a time.
fn plans<'a>(world: &'a World, ctx: &'a Context) -> impl Iterator<Item = (ServiceKey, proxy::Fragment)> + 'a {
    world.services.items.keys().filter_map(|k| Some((k.clone(), world.plan(ctx, k)?)))
}

impl ProxySync {
    /// Reads the table, plans every Service, applies the difference in one transaction.
    /// Each Service's new rules are compiled as it is planned, on a second thread, so
    /// the transaction's text is never held whole.
    fn full_sync(&mut self) -> Result<String, nft::NftError> {
        let t1 = Instant::now();
        ensure_base(&self.cfg)?;
        let actual = read_actual()?;
        let read = t1.elapsed();
        let t0 = Instant::now();
        let (proxier, world, ctx) = (&mut self.proxier, &self.world, &self.ctx);
        let writer = nf_tables::Writer::new(crate::tables::proxy_sets());
        let (mut t, writer) =
            crate::tables::compiled_beside(writer, |sink| proxier.full_sync_into(&actual, plans(world, ctx), sink));
        let planned = t0.elapsed();
        let t2 = Instant::now();
        let took = match writer.commit() {
            Ok(took) => took,
            // A command the encoder does not know: rendered again, for `nft`.
            Err(nf_tables::Error::Unsupported(_)) => {
                t = self.proxier.full_sync(&actual, plans(&self.world, &self.ctx));
                crate::tables::write(&t.objects, crate::tables::proxy_sets())?
            }
            Err(e) => return Err(e.into()),
        };
        let written = t2.elapsed();
        flush_udp(&t.removed_udp_endpoints);
        self.dirty.clear();
        let (s, e) = self.proxier.counts();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        Ok(format!(
            "full sync: {s} Service(s), {e} endpoint(s); {} chain(s) added, {} removed, {} element(s) changed \
             (kernel read {:.0} ms, plan {:.0} ms, kernel write {:.0} ms: compile {:.0} ms beside the plan, \
             kernel commit {:.0} ms)",
            t.chains_added,
            t.chains_removed,
            t.elements_changed,
            ms(read),
            ms(planned),
            ms(written),
            ms(took.compile),
            ms(took.commit),
        ))
    }

    /// Re-plans the Services that changed and applies the difference. A failure leaves
    /// them for the full sync that follows.
    fn update(&mut self) -> Result<String, nft::NftError> {
        let t0 = Instant::now();
        let changes: Vec<_> = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|k| {
                let f = self.world.plan(&self.ctx, &k);
                (k, f)
            })
            .collect();
        let n = changes.len();
        let t = self.proxier.update(changes);
        let planned = t0.elapsed();
        let took = apply(&t)?;
        Ok(format!(
            "{n} Service(s) updated: {} chain(s) added, {} removed, {} element(s) changed \
             (plan {:.1} ms, kernel write {:.1} ms: {took})",
            t.chains_added,
            t.chains_removed,
            t.elements_changed,
            planned.as_secs_f64() * 1e3,
            (took.compile + took.commit).as_secs_f64() * 1e3,
        ))
    }
}

/// Runs until `stop`.
pub async fn run(cfg: AgentConfig, client: kube::Client, status: std::sync::Arc<crate::status::Status>, stop: Stop) {
    let ctx = Context { node: cfg.node_name.clone(), cluster_cidr: cfg.cluster_cidr, service_cidr: cfg.service_cidr };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Event)>();
    let _watches = [
        watch::spawn(
            Api::<Service>::all(client.clone()),
            |s| service_of(s).map(|(_, v)| v),
            Event::Service,
            tx.clone(),
        ),
        watch::spawn(Api::<EndpointSlice>::all(client), |s| slice_of(s).map(|(k, _, v)| (k, v)), Event::Slice, tx),
    ];
    let sync = ProxySync {
        cfg,
        ctx,
        world: World::default(),
        proxier: Proxier::new(),
        dirty: BTreeSet::new(),
        status: status.clone(),
    };
    drive(sync, rx, status, stop).await;
}
