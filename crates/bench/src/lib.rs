//! `flatnet bench …`: benchmarks that compare flatnet with a named reference side by
//! side in one run and report medians and ratios (the machines are shared and noisy).

mod api_server;
mod bgp;
mod cni;
mod control_plane;
mod dns;
mod lab_api;
mod lab_harness;
mod lab_up;
mod policy;
mod services;
mod stats;
mod throughput;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Native routing by BGP across racks: iperf3 against VXLAN as ratios to a bare veth
    /// pair, and convergence (a node lost, a Pod CIDR assigned) in medians.
    Bgp(bgp::BgpBenchArgs),
    /// The embedded control plane against the upstream one (kube-apiserver on etcd,
    /// kube-controller-manager, kube-scheduler): lab up, the demo, and memory.
    ControlPlane(control_plane::ControlPlaneBenchArgs),
    /// CNI ADD and DEL latency: flatnet against the reference bridge + host-local plugins.
    Cni(cni::CniBenchArgs),
    /// Cluster DNS against NSD with the same records: queries/s per core, p50/p99
    /// latency, memory per 1,000 objects.
    Dns(dns::DnsBenchArgs),
    /// The lab API server: create pods and Services, watch them all arrive; objects/s and RSS.
    LabApi(lab_api::LabApiBenchArgs),
    /// A fresh lab: seconds from `lab up` until N pods are Ready and reachable.
    LabUp(lab_up::LabUpBenchArgs),
    /// NetworkPolicy: 1,000 policies over 1,000 pods; time to the kernel, agent RSS, and
    /// the connection rate between two pods with no policy and with 1,000 in force.
    Policy(policy::PolicyBenchArgs),
    /// The Service proxy at 10,000 Services: connection rate against 10 Services, endpoint
    /// change latency, full sync time and agent RSS.
    Services(services::ServicesBenchArgs),
    /// iperf3 single-stream throughput: same node, VXLAN, host-gw, against a bare veth pair.
    Throughput(throughput::ThroughputBenchArgs),
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Bgp(args) => bgp::run(args),
        BenchCmd::Cni(args) => cni::run(args),
        BenchCmd::ControlPlane(args) => control_plane::run(args),
        BenchCmd::Dns(args) => dns::run(args),
        BenchCmd::LabApi(args) => lab_api::run(args),
        BenchCmd::LabUp(args) => lab_up::run(args),
        BenchCmd::Policy(args) => policy::run(args),
        BenchCmd::Services(args) => services::run(args),
        BenchCmd::Throughput(args) => throughput::run(args),
    }
}
