//! `flatnet dns`: the cluster DNS server's command line.

use clap::Args;
use flatnet_dns::{DnsConfig, SettingsFrom, Source, settings};
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
    /// A directory with a file per setting (`domain`, `ttl`, `upstream`: addresses or a
    /// resolv.conf path, `allow-forwarding`), over the flags: a ConfigMap mounted as a
    /// volume. Read again when it changes; a change that does not parse is refused.
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// A ConfigMap `NAMESPACE/NAME` with the same keys, read from the API now and every
    /// 2 s; while it is absent, the flags hold.
    #[arg(long, conflicts_with_all = ["config_dir", "from_file"])]
    config_map: Option<String>,
}

pub fn run(args: DnsArgs) -> anyhow::Result<()> {
    crate::agent::init_logging();
    let base = settings::Base {
        zone: ZoneConfig { domain: args.domain, ttl: args.ttl, nameserver: Some(args.nameserver_ip) },
        resolv_conf: args.upstream_resolv_conf,
        allow_forwarding: args.allow_forwarding,
        listen: args.listen,
    };
    let overrides = match &args.config_dir {
        Some(dir) => settings::read_dir(dir).map_err(anyhow::Error::msg)?,
        None => settings::Overrides::new(),
    };
    let current =
        settings::resolve(&base, &overrides, |p| std::fs::read_to_string(p)).map_err(|e| match &args.config_dir {
            Some(d) => anyhow::anyhow!("the settings in {}: {e}", d.display()),
            // A setting's error names it: here, as its flag.
            None if e.starts_with("read ") => anyhow::anyhow!("{e}"),
            None => anyhow::anyhow!("--{e}"),
        })?;
    if current.upstreams.is_empty() {
        tracing::warn!("no upstream nameserver: names outside {} will get SERVFAIL", current.zone.domain);
    }
    let cfg = DnsConfig {
        listen: args.listen,
        settings: current,
        reload: match (args.config_dir, args.config_map) {
            (Some(d), _) => Some((SettingsFrom::Dir(d), base)),
            (None, Some(cm)) => {
                let (namespace, name) = cm
                    .split_once('/')
                    .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
                    .ok_or_else(|| anyhow::anyhow!("--config-map {cm:?}: give it as NAMESPACE/NAME"))?;
                let kubeconfig = args.kubeconfig.clone();
                Some((SettingsFrom::ConfigMap { namespace: namespace.into(), name: name.into(), kubeconfig }, base))
            }
            (None, None) => None,
        },
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
