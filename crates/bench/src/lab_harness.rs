//! A throwaway lab for benchmarks: `flatnet lab up` as a child process with its own
//! state directory and API port (inside the caller's sandbox), pods created through the
//! API, and `lab down` when dropped.

use anyhow::Context;
use flatnet_lab::layout::Layout;
use flatnet_lab::lifecycle::scenario::ReadyPod;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub struct BenchLab {
    _dir: tempfile::TempDir,
    /// `lab up`'s arguments, to run it again (it starts what is missing).
    args: Vec<String>,
    pub layout: Layout,
    pub rt: tokio::runtime::Runtime,
    pub client: kube::Client,
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        let me = std::env::current_exe().expect("own path");
        let _ = Command::new(me).args(["lab", "down", "--state-dir"]).arg(&self.layout.state).output();
    }
}

impl BenchLab {
    pub fn up(nodes: usize, backend: &str) -> anyhow::Result<Self> {
        Self::up_with(nodes, backend, &[])
    }

    /// `up` with more `lab up` arguments (e.g. `--kube-proxy node-2`).
    pub fn up_with(nodes: usize, backend: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut args: Vec<String> =
            ["lab", "up", "--nodes", &nodes.to_string(), "--backend", backend].map(String::from).to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        args.extend(["--listen".into(), format!("127.0.0.1:{port}"), "--state-dir".into()]);
        args.push(dir.path().to_string_lossy().into_owned());
        let out = Command::new(std::env::current_exe()?).args(&args).output()?;
        let layout = Layout::new(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let client = match out.status.success() {
            true => rt.block_on(flatnet_lab::lifecycle::connect::client(&layout)),
            false => Err(anyhow::anyhow!(
                "lab up failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
        };
        match client {
            Ok(client) => Ok(Self { _dir: dir, args, layout, rt, client }),
            Err(e) => {
                // Whatever it made goes before the directory does.
                let me = std::env::current_exe()?;
                let _ = Command::new(me).args(["lab", "down", "--state-dir"]).arg(dir.path()).output();
                Err(e)
            }
        }
    }

    /// The `--listen` this lab was brought up with, for more `lab` commands on it.
    pub fn listen_args(&self) -> Vec<String> {
        let at = self.args.iter().position(|a| a == "--listen").expect("lab up is given --listen");
        self.args[at..=at + 1].to_vec()
    }

    /// Starts `lab up` again, in the background: it starts what is missing (a killed
    /// kubelet, say). Wait for the child to know it finished.
    pub fn up_again(&self) -> anyhow::Result<std::process::Child> {
        Ok(Command::new(std::env::current_exe()?)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?)
    }

    /// Creates pod `name` in `default` (on `node`, or wherever the scheduler puts it);
    /// `serves` gives it the built-in server on port 80, else it idles.
    pub fn pod(&self, name: &str, node: Option<&str>, serves: bool) -> anyhow::Result<()> {
        let obj = flatnet_lab::lifecycle::scenario::pod(name, "default", node, serves);
        self.rt.block_on(flatnet_lab::lifecycle::apply::apply_one(&self.client, obj))?;
        Ok(())
    }

    /// Waits until `count` pods are Ready.
    pub fn wait_ready(&self, count: usize, within: Duration) -> anyhow::Result<Vec<ReadyPod>> {
        self.rt.block_on(flatnet_lab::lifecycle::scenario::wait_ready(&self.client, "default", count, within))
    }

    pub fn pod_netns(&self, name: &str) -> anyhow::Result<PathBuf> {
        Ok(flatnet_lab::lifecycle::exec::find_sandbox(&self.layout, "default", name)
            .with_context(|| format!("pod {name}'s sandbox"))?
            .netns)
    }
}
