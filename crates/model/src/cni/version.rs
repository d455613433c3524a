//! CNI specification versions and what each one allows.

use super::error::{CniError, ErrorCode};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const ALL: [CniVersion; 5] = [Self::V0_3_0, Self::V0_3_1, Self::V0_4_0, Self::V1_0_0, Self::V1_1_0];
    pub const LATEST: CniVersion = Self::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    pub fn parse(s: &str) -> Result<Self, CniError> {
        Self::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
            CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("cniVersion {s:?} is not supported"),
                format!("flatnet supports {}", Self::supported_list().join(", ")),
            )
        })
    }

    pub fn supported_list() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.as_str()).collect()
    }

    /// CHECK arrived in 0.4.0.
    pub const CHECK_SINCE: CniVersion = Self::V0_4_0;
    /// GC and STATUS arrived in 1.1.0.
    pub const GC_AND_STATUS_SINCE: CniVersion = Self::V1_1_0;
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        for v in CniVersion::ALL {
            assert_eq!(CniVersion::parse(v.as_str()).unwrap(), v);
        }
        assert!(CniVersion::V0_3_1 < CniVersion::V1_0_0);
        let e = CniVersion::parse("0.2.0").unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.details.contains("1.1.0"));
        assert!(CniVersion::V0_3_1 < CniVersion::CHECK_SINCE);
        assert!(CniVersion::V1_0_0 >= CniVersion::CHECK_SINCE);
        assert!(CniVersion::V1_0_0 < CniVersion::GC_AND_STATUS_SINCE);
    }
}
