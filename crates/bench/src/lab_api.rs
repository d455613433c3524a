//! The lab API server under load: create N pods and M Services through the kube client
//! (K requests in flight), while a watch on each resource waits for every object to
//! arrive. Reports objects/s acknowledged and delivered to the watches, and the server's
//! resident memory. The server is a real `flatnet lab serve` process on 127.0.0.1 with
//! its own temporary store and, in the same run, kube-apiserver on etcd (a one-node lab
//! on the upstream control plane, in a sandbox; its memory is kube-apiserver's and
//! etcd's) when `scripts/kubernetes` has built it. The pods are bound to a node that
//! does not exist, so no kubelet or scheduler works on them in either.

use super::stats::memory_kib;
use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct LabApiBenchArgs {
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    /// Create requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

pub fn run(args: LabApiBenchArgs) -> anyhow::Result<()> {
    if args.services == 0 || args.concurrency == 0 {
        bail!("--services and --concurrency must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    let server = super::api_server::ApiServer::start(dir.path())?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let embedded = rt
        .block_on(async { load(&args, server.client().await?, vec![server.pid()]).await })
        .context("the embedded API server")?;
    drop(server);
    let upstream = match (flatnet_lab::kubernetes::binaries(), flatnet_kernel::sandbox::unavailable_reason()) {
        (Err(why), _) => {
            println!("kube-apiserver is not compared: {why}");
            None
        }
        (_, Some(why)) => {
            println!("kube-apiserver is not compared: the benchmark {why}");
            None
        }
        (Ok(_), None) => Some(flatnet_kernel::sandbox::run(|_| -> anyhow::Result<Loaded> {
            let lab = super::lab_harness::BenchLab::up_with(1, "vxlan", &["--control-plane", "kubernetes"])?;
            let dir = flatnet_lab::kubernetes::components::dir(&lab.layout);
            let pids = ["kube-apiserver", "etcd"]
                .iter()
                .map(|c| Ok(std::fs::read_to_string(dir.join(format!("{c}.pid")))?.trim().parse::<u32>()?))
                .collect::<anyhow::Result<Vec<u32>>>()?;
            // A runtime of the sandbox: its threads' sockets open in the sandbox's namespace.
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(async { load(&args, flatnet_lab::lifecycle::connect::client(&lab.layout).await?, pids).await })
                .context("kube-apiserver")
        })??),
    };
    println!(
        "lab API servers: {} pods + {} Services created through the kube client, {} in flight",
        args.pods, args.services, args.concurrency
    );
    println!(
        "\n  {:<16} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "SERVER", "acked obj/s", "watched obj/s", "RSS idle MiB", "RSS after", "RSS peak"
    );
    for (name, l) in std::iter::once(("embedded", &embedded)).chain(upstream.as_ref().map(|u| ("kube-apiserver", u))) {
        println!(
            "  {name:<16} {:>12.0} {:>12.0} {:>12.1} {:>12.1} {:>12.1}",
            l.acked, l.watched, l.rss_idle, l.rss_after, l.rss_peak
        );
    }
    if let Some(u) = &upstream {
        println!(
            "  embedded ÷ kube-apiserver: acknowledged {:.2}, watched {:.2}, RSS after {:.2}",
            embedded.acked / u.acked,
            embedded.watched / u.watched,
            embedded.rss_after / u.rss_after
        );
    }
    Ok(())
}

/// What one server did: objects/s acknowledged and delivered to the watches, and memory
/// (MiB, summed over its processes).
struct Loaded {
    acked: f64,
    watched: f64,
    rss_idle: f64,
    rss_after: f64,
    rss_peak: f64,
}

fn mib(pids: &[u32], field: &str) -> f64 {
    pids.iter().map(|p| memory_kib(*p, field) as f64 / 1024.0).sum()
}

async fn load(args: &LabApiBenchArgs, client: kube::Client, pids: Vec<u32>) -> anyhow::Result<Loaded> {
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "bench"}}))?).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "bench");
    let rss_idle = mib(&pids, "VmRSS:");

    // Watches from now on, counting what arrives.
    let rv = pods.list(&ListParams::default()).await?.metadata.resource_version.unwrap_or_default();
    let wp = WatchParams::default().timeout(290);
    let pod_watch = count_added(pods.clone(), wp.clone(), rv.clone(), args.pods);
    let svc_watch = count_added(svcs.clone(), wp, rv, args.services);
    let watches = tokio::spawn(async move { tokio::join!(pod_watch, svc_watch) });

    let start = Instant::now();
    let services = futures::stream::iter(0..args.services)
        .map(|i| {
            let svcs = svcs.clone();
            async move {
                let s: Service = serde_json::from_value(json!({"metadata": {"name": format!("svc-{i}")},
                    "spec": {"selector": {"app": format!("svc-{i}")}, "ports": [{"port": 80, "targetPort": 8080}]}}))?;
                svcs.create(&PostParams::default(), &s).await.map(|_| ()).map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(args.concurrency);
    let n_services = args.services;
    let pod_creates = futures::stream::iter(0..args.pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let p: Pod = serde_json::from_value(json!({"metadata": {"name": format!("pod-{i}"), "labels": {"app": format!("svc-{}", i % n_services)}},
                    "spec": {"nodeName": "bench-nowhere", "containers": [{"name": "app", "image": "busybox:1.36", "ports": [{"containerPort": 8080}]}]}}))?;
                pods.create(&PostParams::default(), &p).await.map(|_| ()).map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(args.concurrency);
    services.chain(pod_creates).try_collect::<Vec<()>>().await?;
    let acked = start.elapsed();
    let (pods_seen, svcs_seen) =
        tokio::time::timeout(Duration::from_secs(300), watches).await.context("the watches never saw everything")??;
    let delivered = start.elapsed();
    let (pods_seen, svcs_seen) = (pods_seen?, svcs_seen?);
    if pods_seen < args.pods || svcs_seen < args.services {
        bail!("the watches saw {pods_seen} pods and {svcs_seen} Services");
    }
    let total = (args.pods + args.services) as f64;
    Ok(Loaded {
        acked: total / acked.as_secs_f64(),
        watched: total / delivered.as_secs_f64(),
        rss_idle,
        rss_after: mib(&pids, "VmRSS:"),
        rss_peak: mib(&pids, "VmHWM:"),
    })
}

/// Counts ADDED events until `want` have arrived; a watch the server ends is resumed
/// from the last resourceVersion seen, as a reflector does (kube-apiserver closes a
/// watch that falls behind).
async fn count_added<K>(api: Api<K>, wp: WatchParams, mut rv: String, want: usize) -> anyhow::Result<usize>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut seen = 0;
    let mut resumed = 0;
    while seen < want {
        let mut events = api.watch(&wp, &rv).await?.boxed();
        loop {
            match events.try_next().await? {
                Some(WatchEvent::Added(o)) => {
                    seen += 1;
                    rv = o.meta().resource_version.clone().unwrap_or(rv);
                    if seen == want {
                        break;
                    }
                }
                Some(WatchEvent::Bookmark(b)) => rv = b.metadata.resource_version,
                Some(WatchEvent::Error(e)) => bail!("watch error: {e:?}"),
                Some(_) => {}
                None => break,
            }
        }
        if seen < want {
            resumed += 1;
            if resumed > 100 {
                bail!("the watch kept ending: {seen} of {want} objects seen");
            }
        }
    }
    Ok(seen)
}
