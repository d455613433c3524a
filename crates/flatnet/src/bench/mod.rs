//! `flatnet bench …`: benchmarks that compare flatnet with a named reference side by
//! side in one run and report medians and ratios (the machines are shared and noisy).

mod cni;
mod lab_api;
mod stats;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// CNI ADD and DEL latency: flatnet against the reference bridge + host-local plugins.
    Cni(cni::CniBenchArgs),
    /// The lab API server: create pods and Services, watch them all arrive; objects/s and RSS.
    LabApi(lab_api::LabApiBenchArgs),
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Cni(args) => cni::run(args),
        BenchCmd::LabApi(args) => lab_api::run(args),
    }
}
