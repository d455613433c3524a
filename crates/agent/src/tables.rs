//! Writing nf_tables: one transaction over netlink (no `nft` process), or through `nft`
//! for a command the netlink encoder does not know (said once in the log, by name).

use flatnet_kernel::nf_tables::{self, SetShape, Took};
use flatnet_kernel::nft::{self, NftError};
use flatnet_model::proxy::{Part, Sink};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::warn;

static SAID: AtomicBool = AtomicBool::new(false);

/// Applies `objects` (nft JSON commands) as one transaction; `known` are the sets
/// already in the table whose elements the transaction may change.
pub fn write<S: AsRef<str>>(objects: &[S], known: Vec<(String, SetShape)>) -> Result<Took, NftError> {
    through_nft_if_unknown(nf_tables::apply(objects, known), objects)
}

/// A transaction compiled for netlink, to be written later (on another thread); it
/// keeps its objects in case `nft` must write them.
pub struct Compiled {
    writer: nf_tables::Writer,
    objects: Vec<String>,
}

impl Compiled {
    /// Compiles `objects` as [`write`] does.
    pub fn new(objects: Vec<String>, known: Vec<(String, SetShape)>) -> Self {
        let mut writer = nf_tables::Writer::new(known);
        for o in &objects {
            writer.push(0, o);
        }
        Self { writer, objects }
    }

    /// Sends it and waits for the kernel's answer.
    pub fn write(self) -> Result<Took, NftError> {
        through_nft_if_unknown(self.writer.commit(), &self.objects)
    }
}

/// `written`, or, when the encoder did not know a command, `objects` written by `nft`.
fn through_nft_if_unknown<S: AsRef<str>>(
    written: Result<Took, nf_tables::Error>,
    objects: &[S],
) -> Result<Took, NftError> {
    match written {
        Ok(took) => Ok(took),
        Err(nf_tables::Error::Unsupported(what)) => {
            if !SAID.swap(true, Ordering::Relaxed) {
                warn!("writing this transaction through nft: {what}");
            }
            let started = std::time::Instant::now();
            nft::apply_objects(objects)?;
            Ok(Took { compile: Duration::ZERO, commit: started.elapsed() })
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes a transaction with `make` while a second thread compiles it into `writer`:
/// planning and compiling take about as long each at 10,000 Services, and a node has
/// more than one core. Objects cross over a bounded channel, so little text is ever in
/// flight. Returns what `make` returns, and the writer once it has every object.
pub fn compiled_beside<T>(writer: nf_tables::Writer, make: impl FnOnce(&mut dyn Sink) -> T) -> (T, nf_tables::Writer) {
    struct Channel(std::sync::mpsc::SyncSender<(Part, String)>);
    impl Sink for Channel {
        fn push(&mut self, part: Part, object: String) {
            // Only fails if the compiler is gone, which joining it reports.
            let _ = self.0.send((part, object));
        }
    }
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Part, String)>(256);
        let compiler = std::thread::Builder::new()
            .name("nft-compile".into())
            .spawn_scoped(scope, move || {
                let mut w = writer;
                for (part, object) in rx {
                    w.push(part as usize, &object);
                }
                w
            })
            .expect("a thread for the compiler");
        let mut sink = Channel(tx);
        let made = make(&mut sink);
        drop(sink);
        let writer = compiler.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (made, writer)
    })
}

/// The proxy's base sets and maps, as the netlink encoder needs them for their elements.
pub fn proxy_sets() -> Vec<(String, SetShape)> {
    flatnet_model::proxy::BASE_SETS
        .iter()
        .filter_map(|(name, types, verdict)| Some((name.to_string(), SetShape::new(types, *verdict)?)))
        .collect()
}

/// The key of a set or map of the policy table, by its name (the planner names each
/// kind with its own prefix).
pub fn policy_shape(name: &str) -> Option<SetShape> {
    match name {
        "ingress" | "egress" => SetShape::new(&["ipv4_addr"], true),
        "local-self" => SetShape::new(&["ipv4_addr", "ipv4_addr"], false),
        n if n.starts_with("pods-") => SetShape::new(&["ipv4_addr"], false),
        n if n.starts_with("nport-") => SetShape::new(&["ipv4_addr", "inet_proto", "inet_service"], false),
        n if n.starts_with("cidr-") => SetShape::intervals(&["ipv4_addr"]),
        _ => None,
    }
}

/// The policy table's sets and maps that `state` has (and the base's), as the netlink
/// encoder needs them for their elements.
pub fn policy_sets(state: &flatnet_model::policy::State) -> Vec<(String, SetShape)> {
    let names = ["ingress", "egress", "local-self"].into_iter().map(str::to_string);
    names
        .chain(state.pod_sets.keys().cloned())
        .chain(state.port_sets.keys().cloned())
        .chain(state.block_sets.keys().cloned())
        .filter_map(|n| Some((n.clone(), policy_shape(&n)?)))
        .collect()
}
