//! Where the agent learns about Services, EndpointSlices and its Node. Each source
//! validates raw objects into models (socklb_core::model) and reports changes as
//! ClusterEvents; the core never sees raw input.
//!
//! - `kube`: the Kubernetes API (list and watch);
//! - `manifest_dir`: a directory of manifests, re-read as files change;
//! - `manifest_files`: reading and validating manifest files (also `socklb plan`).

pub mod kube;
pub mod manifest_dir;
pub mod manifest_files;
