//! `flatnet dns`: the cluster DNS server's command line.

use anyhow::Context;
use clap::Args;
use flatnet_dns::{DnsConfig, Source};
use flatnet_model::dns::ZoneConfig;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Args)]
pub struct DnsArgs {
    /// A kubeconfig; without it, the in-cluster service account (or $KUBECONFIG).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Serve a fixed list of objects (`kubectl get svc,endpointslices,pods -A -o json`)
    /// instead of watching the API.
    #[arg(long, conflicts_with = "kubeconfig")]
    from_file: Option<PathBuf>,
    /// Address for UDP and TCP.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// TTL of every answer, in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// The DNS Service's ClusterIP (the zone's name server, `ns.dns.<domain>`).
    #[arg(long, default_value = "10.96.0.10")]
    nameserver_ip: IpAddr,
    /// The resolv.conf whose nameservers get every name outside the cluster's.
    #[arg(long, default_value = "/etc/resolv.conf")]
    upstream_resolv_conf: PathBuf,
    /// Clients whose other names are looked up upstream (the pod and node ranges);
    /// everyone else is refused them. Repeat or separate with commas.
    #[arg(long, value_delimiter = ',', default_value = "10.244.0.0/16,127.0.0.0/8")]
    allow_forwarding: Vec<ipnet::IpNet>,
    /// Threads answering UDP.
    #[arg(long, default_value_t = 2)]
    udp_threads: usize,
    /// Where to serve Prometheus metrics (`/metrics`) and health (`/healthz`); "none"
    /// to serve nothing.
    #[arg(long, default_value = flatnet_dns::DEFAULT_METRICS_ADDR)]
    metrics_addr: String,
}

pub fn run(args: DnsArgs) -> anyhow::Result<()> {
    crate::agent::init_logging();
    let text = std::fs::read_to_string(&args.upstream_resolv_conf).with_context(|| {
        format!("read the upstream resolvers from {} (see --upstream-resolv-conf)", args.upstream_resolv_conf.display())
    })?;
    let mut upstreams = flatnet_dns::forward::upstreams_from_resolv_conf(&text);
    // Forwarding to ourselves would loop.
    upstreams.retain(|u| u.ip() != args.nameserver_ip && *u != args.listen);
    if upstreams.is_empty() {
        tracing::warn!(
            "{} names no other nameserver: names outside {} will get SERVFAIL",
            args.upstream_resolv_conf.display(),
            args.domain
        );
    }
    let zone = ZoneConfig { domain: args.domain, ttl: args.ttl, nameserver: Some(args.nameserver_ip) };
    zone.check()
        .map_err(|e| anyhow::anyhow!("--domain {:?}: {e} (names under it must fit in 255 bytes)", zone.domain))?;
    let cfg = DnsConfig {
        listen: args.listen,
        zone,
        upstreams,
        allow_forwarding: args.allow_forwarding,
        udp_threads: args.udp_threads,
        metrics_addr: match args.metrics_addr.as_str() {
            "none" => None,
            a => Some(a.parse().map_err(|_| anyhow::anyhow!("--metrics-addr {a:?} is not an address:port (or none)"))?),
        },
        source: match args.from_file {
            Some(f) => Source::File(f),
            None => Source::Api { kubeconfig: args.kubeconfig },
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async {
        let stop = crate::shutdown::requested()?;
        flatnet_dns::run(cfg, stop).await.map_err(anyhow::Error::from)
    })
}
