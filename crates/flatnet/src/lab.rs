//! `flatnet lab …`: the lab cluster on this machine. For now the control plane: a
//! Kubernetes-compatible API server with its store and controllers, reachable by
//! kubectl on 127.0.0.1 with the kubeconfig `lab up` writes.

use anyhow::{Context, bail};
use clap::Subcommand;
use flatnet_lab::apiserver::admission::ClusterConfig;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/flatnet/lab";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6443";

#[derive(Subcommand)]
pub enum LabCmd {
    /// Starts the lab control plane in the background and writes a kubeconfig.
    Up {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
    },
    /// Stops the lab and removes everything it made.
    Down {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Prints the path of the lab's kubeconfig.
    Kubeconfig {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Runs the control plane in the foreground (what `lab up` starts).
    Serve {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Also listen on 192.168.1.1 inside this network namespace (the lab underlay).
        #[arg(long)]
        underlay_netns: Option<PathBuf>,
    },
}

pub fn run(cmd: LabCmd) -> anyhow::Result<()> {
    match cmd {
        LabCmd::Up { state_dir, listen } => up(&state_dir, listen),
        LabCmd::Down { state_dir } => down(&state_dir),
        LabCmd::Kubeconfig { state_dir } => {
            let path = state_dir.join("kubeconfig");
            if !path.is_file() {
                bail!("the lab is not up (no {}): run `flatnet lab up`", path.display());
            }
            println!("{}", path.display());
            Ok(())
        }
        LabCmd::Serve { state_dir, listen, underlay_netns } => serve(&state_dir, listen, underlay_netns.as_deref()),
    }
}

fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("token")
}

fn underlay_path(state_dir: &Path) -> PathBuf {
    state_dir.join("netns").join("underlay")
}

fn serve(state_dir: &Path, listen: SocketAddr, underlay: Option<&Path>) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(token_path(state_dir))
        .with_context(|| format!("read the API token in {}", state_dir.display()))?
        .trim()
        .to_string();
    // The underlay socket is opened before any runtime thread exists (namespaces are per thread).
    let underlay_addr = SocketAddr::new(flatnet_lab::underlay::control_plane_ip().into(), listen.port());
    let underlay_listener = underlay
        .map(|path| {
            flatnet_lab::underlay::listen_in(path, underlay_addr)
                .with_context(|| format!("listen on {underlay_addr} in the underlay {}", path.display()))
        })
        .transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let mut listeners = vec![
            tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listen on {listen}: is another lab or API server running there?"))?,
        ];
        if let Some(l) = underlay_listener {
            listeners.push(tokio::net::TcpListener::from_std(l)?);
        }
        let pki = flatnet_lab::tls::load_or_create(state_dir)?;
        let cp = flatnet_lab::control_plane::start(state_dir, token, ClusterConfig::default(), listen.port()).await?;
        let (stopping, _) = tokio::sync::watch::channel(false);
        let mut servers = Vec::new();
        for l in listeners {
            eprintln!("flatnet lab control plane listening on https://{}", l.local_addr()?);
            let (api, pki, mut stopped) = (cp.api.clone(), pki.clone(), stopping.subscribe());
            servers.push(tokio::spawn(async move {
                flatnet_lab::control_plane::serve(api, l, &pki, async move {
                    let _ = stopped.changed().await;
                })
                .await
            }));
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stopping.send_replace(true);
        cp.shutdown().await;
        for s in servers {
            let _ = s.await;
        }
        Ok(())
    })
}

fn up(state_dir: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    let pid_file = state_dir.join("apiserver.pid");
    if let Some(pid) = running_pid(&pid_file) {
        println!("the lab control plane is already running (pid {pid})");
        println!("kubeconfig: {}", state_dir.join("kubeconfig").display());
        return Ok(());
    }
    std::fs::create_dir_all(state_dir).with_context(|| format!("create {}", state_dir.display()))?;
    let token = match std::fs::read_to_string(token_path(state_dir)) {
        Ok(t) => t.trim().to_string(),
        Err(_) => {
            let t = flatnet_lab::kubeconfig::new_token();
            write_private(&token_path(state_dir), &t)?;
            t
        }
    };
    flatnet_lab::tls::load_or_create(state_dir)?;
    let underlay = underlay_path(state_dir);
    std::fs::create_dir_all(underlay.parent().expect("has a parent"))?;
    flatnet_lab::underlay::create(&underlay).context("create the lab underlay network namespace (needs root)")?;
    let log = std::fs::File::create(state_dir.join("apiserver.log"))?;
    let me = std::env::current_exe()?;
    let child = std::process::Command::new(me)
        .args(["lab", "serve", "--state-dir"])
        .arg(state_dir)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--underlay-netns")
        .arg(&underlay)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("start the control plane")?;
    std::fs::write(&pid_file, child.id().to_string())?;
    let server = format!("https://{listen}");
    wait_healthy(listen, Duration::from_secs(20)).with_context(|| {
        format!("the control plane did not come up; its log is {}", state_dir.join("apiserver.log").display())
    })?;
    let kubeconfig = state_dir.join("kubeconfig");
    let ca = std::fs::read_to_string(state_dir.join("ca.crt")).context("read the lab's CA certificate")?;
    write_private(&kubeconfig, &flatnet_lab::kubeconfig::render(&server, &ca, &token))?;
    println!("flatnet lab control plane is up");
    println!("  API server   {server} (pid {})", child.id());
    println!(
        "  underlay     {} on bridge {} in {} (nodes reach the API at https://{}:{})",
        flatnet_lab::underlay::network(),
        flatnet_lab::underlay::BRIDGE,
        underlay.display(),
        flatnet_lab::underlay::control_plane_ip(),
        listen.port()
    );
    println!("  state        {}", state_dir.display());
    println!("  kubeconfig   {}", kubeconfig.display());
    println!("try:  KUBECONFIG=$(flatnet lab kubeconfig) kubectl get namespaces,services -A");
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    flatnet_lab::write_file(path, text, 0o600).with_context(|| format!("write {}", path.display()))
}

fn running_pid(pid_file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
    comm.contains("lab").then_some(pid)
}

/// Waits until the server accepts connections (the TLS port answers once the store is
/// open and the controllers run).
fn wait_healthy(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn down(state_dir: &Path) -> anyhow::Result<()> {
    if let Some(pid) = running_pid(&state_dir.join("apiserver.pid")) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    flatnet_lab::underlay::remove(&underlay_path(state_dir)).context("remove the lab underlay")?;
    match std::fs::remove_dir_all(state_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).context(format!("remove {}", state_dir.display())),
        _ => {
            println!("the lab is down; {} removed", state_dir.display());
            Ok(())
        }
    }
}
