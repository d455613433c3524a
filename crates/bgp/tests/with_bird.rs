//! The speaker against BIRD 2 (root only). Each test makes two network namespaces joined
//! by a veth pair: BIRD runs in one (10.0.0.1, AS 65000), the speaker in the other
//! (10.0.0.2, AS 65001) on a thread that entered it. Nothing touches the host's network.

use flatnet_bgp::{PeerConfig, Snapshot, Speaker, SpeakerConfig, State};
use ipnet::Ipv4Net;
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const BIRD_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const BIRD_PREFIX: &str = "10.244.9.0/24";
const OUR_PREFIX: &str = "10.244.1.0/24";

/// Why this machine cannot run the test, if it cannot.
fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces)");
    }
    if !Path::new("/usr/sbin/bird").exists() || !Path::new("/usr/sbin/birdc").exists() {
        return Some("BIRD 2 is not installed (Debian package bird2)");
    }
    None
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("run command");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace made for one test, deleted on drop even when the test fails.
struct NetNs(String);

impl NetNs {
    fn new(name: String) -> NetNs {
        run(&["ip", "netns", "add", &name]);
        let ns = NetNs(name);
        run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// BIRD running in a namespace; killed on drop.
struct Bird {
    child: Child,
    socket: PathBuf,
}

impl Bird {
    /// Starts BIRD in namespace `ns` with `dir/bird.conf`, logging to `dir/bird.log`.
    fn spawn(ns: &str, dir: &Path, extra_args: &[&str]) -> Bird {
        let socket = dir.join("bird.ctl");
        let log = File::options().create(true).append(true).open(dir.join("bird.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "bird", "-f", "-c"])
            .arg(dir.join("bird.conf"))
            .arg("-s")
            .arg(&socket)
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bird");
        Bird { child, socket }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    fn birdc(&self, command: &str) -> String {
        let out =
            Command::new("birdc").arg("-s").arg(&self.socket).args(command.split(' ')).output().expect("run birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The route BIRD has for `prefix`, as `show route all` prints it.
    fn route(&self, prefix: &str) -> Option<String> {
        let out = self.birdc(&format!("show route {prefix} all"));
        out.contains(prefix).then_some(out)
    }

    fn established(&self) -> bool {
        self.birdc("show protocols flat").contains("Established")
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two namespaces, a veth pair between them, BIRD in the first.
struct Lab {
    bird: Bird,
    speaker_ns: NetNs,
    bird_ns: NetNs,
    dir: tempfile::TempDir,
}

/// BIRD's configuration: `bird_as` for BIRD's own AS (65001 makes the session iBGP),
/// `extra` for more lines in the BGP protocol, `channel` for more in its ipv4 channel.
fn bird_config(bird_as: u32, extra: &str, channel: &str) -> String {
    format!(
        "log stderr all;
router id {BIRD_IP};
protocol device {{}}
protocol static static1 {{
  ipv4;
  route {BIRD_PREFIX} blackhole;
}}
protocol bgp flat {{
  local {BIRD_IP} as {bird_as};
  neighbor {OUR_IP} as 65001;
  hold time 9;
  keepalive time 3;
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 2;
  graceful restart on;
  graceful restart time 120;
{extra}
  ipv4 {{ import all; export all; {channel} }};
}}
"
    )
}

impl Lab {
    fn new(test: &str) -> Lab {
        Lab::with_config(test, &bird_config(65000, "", ""))
    }

    fn with_config(test: &str, config: &str) -> Lab {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let base = format!("fnbgp-{}-{n}-{test}", std::process::id());
        let bird_ns = NetNs::new(format!("{base}-b"));
        let speaker_ns = NetNs::new(format!("{base}-s"));
        let (b, s) = (bird_ns.0.as_str(), speaker_ns.0.as_str());
        run(&["ip", "-n", b, "link", "add", "vb", "type", "veth", "peer", "name", "vs", "netns", s]);
        run(&["ip", "-n", b, "addr", "add", "10.0.0.1/24", "dev", "vb"]);
        run(&["ip", "-n", s, "addr", "add", "10.0.0.2/24", "dev", "vs"]);
        run(&["ip", "-n", b, "link", "set", "vb", "up"]);
        run(&["ip", "-n", s, "link", "set", "vs", "up"]);
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("bird.conf");
        std::fs::write(&conf, config).unwrap();
        let bird = Bird::spawn(b, dir.path(), &[]);
        let lab = Lab { bird, speaker_ns, bird_ns, dir };
        let up = lab.wait(5, || lab.bird.birdc("show status").contains("Daemon is up"));
        let log = std::fs::read_to_string(lab.dir.path().join("bird.log")).unwrap_or_default();
        assert!(up, "BIRD did not start:\n{log}");
        lab
    }

    /// Runs `body` on a thread inside the speaker's namespace, on a runtime of its own,
    /// so every socket the speaker opens lives there.
    fn in_speaker_ns<F, Fut>(&self, body: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let ns = File::open(format!("/run/netns/{}", self.speaker_ns.0)).unwrap();
        let thread = std::thread::spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("enter the speaker's namespace");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(body());
        });
        if let Err(panic) = thread.join() {
            let log = std::fs::read_to_string(self.dir.path().join("bird.log")).unwrap_or_default();
            eprintln!("BIRD log:\n{log}");
            std::panic::resume_unwind(panic);
        }
    }

    /// Polls `cond` every 20 ms for up to `secs` seconds; whether it came true.
    fn wait(&self, secs: u64, cond: impl Fn() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

fn speaker_config(restarting: bool) -> SpeakerConfig {
    SpeakerConfig {
        local_as: 65001,
        router_id: OUR_IP,
        listen: "0.0.0.0:179".parse().unwrap(),
        hold_time: 9,
        restart_time: 60,
        restarting,
        connect_retry: Duration::from_secs(1),
    }
}

fn bird_peer(remote_as: u32) -> Vec<PeerConfig> {
    vec![PeerConfig { addr: BIRD_IP, port: 179, remote_as, name: "rack-router".into() }]
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// Polls every 20 ms (the speaker keeps running meanwhile) until `cond` holds.
async fn eventually(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn snap(rx: &watch::Receiver<Arc<Snapshot>>) -> Arc<Snapshot> {
    Arc::clone(&rx.borrow())
}

async fn start(restarting: bool) -> (Speaker, watch::Receiver<Arc<Snapshot>>) {
    let speaker = Speaker::start(speaker_config(restarting)).await.unwrap();
    speaker.set_prefixes(vec![net(OUR_PREFIX)]);
    speaker.set_peers(bird_peer(65000));
    let rx = speaker.subscribe();
    (speaker, rx)
}

macro_rules! skip_unless_able {
    ($test:literal) => {
        if let Some(reason) = skip_reason() {
            println!("SKIPPED with_bird::{}: {reason}", $test);
            return;
        }
    };
}

#[test]
fn routes_flow_both_ways() {
    skip_unless_able!("routes_flow_both_ways");
    let lab = Arc::new(Lab::new("routes"));
    let l = Arc::clone(&lab);
    lab.in_speaker_ns(move || async move {
        let bird = &l.bird;
        let (speaker, rx) = start(false).await;
        eventually("both sides established, BIRD's prefix learned", 15, || {
            let s = snap(&rx);
            bird.established()
                && s.sessions[0].state == State::Established
                && s.routes
                    .get(&net(BIRD_PREFIX))
                    .is_some_and(|r| r.next_hop == BIRD_IP && r.as_path == [65000] && r.peer_name == "rack-router")
        })
        .await;
        eventually("BIRD learns our prefix", 5, || {
            bird.route(OUR_PREFIX).is_some_and(|r| r.contains("via 10.0.0.2") && r.contains("BGP.as_path: 65001"))
        })
        .await;
        eventually("synced after BIRD's End-of-RIB", 5, || snap(&rx).synced).await;
        assert!(snap(&rx).sessions[0].graceful_restart);

        speaker.set_prefixes(vec![]);
        eventually("BIRD sees our withdrawal", 5, || bird.route(OUR_PREFIX).is_none()).await;
        bird.birdc("disable static1");
        eventually("we see BIRD's withdrawal", 5, || snap(&rx).routes.is_empty()).await;
        bird.birdc("enable static1");
        speaker.set_prefixes(vec![net(OUR_PREFIX)]);
        eventually("routes back both ways", 5, || snap(&rx).routes.len() == 1 && bird.route(OUR_PREFIX).is_some())
            .await;

        speaker.shutdown().await;
        eventually("BIRD drops our route after our cease", 5, || bird.route(OUR_PREFIX).is_none()).await;
        let protocols = bird.birdc("show protocols all flat");
        assert!(protocols.contains("Administrative shutdown"), "{protocols}");
    });
}

#[test]
fn peer_as_mismatch_is_explained() {
    skip_unless_able!("peer_as_mismatch_is_explained");
    let lab = Arc::new(Lab::new("asmis"));
    let l = Arc::clone(&lab);
    lab.in_speaker_ns(move || async move {
        let speaker = Speaker::start(speaker_config(false)).await.unwrap();
        speaker.set_peers(bird_peer(65002));
        let rx = speaker.subscribe();
        eventually("the mismatch is reported", 10, || {
            snap(&rx).sessions[0].last_error.as_deref()
                == Some("peer AS mismatch: configured 65002, its OPEN says 65000")
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = snap(&rx);
        assert_ne!(s.sessions[0].state, State::Established);
        assert!(s.routes.is_empty());
        assert!(!l.bird.established());
        speaker.shutdown().await;
    });
}

#[test]
fn hold_timer_expiry_drops_routes() {
    skip_unless_able!("hold_timer_expiry_drops_routes");
    let lab = Arc::new(Lab::new("hold"));
    let l = Arc::clone(&lab);
    lab.in_speaker_ns(move || async move {
        let bird = &l.bird;
        let (speaker, rx) = start(false).await;
        eventually("BIRD's prefix learned", 15, || snap(&rx).routes.contains_key(&net(BIRD_PREFIX))).await;
        kill(bird.pid(), Signal::SIGSTOP).unwrap();
        let stopped = Instant::now();
        eventually("hold timer expiry", 13, || {
            let s = snap(&rx);
            s.routes.is_empty()
                && s.sessions[0].last_error.as_deref() == Some("hold timer expired (no message for 9 s)")
        })
        .await;
        let took = stopped.elapsed();
        assert!(took >= Duration::from_secs(5), "expired after only {took:?}");
        kill(bird.pid(), Signal::SIGCONT).unwrap();
        speaker.shutdown().await;
    });
}

#[test]
fn graceful_restart_keeps_our_route_in_bird() {
    skip_unless_able!("graceful_restart_keeps_our_route_in_bird");
    let lab = Arc::new(Lab::new("gr"));
    let l = Arc::clone(&lab);
    lab.in_speaker_ns(move || async move {
        let bird = &l.bird;
        let (speaker, rx) = start(false).await;
        eventually("BIRD learns our prefix", 15, || bird.route(OUR_PREFIX).is_some() && snap(&rx).synced).await;

        // A crash: the connection closes with no NOTIFICATION.
        drop(speaker);
        eventually("BIRD notices the session is down", 5, || !bird.established()).await;
        let gap = Instant::now();
        while gap.elapsed() < Duration::from_secs(2) {
            assert!(bird.route(OUR_PREFIX).is_some(), "BIRD withdrew our route during the restart");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // BIRD holds our route as stale and counts down the restart time we advertised.
        let protocol = bird.birdc("show protocols all flat");
        assert!(protocol.contains("Neighbor graceful restart active"), "{protocol}");
        assert!(protocol.contains("Restart timer:"), "{protocol}");
        assert!(bird.route(OUR_PREFIX).unwrap().contains("via 10.0.0.2"));

        let (speaker, rx) = start(true).await;
        let mut seen_established = false;
        eventually("BIRD has our route fresh from the new session", 15, || {
            let route = bird.route(OUR_PREFIX);
            assert!(route.is_some(), "BIRD withdrew our route during the restart");
            seen_established |= bird.established();
            // The End-of-RIB we send ends BIRD's graceful restart: our route is fresh.
            seen_established
                && snap(&rx).synced
                && !bird.birdc("show protocols all flat").contains("graceful restart active")
        })
        .await;
        assert!(snap(&rx).routes.contains_key(&net(BIRD_PREFIX)));
        speaker.shutdown().await;
    });
}

#[test]
fn ibgp_with_a_passive_bird() {
    skip_unless_able!("ibgp_with_a_passive_bird");
    // iBGP is multihop to BIRD (next hops resolved recursively) unless marked `direct`.
    let config = bird_config(65001, "  direct;\n  passive on;", "");
    let lab = Arc::new(Lab::with_config("ibgp", &config));
    let l = Arc::clone(&lab);
    lab.in_speaker_ns(move || async move {
        let bird = &l.bird;
        let speaker = Speaker::start(speaker_config(false)).await.unwrap();
        speaker.set_prefixes(vec![net(OUR_PREFIX)]);
        speaker.set_peers(bird_peer(65001));
        let rx = speaker.subscribe();
        eventually("BIRD's prefix learned over iBGP", 15, || {
            snap(&rx).routes.get(&net(BIRD_PREFIX)).is_some_and(|r| r.as_path.is_empty() && r.next_hop == BIRD_IP)
        })
        .await;
        eventually("BIRD learns our prefix with LOCAL_PREF 100 and an empty AS path", 5, || {
            bird.route(OUR_PREFIX).is_some_and(|r| {
                r.contains("via 10.0.0.2") && r.contains("BGP.local_pref: 100") && r.contains("BGP.as_path: \n")
            })
        })
        .await;
        let protocol = bird.birdc("show protocols all flat");
        assert!(protocol.contains("Session:          internal"), "{protocol}");
        speaker.shutdown().await;
    });
}

#[test]
fn bird_restart_keeps_its_routes_here_as_stale() {
    skip_unless_able!("bird_restart_keeps_its_routes_here_as_stale");
    let lab = Arc::new(Lab::new("birdgr"));
    let l = Arc::clone(&lab);
    lab.in_speaker_ns(move || async move {
        let (speaker, rx) = start(false).await;
        eventually("BIRD's prefix learned", 15, || {
            let s = snap(&rx);
            s.synced && s.routes.contains_key(&net(BIRD_PREFIX))
        })
        .await;
        // BIRD crashes: the kernel closes its connection, no NOTIFICATION.
        kill(l.bird.pid(), Signal::SIGKILL).unwrap();
        eventually("BIRD's route kept as stale", 5, || {
            let s = snap(&rx);
            s.sessions[0].state != State::Established && s.routes.get(&net(BIRD_PREFIX)).is_some_and(|r| r.stale)
        })
        .await;
        // BIRD comes back in graceful restart recovery (-R): R and F bits in its OPEN.
        let bird = Bird::spawn(&l.bird_ns.0, l.dir.path(), &["-R"]);
        eventually("BIRD's route fresh again, never gone in between", 15, || {
            let s = snap(&rx);
            let route = s.routes.get(&net(BIRD_PREFIX)).expect("BIRD's route vanished during its restart");
            s.sessions[0].state == State::Established && !route.stale
        })
        .await;
        // Had BIRD not said it preserved forwarding, we would have dropped the stale route
        // at its OPEN (RFC 4724 §4.2) rather than waiting for its End-of-RIB.
        let protocol = bird.birdc("show protocols all flat");
        let local = protocol.split("Neighbor capabilities").next().unwrap_or_default();
        assert!(local.contains("Restart recovery") && local.contains("AF preserved: ipv4"), "{protocol}");
        speaker.shutdown().await;
    });
}
