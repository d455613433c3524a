use std::io;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel refused a request; `errno` says why.
    #[error("{op}: {source}")]
    Refused { op: String, source: io::Error },
    #[error("{op}: could not decode the kernel's answer: {msg}")]
    Decode { op: String, msg: String },
}

impl KernelError {
    pub fn refused(op: impl Into<String>, source: io::Error) -> Self {
        Self::Refused { op: op.into(), source }
    }

    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Refused { source, .. } => source.raw_os_error(),
            Self::Decode { .. } => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL))
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}

pub type Result<T, E = KernelError> = std::result::Result<T, E>;
