//! The CNI plugin end to end, as a runtime drives it: the real `flatnet` binary executed
//! with CNI_* variables, against real kernel state, in a private network namespace.

mod common;

use common::*;
use flatnet_kernel::{Netlink, addr, link, route, sysctl};
use flatnet_model::names::host_veth_name;
use serde_json::{Value, json};
use std::time::Duration;

#[test]
fn add_wires_the_pod_and_returns_the_full_result() {
    sandboxed("add_wires_the_pod_and_returns_the_full_result", |sb| {
        let net = Net::new(sb, "1.1.0", "10.244.1.0/24").with("dns", json!({"nameservers": ["10.96.0.10"]}));
        let ns = sb.create_netns("pod-a").unwrap();
        let r = net.add(&attachment("ctr-a", &ns)).unwrap();

        assert_eq!(r["cniVersion"], "1.1.0");
        let ifaces = r["interfaces"].as_array().unwrap();
        assert_eq!(ifaces[0]["name"], "cni0");
        assert_eq!(ifaces[1]["name"], host_veth_name("ctr-a", "eth0"));
        assert_eq!(ifaces[2]["name"], "eth0");
        assert_eq!(ifaces[2]["sandbox"], ns.to_str().unwrap());
        assert_eq!(ifaces[2]["mac"], "0a:58:0a:f4:01:02");
        assert_eq!(r["ips"][0]["address"], "10.244.1.2/24");
        assert_eq!(r["ips"][0]["gateway"], "10.244.1.1");
        assert_eq!(r["ips"][0]["interface"], 2);
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");

        // Host side: bridge up with the gateway, veth on it with hairpin, forwarding on.
        let mut nl = Netlink::open().unwrap();
        let br = link::get(&mut nl, "cni0").unwrap().expect("cni0 exists");
        assert!(br.up);
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        let br_addrs: Vec<String> =
            addr::list(&mut nl, Some(br.index)).unwrap().iter().map(|a| a.1.to_string()).collect();
        assert_eq!(br_addrs, vec!["10.244.1.1/24"]);
        let veth = link::get(&mut nl, &host_veth_name("ctr-a", "eth0")).unwrap().expect("host veth");
        assert_eq!(veth.master, Some(br.index));
        assert!(veth.up);
        assert_eq!(veth.alias.as_deref(), Some("flatnet:testnet/ctr-a/eth0"));
        assert_eq!(veth.hairpin, Some(true), "hairpin mode is on");
        assert_eq!(sysctl::read("net.ipv4.ip_forward").unwrap(), "1");

        // Pod side: eth0 up with its address and MTU, lo up, default route via the gateway.
        in_netns(&ns, || {
            let mut nl = Netlink::open().unwrap();
            let eth = link::get(&mut nl, "eth0").unwrap().expect("eth0 in the pod");
            assert!(eth.up);
            assert_eq!(eth.mtu, 1500, "no default route here: falls back to 1500");
            assert!(link::get(&mut nl, "lo").unwrap().unwrap().up);
            let a: Vec<String> = addr::list(&mut nl, Some(eth.index))
                .unwrap()
                .iter()
                .filter(|a| a.1.addr().is_ipv4())
                .map(|a| a.1.to_string())
                .collect();
            assert_eq!(a, vec!["10.244.1.2/24"]);
            let default =
                route::list_v4(&mut nl).unwrap().into_iter().find(|r| r.dst.prefix_len() == 0).expect("default route");
            assert_eq!(default.gateway, Some("10.244.1.1".parse().unwrap()));
            assert_eq!(default.oif, Some(eth.index));
        });
        assert_eq!(net.reserved(), vec!["10.244.1.2"]);
    });
}

#[test]
fn pods_on_the_bridge_reach_each_other_and_see_real_source_ips() {
    sandboxed("pods_on_the_bridge_reach_each_other_and_see_real_source_ips", |sb| {
        let net = Net::new(sb, "1.0.0", "10.244.1.0/24");
        let a = sb.create_netns("a").unwrap();
        let b = sb.create_netns("b").unwrap();
        net.add(&attachment("a", &a)).unwrap();
        net.add(&attachment("b", &b)).unwrap();
        let a_ip = pod_ip(&a, "eth0").unwrap().addr();
        let b_ip = pod_ip(&b, "eth0").unwrap().addr();
        let seen = tcp_probe(&a, &b, b_ip, 8080).expect("a reaches b");
        assert_eq!(seen.ip(), a_ip, "b sees a's pod IP, no NAT");
        // Pod to its gateway (the node), and hairpin back to itself.
        let seen = tcp_probe(&b, &a, a_ip, 8081).expect("b reaches a");
        assert_eq!(seen.ip(), b_ip);
    });
}

#[test]
fn every_cni_version_gets_its_own_result_shape() {
    sandboxed("every_cni_version_gets_its_own_result_shape", |sb| {
        for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
            let net = Net::new(sb, v, "10.244.1.0/24").with("mtu", json!(1400));
            let ns = sb.create_netns(&format!("v{i}")).unwrap();
            let r = net.add(&attachment(&format!("c{i}"), &ns)).unwrap();
            assert_eq!(r["cniVersion"], *v);
            let has_ip_version = r["ips"][0].get("version").is_some();
            assert_eq!(has_ip_version, v.starts_with("0."), "{v}: ips[].version");
            let has_mtu = r["interfaces"][2].get("mtu").is_some();
            assert_eq!(has_mtu, *v == "1.1.0", "{v}: interfaces[].mtu");
        }
        let net = Net::new(sb, "1.1.0", "10.244.1.0/24");
        let v = net.call("VERSION", None, &json!({"cniVersion": "1.1.0"})).unwrap();
        assert_eq!(v["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
    });
}

#[test]
fn repeated_add_keeps_the_address_and_del_is_idempotent() {
    sandboxed("repeated_add_keeps_the_address_and_del_is_idempotent", |sb| {
        let net = Net::new(sb, "1.1.0", "10.244.1.0/24");
        let ns = sb.create_netns("p").unwrap();
        let att = attachment("c1", &ns);
        net.add(&att).unwrap();
        // The spec has ADD fail when the interface exists; the live pod is untouched.
        let e = net.add(&att).unwrap_err();
        assert!(e.to_string().contains("c1/eth0 is already added"), "{e}");
        assert_eq!(pod_ip(&ns, "eth0").unwrap().to_string(), "10.244.1.2/24");
        assert_eq!(net.reserved(), vec!["10.244.1.2"]);
        assert_eq!(pod_veths().len(), 1);

        // An ADD killed after it reserved an address: the retry gets the same address.
        let pool = flatnet_model::ipam::AddressPool::new("10.244.1.0/24".parse().unwrap()).unwrap();
        let store = flatnet_cni::store::Store::new(&net.data_dir, "testnet");
        let (kept, _) = store.lock().unwrap().allocate(&pool, "c9", "eth0").unwrap();
        let ns9 = sb.create_netns("p9").unwrap();
        let r = net.add(&attachment("c9", &ns9)).unwrap();
        assert_eq!(r["ips"][0]["address"], format!("{kept}/24"));
        net.del(&attachment("c9", &ns9)).unwrap();

        net.del(&att).unwrap();
        assert!(net.reserved().is_empty(), "the address is released when DEL returns");
        assert!(pod_ip(&ns, "eth0").is_none(), "the pod no longer holds the address");
        wait_no_pod_veths();
        net.del(&att).unwrap(); // already gone
        // DEL, then ADD again at once, before the reaper ran: the pending pair is replaced.
        net.add(&att).unwrap();
        net.del(&att).unwrap();
        net.add(&att).expect("ADD right after DEL");
        assert!(pod_ip(&ns, "eth0").is_some());
        net.del(&att).unwrap();
        // DEL with a config edited since ADD, a garbled prevResult and bad CNI_ARGS.
        net.add(&att).unwrap();
        let mut edited = net.config.clone();
        edited["mtu"] = json!(5);
        edited["ipam"] = json!({"type": "host-local"});
        edited["prevResult"] = json!({"ips": "garbage"});
        let odd = flatnet_cni::exec::Attachment { args: vec![("novalue".into(), String::new())], ..att.clone() };
        net.call("DEL", Some(&odd), &edited).expect("DEL forgives what it does not need");
        assert!(net.reserved().is_empty());
        net.del(&attachment("never-added", &ns)).unwrap();
        // The netns is gone too.
        let ns2 = sb.create_netns("p2").unwrap();
        let att2 = attachment("c2", &ns2);
        net.add(&att2).unwrap();
        sb.remove_netns(&ns2).unwrap();
        net.del(&att2).unwrap();
        // And without CNI_NETNS at all (allowed for DEL): deleted inline.
        let ns3 = sb.create_netns("p3").unwrap();
        net.add(&attachment("c3", &ns3)).unwrap();
        net.del(&flatnet_cni::exec::Attachment { netns: String::new(), ..attachment("c3", &ns3) }).unwrap();
        assert!(link::get(&mut Netlink::open().unwrap(), &host_veth_name("c3", "eth0")).unwrap().is_none());
        assert!(net.reserved().is_empty());
        wait_no_pod_veths();
    });
}

#[test]
fn released_address_is_not_reused_immediately() {
    sandboxed("released_address_is_not_reused_immediately", |sb| {
        let net = Net::new(sb, "1.1.0", "10.244.1.0/24");
        let p1 = sb.create_netns("p1").unwrap();
        let p2 = sb.create_netns("p2").unwrap();
        let r1 = net.add(&attachment("c1", &p1)).unwrap();
        net.del(&attachment("c1", &p1)).unwrap();
        let r2 = net.add(&attachment("c2", &p2)).unwrap();
        assert_ne!(r1["ips"][0]["address"], r2["ips"][0]["address"]);
    });
}

#[test]
fn mtu_comes_from_config_then_subnet_file_then_default_route() {
    sandboxed("mtu_comes_from_config_then_subnet_file_then_default_route", |sb| {
        // A default route over a device with MTU 1420 in the sandbox ("the host").
        std::process::Command::new("ip")
            .args(["link", "add", "uplink", "mtu", "1420", "type", "veth", "peer", "name", "uplink-peer"])
            .status()
            .unwrap();
        std::process::Command::new("ip").args(["link", "set", "uplink-peer", "up"]).status().unwrap();
        std::process::Command::new("ip").args(["link", "set", "uplink", "up"]).status().unwrap();
        std::process::Command::new("ip").args(["addr", "add", "192.0.2.10/24", "dev", "uplink"]).status().unwrap();
        std::process::Command::new("ip").args(["route", "add", "default", "via", "192.0.2.1"]).status().unwrap();
        let mtu_of = |ns: &std::path::Path| {
            in_netns(ns, || link::get(&mut Netlink::open().unwrap(), "eth0").unwrap().unwrap().mtu)
        };

        let base = Net::new(sb, "1.1.0", "10.244.1.0/24");
        let p = sb.create_netns("route").unwrap();
        base.add(&attachment("route", &p)).unwrap();
        assert_eq!(mtu_of(&p), 1420, "host default-route MTU");

        let file = sb.dir().join("subnet.env");
        std::fs::write(&file, "FLATNET_SUBNET=10.244.7.0/24\nFLATNET_MTU=1370\n").unwrap();
        let mut from_file = Net::new(sb, "1.1.0", "x");
        from_file.config.as_object_mut().unwrap().remove("subnet");
        from_file.config["subnetFile"] = json!(file);
        from_file.config["bridge"] = json!("cni7");
        let p = sb.create_netns("file").unwrap();
        let r = from_file.add(&attachment("file", &p)).unwrap();
        assert_eq!(r["ips"][0]["address"], "10.244.7.2/24", "subnet from the node subnet file");
        assert_eq!(mtu_of(&p), 1370, "MTU from the node subnet file");

        let conf = Net::new(sb, "1.1.0", "10.244.1.0/24").with("mtu", json!(1300));
        let p = sb.create_netns("conf").unwrap();
        conf.add(&attachment("conf", &p)).unwrap();
        assert_eq!(mtu_of(&p), 1300, "MTU from the config wins");
    });
}

#[test]
fn extra_routes_from_config_are_installed() {
    sandboxed("extra_routes_from_config_are_installed", |sb| {
        let net = Net::new(sb, "1.1.0", "10.244.1.0/24").with("routes", json!([{"dst": "10.96.0.0/12"}]));
        let ns = sb.create_netns("p").unwrap();
        let r = net.add(&attachment("c", &ns)).unwrap();
        assert_eq!(r["routes"][1], json!({"dst": "10.96.0.0/12", "gw": "10.244.1.1"}));
        let routes = in_netns(&ns, || route::list_v4(&mut Netlink::open().unwrap()).unwrap());
        assert!(routes.iter().any(|r| r.dst.to_string() == "10.96.0.0/12"), "{routes:?}");
    });
}

#[test]
fn check_passes_then_names_what_drifted() {
    sandboxed("check_passes_then_names_what_drifted", |sb| {
        let net = Net::new(sb, "1.1.0", "10.244.1.0/24");
        let ns = sb.create_netns("p").unwrap();
        let att = attachment("c", &ns);
        let prev = net.add(&att).unwrap();
        net.check(&att, &prev).expect("fresh attachment checks out");

        // A route removed behind flatnet's back.
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["ip", "route", "del", "default"])
            .status()
            .unwrap();
        let e = net.check(&att, &prev).unwrap_err();
        assert!(e.to_string().contains("route 0.0.0.0/0 via 10.244.1.1 is missing"), "{e}");

        // The address removed.
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["ip", "addr", "flush", "dev", "eth0"])
            .status()
            .unwrap();
        let e = net.check(&att, &prev).unwrap_err();
        assert!(e.to_string().contains("does not have address 10.244.1.2/24"), "{e}");

        // The host end gone.
        link::delete(&mut Netlink::open().unwrap(), &host_veth_name("c", "eth0")).unwrap();
        let e = net.check(&att, &prev).unwrap_err();
        assert!(e.to_string().contains("is missing"), "{e}");

        // Unknown container: code 3. CHECK before 0.4.0: code 1.
        let e = net.check(&attachment("other", &ns), &prev).unwrap_err();
        assert_eq!(e.code(), Some(3), "{e}");
        let old = Net::new(sb, "0.3.1", "10.244.1.0/24");
        assert_eq!(old.check(&att, &prev).unwrap_err().code(), Some(1));
    });
}

#[test]
fn gc_releases_what_is_not_valid_and_removes_leaked_veths() {
    sandboxed("gc_releases_what_is_not_valid_and_removes_leaked_veths", |sb| {
        let net = Net::new(sb, "1.1.0", "10.244.1.0/24");
        let nss: Vec<_> = (0..3).map(|i| sb.create_netns(&format!("p{i}")).unwrap()).collect();
        for (i, ns) in nss.iter().enumerate() {
            net.add(&attachment(&format!("c{i}"), ns)).unwrap();
        }
        // c2's DEL was killed after it released the address but before the veth was
        // torn down: a veth with no reservation.
        let store = net.data_dir.join("testnet");
        let c2_ip = std::fs::read_to_string(store.join("attachments").join("c2:eth0")).unwrap();
        std::fs::remove_file(store.join("ips").join(c2_ip.trim())).unwrap();
        assert_eq!(pod_veths().len(), 3);
        assert_eq!(net.reserved().len(), 2);

        let mut gc = net.config.clone();
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
        net.call("GC", None, &gc).unwrap();
        assert_eq!(net.reserved().len(), 1);
        assert_eq!(pod_ip(&nss[1], "eth0").unwrap().to_string(), net.reserved()[0].clone() + "/24");
        let left: Vec<_> = pod_veths().into_iter().map(|l| l.alias.unwrap()).collect();
        assert_eq!(left, vec!["flatnet:testnet/c1/eth0"]);

        // Another network on the same bridge: GC of this one leaves its ports alone.
        let other = Net::new(sb, "1.1.0", "10.244.1.0/24")
            .with("name", json!("other"))
            .with("dataDir", json!(sb.dir().join("other")));
        let pod_o = sb.create_netns("other-pod").unwrap();
        other.add(&attachment("o1", &pod_o)).unwrap();
        net.call("GC", None, &gc).unwrap();
        assert!(pod_veths().iter().any(|l| l.alias.as_deref() == Some("flatnet:other/o1/eth0")));

        // A runtime with no pods left sends null: everything of this network goes.
        let mut none = net.config.clone();
        none["cni.dev/valid-attachments"] = Value::Null;
        net.call("GC", None, &none).unwrap();
        assert!(net.reserved().is_empty());
        let left: Vec<_> = pod_veths().into_iter().map(|l| l.alias.unwrap()).collect();
        assert_eq!(left, vec!["flatnet:other/o1/eth0"]);
        net.add(&attachment("c1", &nss[1])).unwrap();

        // GC before 1.1.0 is refused.
        let mut old = gc.clone();
        old["cniVersion"] = json!("1.0.0");
        assert_eq!(net.call("GC", None, &old).unwrap_err().code(), Some(1));
        // GC without the list is refused, and releases nothing.
        let mut bare = net.config.clone();
        bare.as_object_mut().unwrap().remove("cni.dev/valid-attachments");
        assert_eq!(net.call("GC", None, &bare).unwrap_err().code(), Some(7));
        assert_eq!(net.reserved().len(), 1);
    });
}

#[test]
fn status_is_ready_only_with_a_subnet_and_a_writable_store() {
    sandboxed("status_is_ready_only_with_a_subnet_and_a_writable_store", |sb| {
        let net = Net::new(sb, "1.1.0", "10.244.1.0/24");
        net.call("STATUS", None, &net.config).expect("ready");

        let mut no_subnet = net.config.clone();
        no_subnet.as_object_mut().unwrap().remove("subnet");
        no_subnet["subnetFile"] = json!(sb.dir().join("absent.env"));
        let e = net.call("STATUS", None, &no_subnet).unwrap_err();
        assert_eq!(e.code(), Some(50), "{e}");
        assert!(e.to_string().contains("subnet is not known"), "{e}");

        let file = sb.dir().join("a-file");
        std::fs::write(&file, "not a directory").unwrap();
        let mut bad_store = net.config.clone();
        bad_store["dataDir"] = json!(file);
        assert_eq!(net.call("STATUS", None, &bad_store).unwrap_err().code(), Some(50));

        let mut old = net.config.clone();
        old["cniVersion"] = json!("1.0.0");
        assert_eq!(net.call("STATUS", None, &old).unwrap_err().code(), Some(1));
    });
}

/// Asserts nothing was made: no pod veth, no reservation.
fn assert_nothing_left(net: &Net) {
    assert!(pod_veths().is_empty(), "a veth was left behind: {:?}", pod_veths());
    assert!(net.reserved().is_empty(), "an address was left reserved: {:?}", net.reserved());
}

#[test]
fn bad_input_gets_its_error_code_and_changes_nothing() {
    sandboxed("bad_input_gets_its_error_code_and_changes_nothing", |sb| {
        let net = Net::new(sb, "1.1.0", "10.244.1.0/24");
        let ns = sb.create_netns("p").unwrap();
        let att = attachment("c", &ns);
        let with = |k: &str, v: Value| {
            let mut c = net.config.clone();
            c[k] = v;
            c
        };
        let cases: Vec<(&str, flatnet_cni::exec::Attachment, Value, u32, &str)> = vec![
            ("unsupported version", att.clone(), with("cniVersion", json!("0.2.0")), 1, "not supported"),
            ("ipam section", att.clone(), with("ipam", json!({"type": "host-local"})), 2, "own IPAM"),
            (
                "missing netns",
                flatnet_cni::exec::Attachment { netns: String::new(), ..att.clone() },
                net.config.clone(),
                4,
                "CNI_NETNS",
            ),
            (
                "netns path absent",
                attachment("c", &sb.dir().join("no-such-ns")),
                net.config.clone(),
                4,
                "cannot be opened",
            ),
            ("netns not a netns", attachment("c", &sb.dir().join("ipam-not-ns")), net.config.clone(), 4, ""),
            (
                "a mount namespace",
                attachment("c", std::path::Path::new("/proc/self/ns/mnt")),
                net.config.clone(),
                4,
                "not a network namespace",
            ),
            (
                "ifname too long",
                flatnet_cni::exec::Attachment { ifname: "eth0-much-too-long".into(), ..att.clone() },
                net.config.clone(),
                4,
                "15 bytes",
            ),
            (
                "bad container id",
                flatnet_cni::exec::Attachment { container_id: "bad id!".into(), ..att.clone() },
                net.config.clone(),
                4,
                "CNI_CONTAINERID",
            ),
            ("subnet not a CIDR", att.clone(), with("subnet", json!("10.244.1.0")), 7, "not an IPv4 CIDR"),
            ("mtu out of range", att.clone(), with("mtu", json!(70000)), 7, "mtu"),
            ("no name", att.clone(), with("name", Value::Null), 7, ""),
            ("store not writable", att.clone(), with("dataDir", json!(sb.dir().join("ipam-not-ns"))), 5, "IPAM store"),
            (
                "subnet file not written yet",
                att.clone(),
                {
                    let mut c = net.config.clone();
                    c.as_object_mut().unwrap().remove("subnet");
                    c["subnetFile"] = json!(sb.dir().join("absent.env"));
                    c
                },
                11,
                "subnet is not known yet",
            ),
            (
                "subnet file malformed",
                att.clone(),
                {
                    let mut c = net.config.clone();
                    c.as_object_mut().unwrap().remove("subnet");
                    c["subnetFile"] = json!(sb.dir().join("ipam-not-ns"));
                    c
                },
                7,
                "FLATNET_SUBNET is missing",
            ),
        ];
        std::fs::write(sb.dir().join("ipam-not-ns"), "").unwrap();
        for (what, att, config, code, needle) in cases {
            let e = net.call("ADD", Some(&att), &config).unwrap_err();
            assert_eq!(e.code(), Some(code), "{what}: {e}");
            assert!(e.to_string().contains(needle), "{what}: {e}");
            assert_nothing_left(&net);
        }
        // Malformed JSON: code 6, as printed by the plugin itself.
        let out = std::process::Command::new(flatnet_bin())
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "c")
            .env("CNI_NETNS", &ns)
            .env("CNI_IFNAME", "eth0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b"{\"cniVersion\": ")?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(!out.status.success());
        let err: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(err["code"], 6);
        assert!(err["msg"].as_str().unwrap().contains("not valid JSON"));
        assert_eq!(err["cniVersion"], "1.1.0");
        assert_nothing_left(&net);
    });
}

#[test]
fn add_that_fails_part_way_rolls_back() {
    sandboxed("add_that_fails_part_way_rolls_back", |sb| {
        // A config route whose gateway is off-link fails after the veth exists.
        let net = Net::new(sb, "1.1.0", "10.244.1.0/24")
            .with("routes", json!([{"dst": "10.96.0.0/12", "gw": "198.51.100.1"}]));
        let ns = sb.create_netns("p").unwrap();
        let e = net.add(&attachment("c", &ns)).unwrap_err();
        assert!(e.to_string().contains("add route 10.96.0.0/12"), "{e}");
        assert_nothing_left(&net);
        assert!(
            in_netns(&ns, || link::get(&mut Netlink::open().unwrap(), "eth0").unwrap()).is_none(),
            "pod end removed"
        );

        // The pod already has an eth0 (another plugin's): clear error, nothing left.
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["ip", "link", "add", "eth0", "type", "bridge"])
            .status()
            .unwrap();
        let net = Net::new(sb, "1.1.0", "10.244.1.0/24");
        let e = net.add(&attachment("c", &ns)).unwrap_err();
        assert!(e.to_string().contains("interface eth0 already exists"), "{e}");
        assert_nothing_left(&net);
    });
}

#[test]
fn full_subnet_names_the_subnet_and_changes_nothing() {
    sandboxed("full_subnet_names_the_subnet_and_changes_nothing", |sb| {
        let net = Net::new(sb, "1.1.0", "10.244.9.0/29"); // 5 pod addresses
        for i in 0..5 {
            let ns = sb.create_netns(&format!("p{i}")).unwrap();
            net.add(&attachment(&format!("c{i}"), &ns)).unwrap();
        }
        let before = net.reserved();
        let ns = sb.create_netns("one-too-many").unwrap();
        let e = net.add(&attachment("c5", &ns)).unwrap_err();
        assert!(e.to_string().contains("subnet 10.244.9.0/29 is full"), "{e}");
        assert_eq!(net.reserved(), before);
        assert_eq!(pod_veths().len(), 5);
        assert!(in_netns(&ns, || link::get(&mut Netlink::open().unwrap(), "eth0").unwrap()).is_none());
        let e = net.call("STATUS", None, &net.config).unwrap_err();
        assert_eq!(e.code(), Some(50), "a full subnet is not ready: {e}");
    });
}

#[test]
fn del_tears_the_veth_down_in_the_background() {
    sandboxed("del_tears_the_veth_down_in_the_background", |sb| {
        let net = Net::new(sb, "1.1.0", "10.244.1.0/24");
        let nss: Vec<_> = (0..10).map(|i| sb.create_netns(&format!("p{i}")).unwrap()).collect();
        for (i, ns) in nss.iter().enumerate() {
            net.add(&attachment(&format!("c{i}"), ns)).unwrap();
        }
        for (i, ns) in nss.iter().enumerate() {
            net.del(&attachment(&format!("c{i}"), ns)).unwrap();
        }
        assert!(net.reserved().is_empty());
        eventually("the detached teardown to remove every veth", Duration::from_secs(5), || pod_veths().is_empty());
        // The pod ends went with them.
        for ns in &nss {
            assert!(in_netns(ns, || link::get(&mut Netlink::open().unwrap(), "eth0").unwrap()).is_none());
        }
    });
}

#[test]
fn add_keeps_what_an_earlier_plugin_reported() {
    sandboxed("add_keeps_what_an_earlier_plugin_reported", |sb| {
        let prev = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "net9", "mac": "02:00:00:00:00:09", "sandbox": "/x"}],
            "ips": [{"address": "192.0.2.9/24", "interface": 0}],
            "dns": {"nameservers": ["192.0.2.53"]}});
        let net = Net::new(sb, "1.0.0", "10.244.1.0/24").with("prevResult", prev);
        let ns = sb.create_netns("p").unwrap();
        let r = net.add(&attachment("c", &ns)).unwrap();
        assert_eq!(r["interfaces"][0]["name"], "net9");
        assert_eq!(r["interfaces"][3]["name"], "eth0");
        assert_eq!(r["ips"][0]["address"], "192.0.2.9/24");
        assert_eq!(r["ips"][1]["address"], "10.244.1.2/24");
        assert_eq!(r["ips"][1]["interface"], 3, "our index shifts past the earlier interfaces");
        assert_eq!(r["dns"]["nameservers"][0], "192.0.2.53");
    });
}
