//! A real runtime: podman, with its CNI backend, runs two containers on a flatnet
//! network; they reach each other by IP, and `podman rm` leaves no veth and no address.
//! Everything podman keeps (storage, /run state, the containers' namespaces) lives in
//! the sandbox; its cgroups go under a parent this test removes.

mod common;

use common::*;
use nix::mount::{MsFlags, mount};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn missing_tools() -> Option<String> {
    common::missing_tools(&[("podman", "podman"), ("runc", "runc"), ("busybox", "busybox-static"), ("tar", "tar")])
}

struct Podman {
    root: PathBuf,
    conf: PathBuf,
    cgroup_parent: String,
}

impl Podman {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(self.root.join("storage"))
            .arg("--runroot")
            .arg(self.root.join("runroot"))
            .args(["--storage-driver", "vfs", "--runtime", "runc"])
            .args(args);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run podman");
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn run(&self, name: &str) {
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "flatnet",
            "--cgroup-parent",
            &self.cgroup_parent,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "localhost/flatnet-test:latest",
            "sleep",
            "1000",
        ]);
    }

    fn ip(&self, name: &str) -> String {
        self.ok(&["inspect", "-f", "{{.NetworkSettings.Networks.flatnet.IPAddress}}", name])
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "-f", "-a", "-t", "0"]).output();
        // The cgroups podman made for this test.
        common::remove_cgroups(&self.cgroup_parent);
    }
}

#[test]
fn podman_containers_on_flatnet_reach_each_other_and_leave_nothing() {
    if let Some(why) = missing_tools() {
        eprintln!("SKIPPED podman_containers_on_flatnet_reach_each_other_and_leave_nothing: {why}");
        return;
    }
    sandboxed("podman_containers_on_flatnet_reach_each_other_and_leave_nothing", |sb| {
        // podman's /run state and the containers' netns pins stay in the sandbox.
        mount(Some("tmpfs"), "/run", Some("tmpfs"), MsFlags::empty(), Some("mode=0755")).expect("tmpfs on /run");
        let root = sb.dir().to_path_buf();
        let rootfs = root.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).is_file()).unwrap();
        std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "ping"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tar = root.join("rootfs.tar");
        assert!(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").status().unwrap().success());

        let netd = root.join("net.d");
        std::fs::create_dir_all(&netd).unwrap();
        let data_dir = root.join("ipam");
        std::fs::write(
            netd.join("flatnet.conflist"),
            serde_json::json!({"cniVersion": "1.0.0", "name": "flatnet", "plugins": [
                {"type": "flatnet", "subnet": "10.244.5.0/24", "dataDir": data_dir}]})
            .to_string(),
        )
        .unwrap();
        let dirs: Vec<String> = plugin_dirs().iter().map(|d| format!("{:?}", d.display().to_string())).collect();
        let conf = root.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{}]\nnetwork_config_dir = {:?}\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
                dirs.join(", "),
                netd.display().to_string()
            ),
        )
        .unwrap();
        let podman =
            Podman { root: root.clone(), conf, cgroup_parent: format!("/flatnet-test-{}", std::process::id()) };
        podman.ok(&["import", tar.to_str().unwrap(), "localhost/flatnet-test:latest"]);

        podman.run("a");
        podman.run("b");
        let (a_ip, b_ip) = (podman.ip("a"), podman.ip("b"));
        assert!(a_ip.starts_with("10.244.5.") && b_ip.starts_with("10.244.5.") && a_ip != b_ip, "{a_ip} {b_ip}");
        assert_eq!(pod_veths().len(), 2);
        let reserved = std::fs::read_dir(data_dir.join("flatnet/ips")).unwrap().count();
        assert_eq!(reserved, 2);

        podman.ok(&["exec", "a", "ping", "-c", "1", "-W", "3", &b_ip]);
        podman.ok(&["exec", "b", "ping", "-c", "1", "-W", "3", &a_ip]);

        podman.ok(&["rm", "-f", "-t", "0", "a", "b"]);
        eventually("podman rm to leave no veth", Duration::from_secs(10), || pod_veths().is_empty());
        let reserved = std::fs::read_dir(data_dir.join("flatnet/ips")).unwrap().count();
        assert_eq!(reserved, 0, "podman rm left an address reserved");
    });
}
