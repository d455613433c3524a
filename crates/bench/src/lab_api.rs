//! The lab API server under load: create N pods and M Services through the kube client
//! (K requests in flight), while a watch on each resource waits for every object to
//! arrive. Reports objects/s acknowledged and delivered to the watches, and the server's
//! resident memory. The server is a real `flatnet lab serve` process on 127.0.0.1 with
//! its own temporary store.

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
    rt.block_on(load(&args, &server))
}

async fn load(args: &LabApiBenchArgs, server: &super::api_server::ApiServer) -> anyhow::Result<()> {
    let (client, pid) = (server.client().await?, server.pid());
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "bench"}}))?).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "bench");
    let rss_idle = memory_kib(pid, "VmRSS:");

    // Watches from now on, counting what arrives.
    let rv = pods.list(&ListParams::default()).await?.metadata.resource_version.unwrap_or_default();
    let wp = WatchParams::default().timeout(290);
    let pod_watch = count_added(pods.watch(&wp, &rv).await?.boxed(), args.pods);
    let svc_watch = count_added(svcs.watch(&wp, &rv).await?.boxed(), args.services);
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
                    "spec": {"containers": [{"name": "app", "image": "busybox:1.36", "ports": [{"containerPort": 8080}]}]}}))?;
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
    let total = (args.pods + args.services) as f64;

    println!(
        "lab API server: {} pods + {} Services created through the kube client, {} in flight",
        args.pods, args.services, args.concurrency
    );
    println!("  acknowledged   {:>8.2} s   {:>8.0} objects/s", acked.as_secs_f64(), total / acked.as_secs_f64());
    println!(
        "  watched        {:>8.2} s   {:>8.0} objects/s  (pods watch saw {pods_seen}, services watch saw {svcs_seen})",
        delivered.as_secs_f64(),
        total / delivered.as_secs_f64()
    );
    println!(
        "  server RSS     {:>8.1} MiB idle, {:.1} MiB after, {:.1} MiB peak",
        rss_idle as f64 / 1024.0,
        memory_kib(pid, "VmRSS:") as f64 / 1024.0,
        memory_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    Ok(())
}

/// Counts ADDED events until `want` have arrived.
async fn count_added<K>(
    mut events: futures::stream::BoxStream<'static, kube::Result<WatchEvent<K>>>,
    want: usize,
) -> anyhow::Result<usize> {
    let mut seen = 0;
    while seen < want {
        match events.try_next().await? {
            Some(WatchEvent::Added(_)) => seen += 1,
            Some(WatchEvent::Error(e)) => bail!("watch error: {e:?}"),
            Some(_) => {}
            None => bail!("the watch ended after {seen} of {want} objects"),
        }
    }
    Ok(seen)
}
