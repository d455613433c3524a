//! flatnet first in a conflist, followed by the reference `portmap` and `tuning`
//! plugins (Debian containernetworking-plugins): prevResult flows through the chain.

mod common;

use common::*;
use flatnet_cni::exec::ConfList;
use serde_json::{Map, json};
use std::path::Path;

fn reference_plugins_missing() -> Option<String> {
    ["portmap", "tuning"].iter().find(|p| !Path::new("/usr/lib/cni").join(p).is_file()).map(|p| {
        format!("the reference plugin /usr/lib/cni/{p} is missing (apt-get install containernetworking-plugins)")
    })
}

fn nat_rules() -> String {
    let out = std::process::Command::new("iptables").args(["-t", "nat", "-S"]).output().expect("iptables");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn flatnet_chains_with_portmap_and_tuning() {
    if let Some(why) = reference_plugins_missing() {
        eprintln!("SKIPPED flatnet_chains_with_portmap_and_tuning: {why}");
        return;
    }
    sandboxed("flatnet_chains_with_portmap_and_tuning", |sb| {
        let list = ConfList::parse(
            &json!({
                "cniVersion": "1.0.0",
                "name": "chain",
                "plugins": [
                    {"type": "flatnet", "subnet": "10.244.3.0/24", "dataDir": sb.dir().join("ipam")},
                    {"type": "portmap", "capabilities": {"portMappings": true}},
                    {"type": "tuning", "sysctl": {"net.core.somaxconn": "1234"}}
                ]
            })
            .to_string(),
        )
        .unwrap();
        let mut rc = Map::new();
        rc.insert("portMappings".into(), json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]));
        let ns = sb.create_netns("pod").unwrap();
        let att = attachment("chained", &ns);

        let result = list.add(&att, &plugin_dirs(), &rc).unwrap();
        // flatnet's result came through portmap and tuning unchanged.
        assert_eq!(result["cniVersion"], "1.0.0");
        assert_eq!(result["ips"][0]["address"], "10.244.3.2/24");
        assert_eq!(result["interfaces"][2]["name"], "eth0");
        // tuning found eth0 through prevResult and set its sysctl inside the pod.
        let somaxconn = in_netns(&ns, || std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap());
        assert_eq!(somaxconn.trim(), "1234");
        // portmap found the pod IP through prevResult and mapped the port to it.
        let rules = nat_rules();
        assert!(rules.contains("10.244.3.2:80"), "no DNAT to the pod in:\n{rules}");

        // CHECK through the chain, minus portmap: its CHECK looks for ip6tables rules an
        // IPv4-only pod never gets (containernetworking/plugins#819, in Debian's 1.1.1).
        let mut without_portmap = list.clone();
        without_portmap.plugins.retain(|p| p["type"] != "portmap");
        without_portmap.check(&att, &plugin_dirs(), &rc, &result).expect("CHECK through the chain");

        list.del(&att, &plugin_dirs(), &rc, &result).unwrap();
        assert!(!nat_rules().contains("10.244.3.2:80"), "portmap's DEL saw the result too");
        wait_no_pod_veths();
        let reserved = std::fs::read_dir(sb.dir().join("ipam/chain/ips")).unwrap().count();
        assert_eq!(reserved, 0);
    });
}
