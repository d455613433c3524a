//! The container image real clusters run: `scripts/image` packs the flatnet binary, the
//! nft it drives and the libraries both load into an OCI archive, with no registry and
//! no daemon. podman, with storage of its own and no network, loads the archive and runs
//! flatnet and nft from it; a second build of the same binary is the same archive, byte
//! for byte; containerd imports it (`ctr images import`) and runs flatnet from it. What
//! podman and containerd keep lives in temporary directories this test removes (their
//! /run state in the sandbox), and their cgroups under parents this test removes.

mod common;

use common::*;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/image");
/// Packing a debug binary (hundreds of MB) and gzipping it takes a while on a busy machine.
const BUILD_WITHIN: Duration = Duration::from_secs(600);
const PODMAN_WITHIN: Duration = Duration::from_secs(300);

/// The name `scripts/image` gives the image by default.
fn image_name() -> String {
    format!("ghcr.io/flatnet-dev/flatnet:{VERSION}")
}

fn missing_tools() -> Option<String> {
    common::missing_tools(&[
        ("podman", "podman"),
        ("runc", "runc"),
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("nft", "nftables"),
        ("tar", "tar"),
        ("gzip", "gzip"),
        ("sha256sum", "coreutils"),
    ])
}

fn read_to_channel(mut pipe: impl Read + Send + 'static, is_stdout: bool, tx: Sender<(bool, Vec<u8>)>) {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send((is_stdout, buf));
    });
}

/// Runs `cmd` to its end within `within`; past it, kills it and says so.
fn finish_within(mut cmd: Command, within: Duration) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start {what}: {e}"))?;
    let deadline = Instant::now() + within;
    let (tx, rx) = mpsc::channel();
    read_to_channel(child.stdout.take().expect("piped stdout"), true, tx.clone());
    read_to_channel(child.stderr.take().expect("piped stderr"), false, tx);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting for {what}: {e}"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not finish within {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
        let (is_stdout, buf) =
            rx.recv_timeout(left).map_err(|_| format!("{what} exited but something kept its output open"))?;
        if is_stdout {
            stdout = buf;
        } else {
            stderr = buf;
        }
    }
    Ok(Output { status, stdout, stderr })
}

/// Runs `cmd` within `within` and returns its trimmed stdout; fails with all it printed.
fn succeeds(cmd: Command, within: Duration) -> String {
    let what = format!("{cmd:?}");
    let out = finish_within(cmd, within).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `scripts/image` on the binary under test, into `out`; returns the archive's path.
fn build_image(out: &Path, tmp: &Path) -> PathBuf {
    let mut cmd = Command::new(SCRIPT);
    cmd.env("FLATNET_BINARY", flatnet_bin())
        .env("FLATNET_IMAGE_OUT", out)
        .env("TMPDIR", tmp)
        .env_remove("FLATNET_IMAGE_NAME");
    let printed = succeeds(cmd, BUILD_WITHIN);
    let archive = out.join(format!("flatnet-{VERSION}.oci.tar"));
    assert!(archive.is_file(), "scripts/image made no {}; it printed: {printed}", archive.display());
    assert!(printed.contains(&image_name()), "scripts/image does not name the image {}: {printed}", image_name());
    archive
}

fn sha256(file: &Path) -> String {
    let mut cmd = Command::new("sha256sum");
    cmd.arg(file);
    succeeds(cmd, Duration::from_secs(120)).split_whitespace().next().unwrap_or_default().to_string()
}

/// The flatnet binary under test, run here, outside any image.
fn flatnet_here(args: &[&str]) -> String {
    let mut cmd = Command::new(flatnet_bin());
    cmd.args(args);
    succeeds(cmd, Duration::from_secs(30))
}

/// A podman whose storage, run state and temporary files are in a directory of its own.
struct Podman {
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

impl Podman {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("flatnet-image-podman-").tempdir().expect("podman's directory");
        let d = dir.path();
        for sub in ["tmp", "net.d"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[network]\nnetwork_config_dir = {:?}\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\nimage_copy_tmp_dir = {:?}\n",
                d.join("net.d").display().to_string(),
                d.join("tmp").display().to_string()
            ),
        )
        .unwrap();
        Self { dir, cgroup_parent: format!("/flatnet-image-test-{}", std::process::id()) }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("TMPDIR", d.join("tmp"))
            .arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs", "--runtime", "runc"])
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "none"])
            .args(args);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        succeeds(self.cmd(args), PODMAN_WITHIN)
    }

    /// Runs the image, without a network, with `options` before the image name and
    /// `args` after it; returns what it printed.
    fn run(&self, options: &[&str], args: &[&str]) -> String {
        let image = image_name();
        let mut all = vec![
            "run",
            "--rm",
            "--network",
            "none",
            "--cgroup-parent",
            self.cgroup_parent.as_str(),
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        all.extend_from_slice(options);
        all.push(image.as_str());
        all.extend_from_slice(args);
        self.ok(&all)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = finish_within(self.cmd(&["rm", "-a", "-f", "-t", "0"]), PODMAN_WITHIN);
        let _ = finish_within(self.cmd(&["rmi", "-a", "-f"]), PODMAN_WITHIN);
        // The cgroups podman made for this test.
        common::remove_cgroups(&self.cgroup_parent);
        // Whatever podman left mounted in its directory, deepest first; TempDir then
        // removes the files.
        unmount_under(self.dir.path());
    }
}

/// A containerd of this test's own: its root, state and socket in a temporary
/// directory, the CRI plugin off (nothing but the image store and `ctr run`).
struct Containerd {
    dir: tempfile::TempDir,
    daemon: std::process::Child,
}

impl Containerd {
    fn start() -> Self {
        let dir =
            tempfile::Builder::new().prefix("flatnet-image-containerd-").tempdir().expect("containerd's directory");
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\naddress = {:?}\n[ttrpc]\naddress = {:?}\n[debug]\naddress = \"\"\n",
            d.join("root").display().to_string(),
            d.join("state").display().to_string(),
            d.join("containerd.sock").display().to_string(),
            d.join("containerd.sock.ttrpc").display().to_string(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let me = Self { dir, daemon };
        let socket = me.dir.path().join("containerd.sock");
        eventually("containerd's socket", Duration::from_secs(30), || socket.exists());
        me
    }

    fn ok(&self, args: &[&str]) -> String {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(self.dir.path().join("containerd.sock")).args(["-n", "k8s.io"]).args(args);
        succeeds(c, PODMAN_WITHIN)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        unmount_under(self.dir.path());
    }
}

fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let mut points: Vec<&str> =
        info.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| Path::new(p).starts_with(dir)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = umount2(p, MntFlags::MNT_DETACH);
    }
}

#[test]
fn the_image_loads_into_podman_and_containerd_and_runs_flatnet_and_nft() {
    const TEST: &str = "the_image_loads_into_podman_and_containerd_and_runs_flatnet_and_nft";
    if let Some(why) = missing_tools() {
        eprintln!("SKIPPED {TEST}: {why}");
        return;
    }
    sandboxed(TEST, |_| {
        // podman's /run state (runc's, its locks, the containers' netns pins) stays in the sandbox.
        mount(Some("tmpfs"), "/run", Some("tmpfs"), MsFlags::empty(), Some("mode=0755")).expect("tmpfs on /run");
        let work = tempfile::Builder::new().prefix("flatnet-image-build-").tempdir().expect("build directory");
        let tmp = work.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();

        // The same binary, built twice: the same archive.
        let archive = build_image(&work.path().join("first"), &tmp);
        let again = build_image(&work.path().join("second"), &tmp);
        let (first_sum, second_sum) = (sha256(&archive), sha256(&again));
        assert_eq!(first_sum, second_sum, "two builds of the same binary made different archives");
        std::fs::remove_file(&again).unwrap();

        let podman = Podman::new();
        let loaded = podman.ok(&["load", "-i", archive.to_str().unwrap()]);
        assert!(loaded.contains(&image_name()), "podman load did not name the image {}: {loaded}", image_name());

        // The entrypoint is flatnet, the same binary as outside the image.
        let version = podman.run(&[], &["--version"]);
        assert!(version.split_whitespace().any(|w| w == VERSION), "flatnet --version in the image: {version}");
        assert_eq!(version, flatnet_here(&["--version"]));
        let help = podman.run(&[], &[]);
        assert!(help.contains("Usage: flatnet"), "the image's default command is not flatnet --help: {help}");

        let subnet = ["cni-config", "--subnet", "10.244.1.0/24"];
        let inside = podman.run(&["--entrypoint", "/usr/local/bin/flatnet"], &subnet);
        let inside: Value =
            serde_json::from_str(&inside).unwrap_or_else(|e| panic!("cni-config in the image: {e}: {inside}"));
        let outside: Value = serde_json::from_str(&flatnet_here(&subnet)).expect("cni-config outside the image");
        assert!(inside["cniVersion"].as_str().is_some_and(|v| !v.is_empty()), "no cniVersion: {inside}");
        assert!(outside["plugins"][0]["type"].is_string(), "cni-config outside the image: {outside}");
        assert_eq!(inside["plugins"][0]["type"], outside["plugins"][0]["type"], "{inside}");
        assert_eq!(inside["plugins"][0]["subnet"], "10.244.1.0/24", "{inside}");

        // nft runs, and with NET_ADMIN programs the container's own network namespace.
        let nft = podman.run(&["--entrypoint", "/usr/sbin/nft"], &["--version"]);
        assert!(nft.starts_with("nftables v"), "nft --version in the image: {nft}");
        let ruleset = podman.run(
            &["--entrypoint", "/usr/sbin/nft", "--cap-add", "NET_ADMIN"],
            &["add table inet flatnet_image; list tables"],
        );
        assert!(ruleset.contains("table inet flatnet_image"), "nft in the image: {ruleset}");

        let name = image_name();
        podman.ok(&["rmi", name.as_str()]);
        drop(podman);

        // containerd takes the same archive as a node's runtime would
        // (`ctr -n k8s.io images import`), and runs flatnet from it.
        let containerd = Containerd::start();
        let imported = containerd.ok(&["images", "import", "--snapshotter", "native", archive.to_str().unwrap()]);
        assert!(imported.contains(&name), "ctr images import did not name the image {name}: {imported}");
        let checked = containerd.ok(&["images", "check"]);
        assert!(checked.contains(&name) && checked.contains("complete"), "{checked}");
        let cgroup = format!("/flatnet-image-ctr-{}", std::process::id());
        let ran = containerd.ok(&[
            "run",
            "--rm",
            "--snapshotter",
            "native",
            "--cgroup",
            &format!("{cgroup}/flatnet"),
            &name,
            "flatnet-version",
            "/usr/local/bin/flatnet",
            "--version",
        ]);
        assert_eq!(ran, flatnet_here(&["--version"]));
        drop(containerd);
        common::remove_cgroups(&cgroup);
        drop(work);
    });
}
