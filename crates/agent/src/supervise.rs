//! Every reconciler (node network, Service proxy, NetworkPolicy) runs under a
//! supervisor, and every sync goes through one driver:
//! - the driver batches watch events, runs a sync on a blocking thread (full at start,
//!   after an error and every few minutes; otherwise only what changed), and after a
//!   failed sync waits with exponential back-off before the next;
//! - a reconciler may leave a sync's kernel write to the driver, which runs it while the
//!   next batch plans (see [`Synced::Write`]);
//! - the supervisor runs the reconciler as a task of its own: a panic (or an end it did
//!   not ask for) is recorded as the reconciler's error and counted, and the reconciler
//!   starts again from a fresh list of the API after a back-off. The others go on.
//!
//! While a reconciler's last sync failed, or it is restarting, the agent is not ready
//! (`/readyz`).

use crate::status::Status;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// A full sync also runs this often, to repair whatever changed the kernel behind us.
pub const FULL_SYNC_EVERY: Duration = Duration::from_secs(300);

/// Exponential back-off: `first`, doubled after each failure, at most `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, cap: Duration) -> Self {
        Self { first, cap, next: first }
    }

    /// The wait before the next try; doubles the one after.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.cap);
        wait
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

impl Default for Backoff {
    /// 0.5 s, 1 s, 2 s, … 30 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

/// The stop signal every reconciler watches: true once the agent stops.
pub type Stop = watch::Receiver<bool>;

/// Resolves once `stop` says stop (or its sender is gone).
pub async fn stopped(stop: &mut Stop) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// What a panic carried, as text.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `start(stop)` as a task, again and again until `stop`: each end that `stop`
/// did not ask for (a panic above all) is recorded on `name`, counted as a restart, and
/// followed by a back-off. A run that lasted a minute resets the back-off.
pub async fn supervise<F, Fut>(name: &'static str, status: Arc<Status>, mut stop: Stop, mut start: F)
where
    F: FnMut(Stop) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let began = Instant::now();
        let mut task = tokio::spawn(start(stop.clone()));
        let ended = tokio::select! {
            r = &mut task => r,
            () = stopped(&mut stop) => {
                // Give it the chance to stop cleanly (it watches the same signal).
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut task).await;
                task.abort();
                return;
            }
        };
        if *stop.borrow() {
            return;
        }
        let why = match ended {
            Ok(()) => "it stopped on its own".to_string(),
            Err(e) if e.is_panic() => format!("it panicked: {}", panic_text(&*e.into_panic())),
            Err(e) => format!("its task failed: {e}"),
        };
        if began.elapsed() >= Duration::from_secs(60) {
            backoff.reset();
        }
        let wait = backoff.next_wait();
        let text = format!("the {name} reconciler stopped: {why}; restarting in {wait:?}");
        warn!("{text}");
        status.restarted(name, &text);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopped(&mut stop) => return,
        }
        info!("restarting the {name} reconciler");
    }
}

/// A reconciler the driver runs: its view of the cluster, fed by watch events, and a
/// sync that makes the kernel match it. `sync` and `idle` run on a blocking thread.
pub trait Reconcile: Send + 'static {
    type Event: Send + 'static;
    /// Its name in status, metrics and logs.
    const NAME: &'static str;
    /// Takes one watch event in; false when the event ended a re-list (the next sync
    /// is then a full one).
    fn apply(&mut self, ev: Self::Event) -> bool;
    /// Whether every watch has listed: nothing syncs before.
    fn listed(&self) -> bool;
    /// Whether an incremental sync has work to do.
    fn dirty(&self) -> bool;
    /// How often a full sync runs when nothing asks for one.
    fn resync(&self) -> Duration {
        FULL_SYNC_EVERY
    }
    /// Whether a change of its input is worth a retry before the back-off ends (at most
    /// every 0.5 s): for a reconciler whose failures usually wait on the cluster (no
    /// podCIDR yet), whose events are few.
    fn retry_on_change(&self) -> bool {
        false
    }
    /// Whether something waits on a sync (it is then tried at least every 0.5 s).
    fn waiting(&self) -> bool {
        false
    }
    /// What it needs from the cluster before it can sync at all, when it lacks it: no
    /// sync is tried (nor counted as failed) until an event brings it.
    fn pending(&self) -> Option<String> {
        None
    }
    /// One sync: with `full`, from the kernel's actual state; otherwise what changed since
    /// the last success. Returns a summary for the log ("" when nothing was worth one).
    fn sync(&mut self, full: bool) -> Result<String, String>;
    /// One sync in two parts: the planning here, and the kernel write it may leave to the
    /// driver (see [`Synced::Write`]). Default: [`Reconcile::sync`], whole.
    fn sync_parts(&mut self, full: bool) -> Result<Synced, String> {
        self.sync(full).map(Synced::Done)
    }
    /// After a sync, successful or not (`ok`), and when nothing was dirty; not after a
    /// write left to run beside the next sync (one that does not `answer`).
    fn after(&mut self, _ok: bool) {}
}

/// What a sync leaves to do.
pub enum Synced {
    /// Nothing: its summary for the log ("" when nothing was worth one).
    Done(String),
    /// A write, planned and compiled, that puts the sync in the kernel and returns its
    /// summary. The driver runs it on a thread of its own while the next sync plans, so
    /// that the kernel's commit and the planning use two cores. Writes run one at a time
    /// and in order, and a full sync (which reads the kernel) waits for the one before.
    /// A write that `answers` (someone waits on it in `after`) is waited for at once.
    /// When a write fails, the write planned after it is dropped and a full sync follows.
    Write { write: Box<dyn FnOnce() -> Result<String, String> + Send>, answers: bool },
}

/// Runs `r` on a blocking thread and gives it back; a panic there goes on in this task.
async fn blocking<R: Send + 'static, T: Send + 'static>(
    mut r: R,
    f: impl FnOnce(&mut R) -> T + Send + 'static,
) -> (R, T) {
    joined(
        tokio::task::spawn_blocking(move || {
            let out = f(&mut r);
            (r, out)
        })
        .await,
    )
}

/// A write left running beside the next sync's planning.
struct InFlight {
    task: tokio::task::JoinHandle<Result<String, String>>,
    /// The first watch event of its batch.
    started: Instant,
}

/// The driver's record of how syncs went, and what it makes of each outcome.
struct Outcomes {
    status: Arc<Status>,
    need_full: bool,
    last_full: Instant,
    backoff: Backoff,
    retry_at: Option<tokio::time::Instant>,
    last_failure: Option<tokio::time::Instant>,
}

impl Outcomes {
    /// Logs and records the outcome of a sync whose batch began at `started`.
    fn record<R: Reconcile>(&mut self, started: Instant, result: &Result<String, String>) {
        match result {
            Ok(summary) => {
                if self.last_failure.take().is_some() {
                    info!("{} recovered", R::NAME);
                }
                self.backoff.reset();
                self.status.synced(R::NAME, started.elapsed(), Ok(summary));
                if !summary.is_empty() {
                    info!(
                        "{summary} in {:.1} ms (from the watch event to the kernel)",
                        started.elapsed().as_secs_f64() * 1e3
                    );
                }
            }
            Err(e) => {
                self.need_full = true;
                let wait = self.backoff.next_wait();
                self.status.synced(R::NAME, started.elapsed(), Err(e));
                warn!("{} sync failed, a full sync follows in {wait:?}: {e}", R::NAME);
                self.last_failure = Some(tokio::time::Instant::now());
                self.retry_at = self.last_failure.map(|t| t + wait);
            }
        }
    }

    /// Waits for the write in flight, if any, and records it: false when it failed.
    async fn settle<R: Reconcile>(&mut self, in_flight: &mut Option<InFlight>) -> bool {
        let Some(w) = in_flight.take() else { return true };
        let result = joined(w.task.await);
        self.record::<R>(w.started, &result);
        result.is_ok()
    }
}

/// A blocking task's result; a panic there goes on in this task.
fn joined<T>(r: Result<T, tokio::task::JoinError>) -> T {
    match r {
        Ok(x) => x,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only a runtime shutting down cancels a blocking task.
        Err(e) => std::panic::panic_any(format!("sync task cancelled: {e}")),
    }
}

/// The reconcile loop: takes each batch of events from `rx` into `r` and syncs.
pub async fn drive<R: Reconcile>(
    mut r: R,
    mut rx: mpsc::UnboundedReceiver<(Instant, R::Event)>,
    status: Arc<Status>,
    mut stop: Stop,
) {
    let mut o = Outcomes {
        status: status.clone(),
        need_full: true,
        last_full: Instant::now(),
        backoff: Backoff::default(),
        retry_at: None,
        last_failure: None,
    };
    let mut first_event: Option<Instant> = None;
    let mut told_pending: Option<String> = None;
    let mut in_flight: Option<InFlight> = None;
    loop {
        let now = tokio::time::Instant::now();
        let pending = r.listed().then(|| r.pending()).flatten();
        let wake = match o.retry_at {
            Some(t) => t,
            // Nothing to try until an event brings what is missing (said at once).
            None if pending.is_some() && pending == told_pending => now + r.resync(),
            None if pending.is_some() => now,
            // Work to do now: the first sync, or the one after a re-list.
            None if r.listed() && (o.need_full || r.dirty()) => now,
            None if r.waiting() => now + Duration::from_millis(500),
            None => now + r.resync().saturating_sub(o.last_full.elapsed()),
        };
        tokio::select! {
            m = rx.recv() => {
                let Some((at, ev)) = m else { break };
                first_event.get_or_insert(at);
                o.need_full |= !r.apply(ev);
                // Take every event already queued: one sync for the batch.
                while let Ok((_, ev)) = rx.try_recv() {
                    o.need_full |= !r.apply(ev);
                }
                if r.retry_on_change() {
                    let soon = o.last_failure.map(|t| t + Duration::from_millis(500));
                    o.retry_at = o.retry_at.zip(soon).map(|(a, b)| a.min(b));
                }
            }
            // A write finished while nothing else was to do: said now, and a failure
            // brings the full sync without waiting for an event.
            done = async { (&mut in_flight.as_mut().expect("a write in flight").task).await }, if in_flight.is_some() => {
                let w = in_flight.take().expect("a write in flight");
                o.record::<R>(w.started, &joined(done));
                continue;
            }
            () = tokio::time::sleep_until(wake) => {}
            () = stopped(&mut stop) => break,
        }
        // Also in a busy cluster, where events keep the timer from firing.
        if o.last_full.elapsed() >= r.resync() {
            o.need_full = true;
        }
        if !r.listed() || o.retry_at.is_some_and(|t| tokio::time::Instant::now() < t) {
            continue;
        }
        o.retry_at = None;
        if let Some(what) = r.pending() {
            if told_pending.as_ref() != Some(&what) {
                info!("{} waits: {what}", R::NAME);
                status.pending(R::NAME, &what);
                told_pending = Some(what);
            }
            o.need_full = true;
            continue;
        }
        told_pending = None;
        if !o.need_full && !r.dirty() {
            if r.waiting() {
                let ok = o.settle::<R>(&mut in_flight).await;
                r = blocking(r, move |r| r.after(ok)).await.0;
            }
            continue;
        }
        // A full sync reads the kernel: not while a write is on its way there.
        if o.need_full && !o.settle::<R>(&mut in_flight).await {
            continue;
        }
        let started = first_event.take().unwrap_or_else(Instant::now);
        let full = std::mem::take(&mut o.need_full);
        if full {
            // From its start: a full write still in flight is not asked for again.
            o.last_full = Instant::now();
        }
        // Planned while the write before it (if any) is still in the kernel.
        let (back, result) = blocking(r, move |r| r.sync_parts(full)).await;
        r = back;
        let before_ok = o.settle::<R>(&mut in_flight).await;
        let ok = match result {
            // Planned on top of a write that failed: dropped, a full sync follows.
            Ok(_) if !before_ok => false,
            Ok(Synced::Write { write, answers: false }) => {
                in_flight = Some(InFlight { task: tokio::task::spawn_blocking(write), started });
                continue;
            }
            Ok(Synced::Write { write, answers: true }) => {
                let result = joined(tokio::task::spawn_blocking(write).await);
                o.record::<R>(started, &result);
                result.is_ok()
            }
            Ok(Synced::Done(summary)) => {
                o.record::<R>(started, &Ok(summary));
                true
            }
            Err(e) => {
                o.record::<R>(started, &Err(e));
                false
            }
        };
        r = blocking(r, move |r| r.after(ok)).await.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let waits: Vec<u128> = (0..5).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(500));
    }

    /// A reconciler whose sync panics the first `panics` times it is started, then works.
    struct Flaky {
        starts: Arc<AtomicU32>,
        panics: u32,
        synced: bool,
    }

    impl Reconcile for Flaky {
        type Event = ();
        const NAME: &'static str = "proxy";
        fn apply(&mut self, (): ()) -> bool {
            true
        }
        fn listed(&self) -> bool {
            true
        }
        fn dirty(&self) -> bool {
            !self.synced
        }
        fn sync(&mut self, _full: bool) -> Result<String, String> {
            if self.starts.load(Ordering::SeqCst) <= self.panics {
                panic!("injected: the planner found an impossible Service");
            }
            self.synced = true;
            Ok("synced".into())
        }
    }

    /// A reconciler that fails `fails` syncs with an error, then works.
    struct Failing {
        left: u32,
    }

    impl Reconcile for Failing {
        type Event = ();
        const NAME: &'static str = "policy";
        fn apply(&mut self, (): ()) -> bool {
            true
        }
        fn listed(&self) -> bool {
            true
        }
        fn dirty(&self) -> bool {
            false
        }
        fn sync(&mut self, _full: bool) -> Result<String, String> {
            if self.left > 0 {
                self.left -= 1;
                return Err("nft refused the transaction".into());
            }
            Ok(String::new())
        }
    }

    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..2000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not within the time: {what}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_reconciler_is_restarted_with_backoff_while_the_others_go_on() {
        let status = Arc::new(Status::new("node-1", "vxlan", &crate::status::RECONCILERS));
        let (stop_tx, stop) = watch::channel(false);
        let starts = Arc::new(AtomicU32::new(0));
        let (s, n) = (status.clone(), starts.clone());
        let proxy = tokio::spawn(supervise("proxy", status.clone(), stop.clone(), move |stop| {
            n.fetch_add(1, Ordering::SeqCst);
            let (tx, rx) = mpsc::unbounded_channel::<(Instant, ())>();
            let r = Flaky { starts: n.clone(), panics: 2, synced: false };
            let s = s.clone();
            async move {
                let _tx = tx;
                drive(r, rx, s, stop).await;
            }
        }));
        let s = status.clone();
        let policy = tokio::spawn(supervise("policy", status.clone(), stop.clone(), move |stop| {
            let (tx, rx) = mpsc::unbounded_channel::<(Instant, ())>();
            let s = s.clone();
            async move {
                let _tx = tx;
                drive(Failing { left: 3 }, rx, s, stop).await;
            }
        }));
        let began = tokio::time::Instant::now();
        eventually("the proxy panics", || status.snapshot().reconcilers["proxy"].restarts >= 1).await;
        assert!(status.ready().is_err(), "not ready while a reconciler is failing");
        let err = status.snapshot().reconcilers["proxy"].last_error.clone().unwrap_or_default();
        assert!(err.contains("panicked: injected"), "{err}");
        let ready = |name: &str| status.snapshot().reconcilers[name].ready();
        eventually("both recover", || ready("proxy") && ready("policy")).await;
        let not_ready = status.ready().unwrap_err();
        assert_eq!(not_ready, "node: not synced yet", "the agent is ready once every reconciler is");
        let snap = status.snapshot();
        assert_eq!(snap.reconcilers["proxy"].restarts, 2, "two panics, two restarts");
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        // Back-off between restarts (1 s, then 2 s) and between failed syncs (0.5, 1, 2 s).
        assert!(began.elapsed() >= Duration::from_secs(3), "{:?}", began.elapsed());
        assert_eq!(snap.reconcilers["policy"].errors, 3);
        assert_eq!(snap.reconcilers["policy"].restarts, 0, "an error is retried, not restarted");
        let text = crate::metrics::render_with(&status, Vec::new());
        assert!(text.contains("flatnet_reconciler_restarts_total{reconciler=\"proxy\"} 2"), "{text}");
        assert!(text.contains("flatnet_reconciler_ready{reconciler=\"proxy\"} 1"), "{text}");
        stop_tx.send(true).unwrap();
        let _ = tokio::join!(proxy, policy);
    }

    /// A node reconciler without its Pod CIDR yet: it has nothing to sync with.
    struct Waits {
        cidr: bool,
        syncs: Arc<AtomicU32>,
    }

    impl Reconcile for Waits {
        type Event = ();
        const NAME: &'static str = "node";
        fn apply(&mut self, (): ()) -> bool {
            self.cidr = true;
            true
        }
        fn listed(&self) -> bool {
            true
        }
        fn dirty(&self) -> bool {
            false
        }
        fn pending(&self) -> Option<String> {
            (!self.cidr).then(|| "node-1's spec.podCIDR".to_string())
        }
        fn sync(&mut self, _full: bool) -> Result<String, String> {
            self.syncs.fetch_add(1, Ordering::SeqCst);
            Ok("synced".into())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconciler_waiting_on_the_cluster_is_not_ready_not_failing_and_syncs_once_it_comes() {
        let status = Arc::new(Status::new("node-1", "vxlan", &["node"]));
        let (stop_tx, stop) = watch::channel(false);
        let (tx, rx) = mpsc::unbounded_channel::<(Instant, ())>();
        let syncs = Arc::new(AtomicU32::new(0));
        let task = tokio::spawn(drive(Waits { cidr: false, syncs: syncs.clone() }, rx, status.clone(), stop));
        eventually("the wait to be recorded", || status.snapshot().reconcilers["node"].pending.is_some()).await;
        tokio::time::sleep(Duration::from_secs(120)).await;
        let rec = status.snapshot().reconcilers["node"].clone();
        assert_eq!((rec.errors, syncs.load(Ordering::SeqCst)), (0, 0), "no sync tried, none failed: {rec:?}");
        assert_eq!(status.ready().unwrap_err(), "node: node-1's spec.podCIDR");
        tx.send((Instant::now(), ())).unwrap();
        eventually("a sync once the Pod CIDR comes", || status.ready().is_ok()).await;
        assert_eq!(syncs.load(Ordering::SeqCst), 1);
        assert_eq!(status.snapshot().reconcilers["node"].pending, None);
        stop_tx.send(true).unwrap();
        let _ = task.await;
    }

    type Log = Arc<std::sync::Mutex<Vec<String>>>;

    fn said(log: &Log) -> Vec<String> {
        log.lock().unwrap().clone()
    }

    #[derive(Clone, Copy)]
    enum Hold {
        /// Until the log holds this line (at most 10 s).
        Line(&'static str),
        For(Duration),
    }

    /// A reconciler whose kernel writes it leaves to the driver. Each write says when it
    /// starts and ends; `hold` makes a write wait.
    struct Piped {
        log: Log,
        n: u32,
        dirty: bool,
        /// The write that fails.
        fails: u32,
        answers: bool,
        /// (write n, what it waits for before it ends).
        hold: Option<(u32, Hold)>,
        writing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Piped {
        fn new(log: &Log) -> Self {
            Self {
                log: log.clone(),
                n: 0,
                dirty: false,
                fails: 0,
                answers: false,
                hold: None,
                writing: Default::default(),
            }
        }
    }

    impl Reconcile for Piped {
        /// false: the event ends a re-list.
        type Event = bool;
        const NAME: &'static str = "policy";
        fn apply(&mut self, ev: bool) -> bool {
            self.dirty = true;
            ev
        }
        fn listed(&self) -> bool {
            true
        }
        fn dirty(&self) -> bool {
            self.dirty
        }
        fn sync(&mut self, _full: bool) -> Result<String, String> {
            unreachable!("the driver syncs in parts")
        }
        fn sync_parts(&mut self, full: bool) -> Result<Synced, String> {
            self.n += 1;
            self.dirty = false;
            let n = self.n;
            let log = self.log.clone();
            log.lock().unwrap().push(format!("plan {n}{}", if full { " full" } else { "" }));
            let (fails, hold, writing) = (n == self.fails, self.hold.filter(|h| h.0 == n), self.writing.clone());
            let write = move || {
                if writing.swap(true, Ordering::SeqCst) {
                    log.lock().unwrap().push("two writes at once".into());
                }
                log.lock().unwrap().push(format!("write {n}"));
                let began = Instant::now();
                match hold.map(|h| h.1) {
                    Some(Hold::Line(line)) => {
                        while !said(&log).iter().any(|l| l == line) && began.elapsed() < Duration::from_secs(10) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    Some(Hold::For(d)) => std::thread::sleep(d),
                    None => {}
                }
                log.lock().unwrap().push(format!("written {n}"));
                writing.store(false, Ordering::SeqCst);
                if fails { Err("the kernel refused it".into()) } else { Ok(format!("wrote {n}")) }
            };
            Ok(Synced::Write { write: Box::new(write), answers: self.answers })
        }
        fn after(&mut self, ok: bool) {
            self.log.lock().unwrap().push(format!("after {ok}"));
        }
    }

    /// Runs `r` under the driver until the log holds `until`; returns the log.
    async fn piped(r: Piped, log: &Log, events: &[(&str, bool)], until: &str) -> Vec<String> {
        let status = Arc::new(Status::new("node-1", "vxlan", &["policy"]));
        let (stop_tx, stop) = watch::channel(false);
        let (tx, rx) = mpsc::unbounded_channel::<(Instant, bool)>();
        let task = tokio::spawn(drive(r, rx, status.clone(), stop));
        // Each event once the log shows its line.
        for (after, ev) in events {
            eventually(&format!("{after:?} in {:?}", said(log)), || said(log).iter().any(|l| l == after)).await;
            tx.send((Instant::now(), *ev)).unwrap();
        }
        eventually(&format!("{until:?} in {:?}", said(log)), || said(log).iter().any(|l| l == until)).await;
        stop_tx.send(true).unwrap();
        let _ = task.await;
        said(log)
    }

    #[tokio::test]
    async fn the_next_batch_plans_while_the_kernel_takes_the_last_and_writes_keep_their_order() {
        let log = Log::default();
        let mut r = Piped::new(&log);
        // Write 1 ends only once batch 2 is planned: a driver that waits for each write
        // before it plans the next makes it wait 10 s and then plans 2 after it.
        r.hold = Some((1, Hold::Line("plan 2")));
        let got = piped(r, &log, &[("write 1", true)], "written 2").await;
        assert_eq!(got, ["plan 1 full", "write 1", "plan 2", "written 1", "write 2", "written 2"]);
    }

    #[tokio::test]
    async fn a_failed_write_drops_the_batch_planned_on_it_and_a_full_sync_follows() {
        let log = Log::default();
        let mut r = Piped::new(&log);
        r.fails = 1;
        r.hold = Some((1, Hold::Line("plan 2")));
        let got = piped(r, &log, &[("write 1", true)], "written 3").await;
        assert_eq!(
            got,
            ["plan 1 full", "write 1", "plan 2", "written 1", "after false", "plan 3 full", "write 3", "written 3"],
            "batch 2 was planned on a write that failed: never written"
        );
    }

    #[tokio::test]
    async fn a_full_sync_waits_for_the_write_on_its_way_to_the_kernel() {
        let log = Log::default();
        let mut r = Piped::new(&log);
        // A re-list ends while write 2 is in the kernel; the full sync it asks for reads
        // the kernel, so it plans only once write 2 is done.
        r.hold = Some((2, Hold::For(Duration::from_millis(300))));
        let got = piped(r, &log, &[("written 1", true), ("write 2", false)], "written 3").await;
        assert_eq!(
            got,
            [
                "plan 1 full",
                "write 1",
                "written 1",
                "plan 2",
                "write 2",
                "written 2",
                "plan 3 full",
                "write 3",
                "written 3"
            ]
        );
    }

    #[tokio::test]
    async fn a_write_someone_waits_on_is_done_before_after_tells_them() {
        let log = Log::default();
        let mut r = Piped::new(&log);
        r.answers = true;
        let got = piped(r, &log, &[("after true", true)], "written 2").await;
        assert_eq!(got[..7], ["plan 1 full", "write 1", "written 1", "after true", "plan 2", "write 2", "written 2"]);
    }
}
