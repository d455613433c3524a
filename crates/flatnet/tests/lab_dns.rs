//! Cluster DNS end to end in a real 2-node lab: pods resolve Services by name through
//! the kube-dns Service (pod → DNAT → a flatnet dns pod, maybe on the other node), with
//! glibc's resolver (`getent`, `curl`) and with `dig` for every record type of the
//! spec; names outside the cluster are forwarded to the lab's upstream; answers follow
//! the API within a second.

mod common;

use common::lab::Lab;
use common::{converges, dig_rcode, rt, sandboxed};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, PostParams};
use std::time::{Duration, Instant};

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: backend}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec: {nodeName: node-1, containers: [{name: c, image: busybox, command: [sleep, "3600"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
spec: {nodeName: node-2, containers: [{name: web, image: nginx}]}
---
apiVersion: v1
kind: Service
metadata: {name: backend}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: backend, labels: {app: api}}
spec: {nodeName: node-1, containers: [{name: web, image: nginx}]}
---
apiVersion: v1
kind: Service
metadata: {name: api-svc, namespace: backend}
spec: {selector: {app: api}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec: {nodeName: node-1, hostname: db-0, subdomain: db, containers: [{name: db, image: pg, ports: [{name: sql, containerPort: 5432}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, labels: {app: db}}
spec: {nodeName: node-2, containers: [{name: db, image: pg, ports: [{name: sql, containerPort: 5432}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec: {clusterIP: None, selector: {app: db}, ports: [{name: sql, port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: www.example.com}
"#;

/// `dig` from inside `pod` (its resolv.conf: the kube-dns Service); stdout, one line per record.
fn dig(lab: &Lab, pod: &str, args: &[&str]) -> Vec<String> {
    let mut cmd = vec!["dig", "+short", "+time=2", "+tries=1"];
    cmd.extend_from_slice(args);
    let out = lab.exec(pod, &cmd);
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// The status line of a full `dig` answer (`NOERROR`, `NXDOMAIN`, …) and the answer count.
fn dig_status(lab: &Lab, pod: &str, args: &[&str]) -> (String, usize) {
    let mut cmd = vec!["dig", "+time=2", "+tries=1"];
    cmd.extend_from_slice(args);
    let text = String::from_utf8_lossy(&lab.exec(pod, &cmd).stdout).into_owned();
    let status = dig_rcode(&text);
    let answers = text
        .split("ANSWER: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(usize::MAX);
    (status, answers)
}

fn expect(lab: &Lab, what: &str, args: &[&str], want: &[&str]) {
    converges(what, Duration::from_secs(10), || {
        let got = dig(lab, "client", args);
        if got == want { Ok(()) } else { Err(format!("dig {args:?} gave {got:?}, want {want:?}")) }
    });
}

#[test]
fn pods_resolve_every_record_of_the_spec_through_the_kube_dns_service() {
    sandboxed("pods_resolve_every_record_of_the_spec_through_the_kube_dns_service", |_| {
        let lab = Lab::up(2, "vxlan");
        lab.apply(MANIFEST);
        let ips = lab.ready_ips(&["client", "web-1", "db-0", "db-1"]);
        let (client_ip, db0, db1) = (&ips[0], &ips[2], &ips[3]);
        let rt = rt();
        let client = lab.client(&rt);
        let ip_of = |ns: &str, name: &str| {
            let svc = rt.block_on(Api::<Service>::namespaced(client.clone(), ns).get(name)).unwrap();
            svc.spec.unwrap().cluster_ip.unwrap()
        };
        let (backend, api) = (ip_of("default", "backend"), ip_of("backend", "api-svc"));
        assert_eq!(ip_of("kube-system", "kube-dns"), "10.96.0.10");

        // glibc's resolver, with the search path the kubelet wrote.
        let resolv = String::from_utf8_lossy(&lab.exec("client", &["cat", "/etc/resolv.conf"]).stdout).into_owned();
        assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
        assert!(resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"), "{resolv}");
        assert!(resolv.contains("options ndots:5"), "{resolv}");
        for (name, ip) in
            [("backend", &backend), ("api-svc.backend", &api), ("kubernetes.default", &"10.96.0.1".into())]
        {
            converges(&format!("getent hosts {name}"), Duration::from_secs(10), || {
                let out = lab.exec("client", &["getent", "hosts", name]);
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if text.starts_with(&format!("{ip} ")) { Ok(()) } else { Err(format!("{text:?}")) }
            });
        }
        // The name resolves; the Service answers once its EndpointSlice has the pod (on
        // the upstream control plane a moment after the pod is Ready).
        converges("curl http://backend to reach web-1", Duration::from_secs(30), || {
            let out = lab.exec("client", &["curl", "-sS", "-m", "5", "http://backend"]);
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            if body.contains("pod=web-1") {
                Ok(())
            } else {
                Err(format!("{body}{}", String::from_utf8_lossy(&out.stderr)))
            }
        });

        // Every record type, with dig.
        expect(&lab, "A of a ClusterIP Service", &["backend.default.svc.cluster.local"], &[&backend]);
        expect(&lab, "A, any case", &["BackEnd.Default.SVC.Cluster.Local"], &[&backend]);
        let mut both = [db0.as_str(), db1.as_str()];
        both.sort();
        expect(&lab, "A of a headless Service: its endpoints", &["db.default.svc.cluster.local"], &both);
        expect(&lab, "A of a pod's hostname.subdomain", &["db-0.db.default.svc.cluster.local"], &[db0]);
        expect(
            &lab,
            "SRV of a named port",
            &["SRV", "_http._tcp.backend.default.svc.cluster.local"],
            &["0 100 80 backend.default.svc.cluster.local."],
        );
        let mut srv = [
            "0 100 5432 db-0.db.default.svc.cluster.local.".to_string(),
            format!("0 100 5432 {}.db.default.svc.cluster.local.", db1.replace('.', "-")),
        ];
        srv.sort();
        expect(
            &lab,
            "SRV of a headless Service: one per endpoint",
            &["SRV", "_sql._tcp.db.default.svc.cluster.local"],
            &[&srv[0], &srv[1]],
        );
        expect(
            &lab,
            "plain SRV",
            &["SRV", "backend.default.svc.cluster.local"],
            &["0 100 80 backend.default.svc.cluster.local."],
        );
        expect(&lab, "PTR of a ClusterIP", &["-x", &backend], &["backend.default.svc.cluster.local."]);
        expect(&lab, "PTR of a headless endpoint", &["-x", db0], &["db-0.db.default.svc.cluster.local."]);
        let pod_name = format!("{}.default.pod.cluster.local", client_ip.replace('.', "-"));
        expect(&lab, "a pod's A record", &[&pod_name], &[client_ip]);
        expect(&lab, "ExternalName", &["CNAME", "ext.default.svc.cluster.local"], &["www.example.com."]);
        // Asked for an address, the server follows the CNAME upstream, so stub resolvers
        // (glibc's does not follow a CNAME by itself) get the address too.
        expect(
            &lab,
            "ExternalName, followed",
            &["ext.default.svc.cluster.local"],
            &["203.0.113.10", "www.example.com."],
        );
        converges("getent hosts ext", Duration::from_secs(10), || {
            let text = String::from_utf8_lossy(&lab.exec("client", &["getent", "hosts", "ext"]).stdout).into_owned();
            if text.starts_with("203.0.113.10 ") { Ok(()) } else { Err(format!("{text:?}")) }
        });
        expect(&lab, "the spec version", &["TXT", "dns-version.cluster.local"], &["\"1.1.0\""]);
        expect(&lab, "over TCP", &["+tcp", "backend.default.svc.cluster.local"], &[&backend]);
        // Outside the cluster: forwarded to the lab's upstream (never off the machine).
        expect(&lab, "a forwarded name", &["www.example.com"], &["203.0.113.10"]);
        assert_eq!(dig_status(&lab, "client", &["nope.default.svc.cluster.local"]), ("NXDOMAIN".into(), 0));
        assert_eq!(dig_status(&lab, "client", &["AAAA", "backend.default.svc.cluster.local"]), ("NOERROR".into(), 0));
        assert_eq!(dig_status(&lab, "client", &["nothing.example.org"]), ("NXDOMAIN".into(), 0));

        // Each DNS pod answers, the one on the other node too.
        let dns_pods: Vec<String> = {
            let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "kube-system");
            rt.block_on(api.list(&kube::api::ListParams::default().labels("k8s-app=kube-dns")))
                .unwrap()
                .items
                .iter()
                .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                .collect()
        };
        assert_eq!(dns_pods.len(), 2);
        // On the port the pods serve (the Service maps 53 to it).
        for ip in &dns_pods {
            let at = format!("@{ip}");
            assert_eq!(
                dig(&lab, "client", &[&at, "-p", "5353", "backend.default.svc.cluster.local"]),
                std::slice::from_ref(&backend),
                "{at}"
            );
        }

        // Answers follow the API within a second: a new Service, then its deletion.
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let late: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "late"}, "spec": {"ports": [{"port": 80}]}}))
        .unwrap();
        let created = rt.block_on(services.create(&PostParams::default(), &late)).unwrap();
        let late_ip = created.spec.unwrap().cluster_ip.unwrap();
        let t = Instant::now();
        converges("the new Service resolves", Duration::from_secs(1), || {
            let got = dig(&lab, "client", &["late.default.svc.cluster.local"]);
            if got == [late_ip.clone()] { Ok(()) } else { Err(format!("{got:?}")) }
        });
        eprintln!("a new Service resolved {} ms after it was created", t.elapsed().as_millis());
        rt.block_on(services.delete("late", &DeleteParams::default())).unwrap();
        converges("the deleted Service is gone", Duration::from_secs(1), || {
            match dig_status(&lab, "client", &["late.default.svc.cluster.local"]) {
                (s, 0) if s == "NXDOMAIN" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        lab.down_and_check_clean();
    });
}
