//! Running a lab on this machine: bringing it up and down, the two long-running
//! processes it starts, its cluster DNS, and what commands do against a running lab
//! (apply, exec, the pods scenarios deploy). Commands parse and print; this does the work.

pub mod apply;
pub mod cluster_dns;
pub mod connect;
pub mod down;
pub mod exec;
pub mod processes;
pub mod scenario;
pub mod settings;
pub mod up;
