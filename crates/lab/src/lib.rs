//! flatnet lab's control plane: a Kubernetes-compatible API server for the resources pod
//! networking uses, over an embedded crash-safe store, with the controllers a cluster
//! runs (node IPAM, Service IPs, EndpointSlices, a scheduler).

pub mod apiserver;
pub mod control_plane;
pub mod controllers;
pub mod kubeconfig;
pub mod store;
pub mod tls;
pub mod underlay;
