//! The CNI error object and the specification's well-known codes.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidNetworkConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin is not available to add containers.
    NotAvailable = 50,
    /// Everything else: a kernel call refused, an address pool exhausted, a CHECK mismatch.
    /// 100 and up are the plugin's own codes.
    Plugin = 100,
}

/// What a plugin prints on stdout when a verb fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { code: code as u32, msg: msg.into(), details: details.into() }
    }

    pub fn plugin(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(ErrorCode::Plugin, msg, details)
    }

    pub fn is(&self, code: ErrorCode) -> bool {
        self.code == code as u32
    }

    /// The error object as JSON, for the version the runtime asked for.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            #[serde(flatten)]
            err: &'a CniError,
        }
        serde_json::to_string(&Wire { cni_version, err: self }).expect("error objects serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        let e = CniError::new(ErrorCode::InvalidNetworkConfig, "bad subnet", "use a CIDR");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "bad subnet");
        assert_eq!(v["details"], "use a CIDR");
        let e = CniError::plugin("x", "");
        assert!(!e.to_json("1.0.0").contains("details"));
    }
}
