//! nftables through the `nft` binary's JSON interface: each apply is one atomic
//! transaction (all of it or none), and reads list one table of flatnet's own.

use nftables::helper::{self, NftablesError};
use nftables::types::NfFamily;
use std::io::Write;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables refused the transaction: {stderr}")]
    Refused { stderr: String },
    #[error("could not run nft (install the nftables package): {0}")]
    Unavailable(String),
}

fn classify(e: NftablesError) -> NftError {
    match e {
        NftablesError::NftFailed { stderr, .. } => NftError::Refused { stderr: stderr.trim().to_string() },
        other => NftError::Unavailable(other.to_string()),
    }
}

fn family_word(family: NfFamily) -> &'static str {
    match family {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

/// The comments of the rules in `chain` of table `family table`, in order; None when
/// the table or the chain does not exist.
pub fn chain_rule_comments(family: NfFamily, table: &str, chain: &str) -> Result<Option<Vec<String>>, NftError> {
    // Read as plain JSON: the typed schema cannot decode every statement `nft` lists
    // (masquerade flags, for one), and only the comments matter here.
    let Some(listed) = list_raw(&["list", "chain", family_word(family), table, chain])? else { return Ok(None) };
    Ok(Some(
        listed["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("rule"))
            .map(|r| r.get("comment").and_then(serde_json::Value::as_str).unwrap_or("").to_string())
            .collect(),
    ))
}

/// Deletes table `family table` if it exists.
pub fn delete_table(family: NfFamily, table: &str) -> Result<(), NftError> {
    let out = std::process::Command::new("nft")
        .args(["delete", "table", family_word(family), table])
        .output()
        .map_err(|e| NftError::Unavailable(e.to_string()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("No such file") {
        Ok(())
    } else {
        Err(NftError::Refused { stderr: stderr.trim().to_string() })
    }
}

/// Runs `nft ARGS` with `write` feeding its standard input; fails with nft's own words.
fn pipe_to_nft(
    args: &[&str],
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(), NftError> {
    let mut child = std::process::Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| NftError::Unavailable(e.to_string()))?;
    let written = write(&mut child.stdin.take().expect("piped stdin"));
    let out = child.wait_with_output().map_err(|e| NftError::Unavailable(e.to_string()))?;
    if !out.status.success() {
        return Err(NftError::Refused { stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    written.map_err(|e| NftError::Unavailable(format!("writing to nft: {e}")))
}

/// Applies `objects` (nft JSON commands) as one atomic transaction, streaming them to
/// `nft -j -f -` so a large transaction is never held in memory as one document.
/// Each item is one or more rendered commands, comma-separated.
pub fn apply_objects<S: AsRef<str>>(objects: impl IntoIterator<Item = S>) -> Result<(), NftError> {
    pipe_to_nft(&["-j", "-f", "-"], |stdin| {
        let mut w = std::io::BufWriter::with_capacity(256 * 1024, stdin);
        w.write_all(b"{\"nftables\":[")?;
        for (i, o) in objects.into_iter().enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            w.write_all(o.as_ref().as_bytes())?;
        }
        w.write_all(b"]}")?;
        w.flush()
    })
}

/// Runs an nft script (the `nft -f` language) as one transaction.
pub fn apply_script(script: &str) -> Result<(), NftError> {
    pipe_to_nft(&["-f", "-"], |stdin| stdin.write_all(script.as_bytes()))
}

/// `nft -j ARGS` as JSON; None when nft says the table, chain or set does not exist.
fn list_raw(args: &[&str]) -> Result<Option<serde_json::Value>, NftError> {
    let raw = match helper::get_current_ruleset_raw(helper::DEFAULT_NFT, args) {
        Ok(r) => r,
        Err(NftablesError::NftFailed { stderr, .. }) if stderr.contains("No such file") => return Ok(None),
        Err(e) => return Err(classify(e)),
    };
    serde_json::from_str(&raw).map(Some).map_err(|e| NftError::Unavailable(format!("nft printed invalid JSON: {e}")))
}

/// The whole of table `family table` (chains with their rules, sets and maps with their
/// elements, counters with their values) as `nft -j` lists it; None when it does not exist.
pub fn list_table(family: NfFamily, table: &str) -> Result<Option<serde_json::Value>, NftError> {
    list_raw(&["list", "table", family_word(family), table])
}

/// Every object of kind `what` (`sets`, `maps`, `counters`) of family `family`, with
/// their elements or values, as `nft -j list` prints them; only those of `table` are kept.
pub fn list_objects(family: NfFamily, what: &str, table: &str) -> Result<Vec<serde_json::Value>, NftError> {
    let kind = what.trim_end_matches('s');
    let Some(listed) = list_raw(&["list", what, family_word(family)])? else { return Ok(Vec::new()) };
    Ok(listed["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o.get(kind).is_some_and(|x| x["table"] == table))
        .cloned()
        .collect())
}

/// The names of the chains and of the sets and maps of table `family table` (empty when
/// the table does not exist). Lists no rules and no elements, so it stays cheap.
pub fn table_names(family: NfFamily, table: &str) -> Result<(Vec<String>, Vec<String>), NftError> {
    let fam = family_word(family);
    let mut chains = Vec::new();
    let mut sets = Vec::new();
    for (what, kinds, out) in [("chains", &["chain"][..], &mut chains), ("sets", &["set", "map"][..], &mut sets)] {
        // Terse: without the elements of the sets.
        let Some(listed) = list_raw(&["-t", "list", what, fam])? else { continue };
        for o in listed["nftables"].as_array().into_iter().flatten() {
            for kind in kinds {
                if let Some(c) = o.get(*kind)
                    && c["table"] == table
                    && let Some(n) = c["name"].as_str()
                {
                    out.push(n.to_string());
                }
            }
        }
    }
    Ok((chains, sets))
}

/// The elements of set or map `name` in table `family table` as nft lists them (a map
/// element is `[key, value]`); None when the table or the set does not exist.
pub fn set_elements(
    family: NfFamily,
    table: &str,
    kind: &str,
    name: &str,
) -> Result<Option<Vec<serde_json::Value>>, NftError> {
    let Some(listed) = list_raw(&["list", kind, family_word(family), table, name])? else { return Ok(None) };
    Ok(Some(
        listed["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get(kind))
            .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
            .collect(),
    ))
}

/// `nft monitor` running in the network namespace of the thread that started it: every
/// ruleset change and every trace event (packets marked with `meta nftrace set 1`), a
/// line each. Stopped when dropped.
pub struct Monitor {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Monitor {
    pub fn start() -> Result<Self, NftError> {
        use std::io::BufRead;
        let mut child = std::process::Command::new("nft")
            .arg("monitor")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| NftError::Unavailable(e.to_string()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// The next line, waiting at most `timeout`.
    pub fn next(&self, timeout: std::time::Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole ruleset of the calling thread's namespace, every table of every family
/// (flatnet's and anyone else's), as `nft -j list ruleset` prints it.
pub fn list_ruleset() -> Result<serde_json::Value, NftError> {
    Ok(list_raw(&["list", "ruleset"])?.unwrap_or_else(|| serde_json::json!({"nftables": []})))
}

/// `nft --version`, or why nft cannot run.
pub fn version() -> Result<String, String> {
    match std::process::Command::new("nft").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(e.to_string()),
    }
}
