//! Seeing a flatnet network: the path a packet takes, hop by hop, read from the API and
//! from the kernel of each node it crosses (and confirmed by a real packet); a node's
//! status and the doctor's checks; the lab's nodes and its demo's path checks. This
//! gathers; the command line prints.

pub mod agent_api;
pub mod doctor;
pub mod gather;
pub mod lab_demo;
pub mod lab_nodes;
pub mod probe;
pub mod status;
pub mod trace;
