//! The rack routers' kernel side: each router a namespace with `eth0` on its rack's
//! bridge (192.168.R.254) and `core` on the core bridge (192.168.0.R), forwarding; the
//! underlay's extra bridges; and the control plane's route to the other racks. BIRD,
//! started by `lab up` in each router's namespace, fills in the rest.

use crate::nodes;
use crate::racks::{self, CORE_BRIDGE, Racks};
use flatnet_kernel::netns;
use flatnet_kernel::{KernelError, Netlink, addr, link, route, sysctl};
use ipnet::Ipv4Net;
use std::path::Path;

fn gone(what: &str) -> KernelError {
    KernelError::Decode { op: format!("find {what}"), msg: "the device vanished right after creation".into() }
}

/// The underlay's bridges for racks 2…N and the core (no addresses: the underlay
/// namespace must not route between racks; the routers do), and the control plane's
/// route to the other racks via rack 1's router. Idempotent.
pub fn create_segments(underlay_ns: &Path, r: Racks) -> Result<(), KernelError> {
    netns::run_in(underlay_ns, || -> Result<(), KernelError> {
        let mut nl = Netlink::open()?;
        let mut bridges: Vec<String> = (2..=r.count).map(|rack| r.bridge(rack)).collect();
        bridges.push(CORE_BRIDGE.into());
        for b in &bridges {
            if link::get(&mut nl, b)?.is_none() {
                link::create_bridge(&mut nl, b, flatnet_model::names::derived_mac(b), None)?;
            }
        }
        let lab0 = link::get(&mut nl, &r.bridge(1))?.ok_or_else(|| gone("lab0"))?;
        route::add_v4(
            &mut nl,
            "192.168.0.0/16".parse().expect("literal"),
            Some(racks::router_ip(1)),
            lab0.index,
            None,
        )?;
        Ok(())
    })?
}

/// Creates the router of `rack`, pinned at `router_ns`. Idempotent.
pub fn create(underlay_ns: &Path, router_ns: &Path, rack: usize, r: Racks) -> Result<(), KernelError> {
    let name = racks::router_name(rack);
    nodes::attach(underlay_ns, router_ns, &name, &r.bridge(rack), "eth0")?;
    nodes::attach(underlay_ns, router_ns, &format!("{name}-core"), CORE_BRIDGE, "core")?;
    netns::run_in(router_ns, || -> Result<(), KernelError> {
        let mut nl = Netlink::open()?;
        link::set_up(&mut nl, 1)?;
        sysctl::ensure("net.ipv4.ip_forward", "1")?;
        for (dev, ip) in [("eth0", racks::router_ip(rack)), ("core", racks::core_ip(rack))] {
            let l = link::get(&mut nl, dev)?.ok_or_else(|| gone(dev))?;
            addr::add_v4(&mut nl, l.index, Ipv4Net::new(ip, 24).expect("valid"))?;
            link::set_up(&mut nl, l.index)?;
        }
        // Out of the lab: rack 1's router to the control plane's side, the others to it.
        let (dev, gateway) =
            if rack == 1 { ("eth0", crate::underlay::control_plane_ip()) } else { ("core", racks::core_ip(1)) };
        let l = link::get(&mut nl, dev)?.ok_or_else(|| gone(dev))?;
        route::add_v4(&mut nl, "0.0.0.0/0".parse().expect("literal"), Some(gateway), l.index, None)?;
        Ok(())
    })?
}
