//! The runtime side of CNI: execute a plugin binary the way containerd or CRI-O do
//! (`CNI_*` variables, the config on stdin, the result or error object on stdout), and
//! run a `.conflist` as a chain, passing each plugin's result to the next as prevResult.
//! The lab kubelet, the tests and the benchmarks use it.

use flatnet_model::cni::CniError;
use serde_json::{Map, Value, json};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One attachment as a runtime sees it.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("plugin {plugin:?} not found in {dirs:?}")]
    NotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("could not run {path}: {source}")]
    Spawn { path: PathBuf, source: std::io::Error },
    /// The plugin failed and printed a CNI error object.
    #[error("plugin {plugin} {verb} failed: {error} (code {})", error.code)]
    Plugin { plugin: String, verb: String, error: CniError },
    #[error("plugin {plugin} {verb} failed with {status} and no error object: {output}")]
    Garbled { plugin: String, verb: String, status: String, output: String },
    #[error("the network configuration is invalid: {0}")]
    Config(String),
}

impl ExecError {
    /// The CNI error code, when the plugin printed an error object.
    pub fn code(&self) -> Option<u32> {
        match self {
            Self::Plugin { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

pub fn find_plugin(plugin_type: &str, dirs: &[PathBuf]) -> Result<PathBuf, ExecError> {
    dirs.iter()
        .map(|d| d.join(plugin_type))
        .find(|p| p.is_file())
        .ok_or_else(|| ExecError::NotFound { plugin: plugin_type.into(), dirs: dirs.to_vec() })
}

/// Runs one plugin verb; returns its stdout parsed as JSON (Null when it printed nothing).
pub fn exec(
    binary: &Path,
    verb: &str,
    att: Option<&Attachment>,
    dirs: &[PathBuf],
    config: &Value,
) -> Result<Value, ExecError> {
    exec_with(&[], binary, verb, att, dirs, config)
}

/// [`exec`], the plugin started by `runner` (a command line the plugin's path is added
/// to, which runs it with the same input and environment) when one is given.
pub fn exec_with(
    runner: &[OsString],
    binary: &Path,
    verb: &str,
    att: Option<&Attachment>,
    dirs: &[PathBuf],
    config: &Value,
) -> Result<Value, ExecError> {
    let plugin = binary.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let path = std::env::join_paths(dirs).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let mut cmd = match runner.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    cmd.env_clear()
        .env("CNI_COMMAND", verb)
        .env("CNI_PATH", path)
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(a) = att {
        let args = a.args.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";");
        cmd.env("CNI_CONTAINERID", &a.container_id).env("CNI_NETNS", &a.netns).env("CNI_IFNAME", &a.ifname);
        if !args.is_empty() {
            cmd.env("CNI_ARGS", args);
        }
    }
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn { path: binary.into(), source })?;
    let stdin = serde_json::to_vec(config).expect("configs serialize");
    // The plugin may exit before reading stdin (a bad environment): ignore EPIPE.
    let _ = child.stdin.take().expect("piped").write_all(&stdin);
    let out = child.wait_with_output().map_err(|source| ExecError::Spawn { path: binary.into(), source })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        return Ok(if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap_or(Value::Null)
        });
    }
    match serde_json::from_str::<Value>(&stdout) {
        Ok(v) if v.get("code").is_some() => Err(ExecError::Plugin {
            plugin,
            verb: verb.into(),
            error: CniError {
                code: v["code"].as_u64().unwrap_or(0) as u32,
                msg: v["msg"].as_str().unwrap_or_default().into(),
                details: v["details"].as_str().unwrap_or_default().into(),
            },
        }),
        _ => Err(ExecError::Garbled {
            plugin,
            verb: verb.into(),
            status: out.status.to_string(),
            output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        }),
    }
}

/// A network configuration list (`.conflist`), or a single `.conf` seen as a list of one.
#[derive(Debug, Clone)]
pub struct ConfList {
    pub cni_version: String,
    pub name: String,
    pub plugins: Vec<Map<String, Value>>,
    /// What starts each plugin (see [`exec_with`]); empty: the plugin itself.
    pub runner: Vec<OsString>,
}

impl ConfList {
    pub fn parse(text: &str) -> Result<Self, ExecError> {
        let v: Value = serde_json::from_str(text).map_err(|e| ExecError::Config(e.to_string()))?;
        let obj = v.as_object().ok_or_else(|| ExecError::Config("not a JSON object".into()))?;
        let field = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
        let name = field("name").ok_or_else(|| ExecError::Config("\"name\" is missing".into()))?;
        let cni_version = field("cniVersion").ok_or_else(|| ExecError::Config("\"cniVersion\" is missing".into()))?;
        let plugins = match obj.get("plugins") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|p| p.as_object().cloned().ok_or_else(|| ExecError::Config("a plugin is not an object".into())))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(ExecError::Config("\"plugins\" is not a list".into())),
            None => vec![obj.clone()],
        };
        Ok(Self { cni_version, name, plugins, runner: Vec::new() })
    }

    /// The config plugin `i` receives: the list's name and version, the runtime config
    /// for the capabilities it declares, and the previous result.
    fn plugin_config(&self, i: usize, runtime_config: &Map<String, Value>, prev: &Value) -> Value {
        let mut conf = self.plugins[i].clone();
        conf.insert("name".into(), json!(self.name));
        conf.insert("cniVersion".into(), json!(self.cni_version));
        let caps: Map<String, Value> = conf
            .get("capabilities")
            .and_then(Value::as_object)
            .map(|caps| {
                caps.iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .filter_map(|(k, _)| runtime_config.get(k).map(|v| (k.clone(), v.clone())))
                    .collect()
            })
            .unwrap_or_default();
        if !caps.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(caps));
        }
        if !prev.is_null() {
            conf.insert("prevResult".into(), prev.clone());
        }
        Value::Object(conf)
    }

    fn binary(&self, i: usize, dirs: &[PathBuf]) -> Result<PathBuf, ExecError> {
        let t = self.plugins[i].get("type").and_then(Value::as_str).unwrap_or_default();
        find_plugin(t, dirs)
    }

    /// ADD through the chain; returns the last plugin's result.
    pub fn add(&self, att: &Attachment, dirs: &[PathBuf], rc: &Map<String, Value>) -> Result<Value, ExecError> {
        let mut prev = Value::Null;
        for i in 0..self.plugins.len() {
            prev = exec_with(
                &self.runner,
                &self.binary(i, dirs)?,
                "ADD",
                Some(att),
                dirs,
                &self.plugin_config(i, rc, &prev),
            )?;
        }
        Ok(prev)
    }

    /// CHECK through the chain with the cached result.
    pub fn check(
        &self,
        att: &Attachment,
        dirs: &[PathBuf],
        rc: &Map<String, Value>,
        result: &Value,
    ) -> Result<(), ExecError> {
        self.each("CHECK", 0..self.plugins.len(), att, dirs, rc, result)
    }

    /// DEL through the chain in reverse order, as the spec asks.
    pub fn del(
        &self,
        att: &Attachment,
        dirs: &[PathBuf],
        rc: &Map<String, Value>,
        result: &Value,
    ) -> Result<(), ExecError> {
        self.each("DEL", (0..self.plugins.len()).rev(), att, dirs, rc, result)
    }

    fn each(
        &self,
        verb: &str,
        order: impl Iterator<Item = usize>,
        att: &Attachment,
        dirs: &[PathBuf],
        rc: &Map<String, Value>,
        result: &Value,
    ) -> Result<(), ExecError> {
        for i in order {
            exec_with(&self.runner, &self.binary(i, dirs)?, verb, Some(att), dirs, &self.plugin_config(i, rc, result))?;
        }
        Ok(())
    }
}
