//! A real `flatnet lab serve` process on 127.0.0.1 with a temporary store, for the
//! benchmarks that need a Kubernetes API (with its kubeconfig on disk, for peers that
//! read one).

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ApiServer {
    child: Child,
    pub kubeconfig: String,
    pub kubeconfig_path: PathBuf,
}

impl ApiServer {
    /// Starts it with its state under `dir` and waits until it accepts connections.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let token = flatnet_lab::kubeconfig::new_token();
        std::fs::write(dir.join("token"), &token)?;
        let pki = flatnet_lab::tls::load_or_create(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(std::env::current_exe()?)
            .args(["lab", "serve", "--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
            .arg(dir)
            .stderr(Stdio::null())
            .spawn()
            .context("start the API server")?;
        let kubeconfig = flatnet_lab::kubeconfig::render(&format!("https://127.0.0.1:{port}"), &pki.ca_pem, &token);
        let kubeconfig_path = dir.join("kubeconfig");
        std::fs::write(&kubeconfig_path, &kubeconfig)?;
        let server = Self { child, kubeconfig, kubeconfig_path };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("the API server did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client of it (call inside a runtime).
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig)?;
        Ok(kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?)?)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}
