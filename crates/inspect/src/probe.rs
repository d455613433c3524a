//! `--probe`: a real packet along the path. Each node in view runs `nft monitor`; a
//! temporary table `ip flatnet-trace` marks exactly the probe's packets (its source
//! address and port) with `meta nftrace set 1` before anything else sees them, so every
//! chain of flatnet's tables reports what it did with them. The table is removed after.

use flatnet_kernel::{conntrack, netns, nft, probe::Answer};
use flatnet_model::trace::probe::{Event, Outcome, parse};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const TABLE: &str = "flatnet-trace";

struct Watch {
    node: String,
    netns: PathBuf,
    monitor: nft::Monitor,
}

/// Monitors on every node in view, each confirmed to be listening.
pub struct Session {
    watches: Vec<Watch>,
}

impl Session {
    pub fn start(nodes: &[(String, PathBuf)]) -> anyhow::Result<Self> {
        let mut s = Session { watches: Vec::new() };
        for (node, path) in nodes {
            let monitor = netns::run_in(path, nft::Monitor::start)??;
            s.watches.push(Watch { node: node.clone(), netns: path.clone(), monitor });
            let w = s.watches.last().expect("just pushed");
            // `nft monitor` gives no sign it is listening: make changes until one shows.
            let mut ready = false;
            for n in 0..50 {
                let script = format!("add table ip {TABLE}\nadd chain ip {TABLE} ready-{n}\n");
                netns::run_in(&w.netns, || nft::apply_script(&script))??;
                let until = Instant::now() + Duration::from_millis(100);
                while let Some(left) = until.checked_duration_since(Instant::now()) {
                    match w.monitor.next(left) {
                        Some(l) if l.contains(TABLE) => {
                            ready = true;
                            break;
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
                if ready {
                    break;
                }
            }
            if !ready {
                anyhow::bail!("nft monitor did not start on {node}");
            }
        }
        Ok(s)
    }

    /// Marks the packets `matcher` selects (an nft match, e.g. `ip saddr A tcp sport P`)
    /// on every node, before conntrack and DNAT.
    pub fn arm(&self, matcher: &str) -> anyhow::Result<()> {
        let script = format!(
            "add chain ip {TABLE} probe {{ type filter hook prerouting priority -400; }}\n\
             add rule ip {TABLE} probe {matcher} meta nftrace set 1\n"
        );
        for w in &self.watches {
            netns::run_in(&w.netns, || nft::apply_script(&script))?
                .map_err(|e| anyhow::anyhow!("arm the trace on {}: {e}", w.node))?;
        }
        Ok(())
    }

    /// Every trace event until the nodes have been quiet a moment (2 s at most).
    pub fn collect(&self) -> Vec<Event> {
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        for w in &self.watches {
            while Instant::now() < deadline {
                match w.monitor.next(Duration::from_millis(250)) {
                    Some(line) => events.extend(parse(&w.node, &line)),
                    None => break,
                }
            }
        }
        events
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for w in &self.watches {
            let _ = netns::run_in(&w.netns, || nft::delete_table(nftables::types::NfFamily::IP, TABLE));
        }
    }
}

pub fn outcome(a: Answer, timeout: Duration) -> Outcome {
    match a {
        Answer::Answered(detail) => Outcome::Answered { detail },
        Answer::Refused(detail) => Outcome::Refused { detail },
        Answer::TimedOut => Outcome::TimedOut { after_ms: timeout.as_millis() as u64 },
        Answer::Failed(error) => Outcome::Failed { error },
    }
}

/// The endpoint conntrack on the source node recorded for the probe's connection, when
/// it was DNATed (the reply comes from somewhere else than the original destination).
pub fn dnat_endpoint(
    node_ns: &Path,
    proto: u8,
    src: std::net::Ipv4Addr,
    sport: u16,
) -> Option<(std::net::Ipv4Addr, u16)> {
    let flows = netns::run_in(node_ns, conntrack::list).ok()?.ok()?;
    flows
        .iter()
        .find(|f| f.proto == proto && f.orig_src == src && f.orig_sport == sport && f.reply_src != f.orig_dst)
        .map(|f| (f.reply_src, f.reply_sport))
}
