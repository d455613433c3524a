//! What the runtime tells a plugin through `CNI_*` environment variables.

use super::error::{CniError, ErrorCode};
use crate::names::{invalid_ifname_reason, is_valid_identifier};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }
}

/// A validated invocation. Fields a verb does not need are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    /// `CNI_ARGS` as key/value pairs (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, …).
    pub args: Vec<(String, String)>,
}

fn invalid_env(msg: String, details: &str) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, msg, details)
}

impl Invocation {
    /// Reads and validates the variables the command needs; `get` is the environment.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
        let raw = non_empty("CNI_COMMAND").ok_or_else(|| {
            invalid_env("CNI_COMMAND is not set".into(), "a runtime sets it to ADD, DEL, CHECK, GC, STATUS or VERSION")
        })?;
        let command = Command::parse(&raw).ok_or_else(|| {
            invalid_env(
                format!("CNI_COMMAND={raw:?} is not a CNI command"),
                "expected ADD, DEL, CHECK, GC, STATUS or VERSION",
            )
        })?;
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let require = |k: &str, needed: bool| -> Result<Option<String>, CniError> {
            match non_empty(k) {
                None if needed => {
                    Err(invalid_env(format!("{k} is not set"), &format!("the runtime must set {k} for {raw}")))
                }
                v => Ok(v),
            }
        };
        let container_id = require("CNI_CONTAINERID", needs_attachment)?;
        let netns = require("CNI_NETNS", matches!(command, Command::Add | Command::Check))?;
        let ifname = require("CNI_IFNAME", needs_attachment)?;
        if let Some(id) = &container_id
            && !is_valid_identifier(id)
        {
            return Err(invalid_env(
                format!("CNI_CONTAINERID={id:?} has invalid characters"),
                "use letters, digits, '_', '-' and '.', starting with a letter or digit",
            ));
        }
        if let Some(name) = &ifname
            && let Some(why) = invalid_ifname_reason(name)
        {
            return Err(invalid_env(format!("CNI_IFNAME={name:?} {why}"), "pick a name such as eth0"));
        }
        let raw_args = get("CNI_ARGS").unwrap_or_default();
        let args = match command {
            Command::Add | Command::Check => parse_args(&raw_args)?,
            // DEL must tear down even if the runtime's CNI_ARGS are off.
            Command::Del => parse_args(&raw_args).unwrap_or_default(),
            _ => Vec::new(),
        };
        Ok(Self { command, container_id, netns, ifname, args })
    }

    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn parse_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    raw.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| {
                invalid_env(format!("CNI_ARGS has {pair:?}, which is not KEY=VALUE"), "separate pairs with ';'")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Invocation, CniError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Invocation::from_env(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web-0"),
    ];

    #[test]
    fn full_add() {
        let inv = env(ADD).unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.arg("K8S_POD_NAME"), Some("web-0"));
    }

    #[test]
    fn missing_variables_are_code_4_and_named() {
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_COMMAND"] {
            let pairs: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != missing).collect();
            let e = env(&pairs).unwrap_err();
            assert_eq!(e.code, 4, "{missing}");
            assert!(e.msg.contains(missing), "{e}");
        }
    }

    #[test]
    fn del_does_not_need_netns_and_version_needs_nothing() {
        let e = env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]);
        assert!(e.is_ok());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "GC")]).is_ok());
    }

    #[test]
    fn bad_values() {
        let mut pairs = ADD.to_vec();
        pairs[3] = ("CNI_IFNAME", "much-too-long-ifname");
        let e = env(&pairs).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("15 bytes"), "{e}");
        pairs[3] = ("CNI_IFNAME", "eth0");
        pairs[1] = ("CNI_CONTAINERID", "bad id!");
        assert_eq!(env(&pairs).unwrap_err().code, 4);
        assert_eq!(env(&[("CNI_COMMAND", "FROB")]).unwrap_err().code, 4);
        pairs[1] = ("CNI_CONTAINERID", "abc");
        pairs[4] = ("CNI_ARGS", "novalue");
        assert_eq!(env(&pairs).unwrap_err().code, 4);
        assert!(env(&[("CNI_COMMAND", "VERSION"), ("CNI_ARGS", "novalue")]).is_ok(), "only ADD and CHECK use CNI_ARGS");
        let del = [("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0"), ("CNI_ARGS", "novalue")];
        assert!(env(&del).is_ok(), "DEL forgives bad CNI_ARGS");
    }
}
