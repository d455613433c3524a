//! Entry point when a runtime executes `flatnet` as a CNI plugin: read the environment
//! and stdin, run the verb, print the result or the error object.

use crate::{add, check, del, gc, status};
use flatnet_model::cni::{CniError, CniVersion, Command, ErrorCode, Invocation, NetConf, TeardownConf};
use std::io::{Read, Write};

/// Runs one verb. Ok(Some(json)) is printed on stdout; Ok(None) prints nothing.
pub fn run(inv: &Invocation, stdin: &[u8]) -> Result<Option<String>, CniError> {
    let needs = |version: Option<CniVersion>, given: &str, what: &str, since: CniVersion| {
        if version.is_some_and(|v| v >= since) {
            Ok(())
        } else {
            Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("{what} is not part of CNI {given}"),
                format!("{what} needs cniVersion {since} or later"),
            ))
        }
    };
    match inv.command {
        Command::Version => {
            let asked = NetConf::sniff_version(stdin);
            let out = serde_json::json!({
                "cniVersion": asked.as_deref().unwrap_or(CniVersion::LATEST.as_str()),
                "supportedVersions": CniVersion::supported_list(),
            });
            Ok(Some(out.to_string()))
        }
        Command::Add => {
            let conf = NetConf::parse(stdin)?;
            let result = add::add(&conf, inv)?;
            Ok(Some(result.to_json(conf.cni_version, &conf.cni_version_str).to_string()))
        }
        // DEL reads only what it needs and forgives the rest: a pod must never be left
        // Terminating because its config was edited since ADD.
        Command::Del => del::del(&TeardownConf::parse(stdin)?, inv).map(|()| None),
        Command::Check => {
            let conf = NetConf::parse(stdin)?;
            needs(Some(conf.cni_version), &conf.cni_version_str, "CHECK", CniVersion::CHECK_SINCE)?;
            check::check(&conf, inv).map(|()| None)
        }
        Command::Gc => {
            let conf = TeardownConf::parse(stdin)?;
            let given = NetConf::sniff_version(stdin).unwrap_or_default();
            needs(conf.cni_version, &given, "GC", CniVersion::GC_AND_STATUS_SINCE)?;
            gc::gc(&conf).map(|_| None)
        }
        Command::Status => {
            let conf = NetConf::parse(stdin)?;
            needs(Some(conf.cni_version), &conf.cni_version_str, "STATUS", CniVersion::GC_AND_STATUS_SINCE)?;
            status::status(&conf).map(|()| None)
        }
    }
}

/// The whole plugin process: returns the exit code.
pub fn main_from_env() -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = NetConf::sniff_version(&stdin).unwrap_or_else(|| CniVersion::LATEST.as_str().to_string());
    let outcome = read
        .map_err(|e| CniError::new(ErrorCode::Io, "could not read the network configuration from stdin", e.to_string()))
        .and_then(|_| Invocation::from_env(|k| std::env::var(k).ok()))
        .and_then(|inv| run(&inv, &stdin));
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(text) => {
            if let Some(text) = text {
                let _ = writeln!(out, "{text}");
            }
            0
        }
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            1
        }
    }
}
