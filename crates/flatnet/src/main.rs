//! `flatnet`: one binary. Executed by a container runtime (with `CNI_COMMAND` set) it is
//! the CNI plugin; otherwise it is the command line.

mod agent;
mod cli;
mod demo;
mod dns;
mod doctor;
mod lab;
mod shutdown;
mod status;
mod trace;

/// With `--features heap-profile`, every allocation goes through dhat, which profiles
/// the agent when asked (`FLATNET_HEAP_PROFILE`, see `agent::heap_profile`).
#[cfg(feature = "heap-profile")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() {
    // The CNI path stays lean: no argument parsing, no logging set-up. A runtime runs a
    // plugin with no arguments; with some (`flatnet lab enter … -- plugin`, which then
    // runs the plugin in the node's own directories) this is a command like any other.
    if std::env::var_os("CNI_COMMAND").is_some() && std::env::args_os().len() == 1 {
        std::process::exit(flatnet_cni::main_from_env());
    }
    std::process::exit(cli::main());
}
