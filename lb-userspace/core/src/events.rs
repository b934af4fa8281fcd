//! What the sources of truth (a manifest directory, the Kubernetes API) tell the
//! agent's core. Sources validate objects into models; the core never sees raw input.
pub use crate::model::ObjectKey;
use crate::model::{NodeModel, ServiceModel, SliceModel};

/// One change reported by a source.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterEvent {
    /// A Service was created or changed and is proxied.
    ServiceApplied(ServiceModel),
    /// A Service was deleted, or changed so that it is no longer proxied (headless,
    /// ExternalName, taken by another proxy via service.kubernetes.io/service-proxy-name).
    ServiceDeleted(ObjectKey),
    /// An EndpointSlice was created or changed.
    SliceApplied(SliceModel),
    /// An EndpointSlice was deleted or is no longer used (IPv6, headless label).
    SliceDeleted(ObjectKey),
    /// This node's Node object (zone label) appeared or changed.
    NodeApplied(NodeModel),
    /// The complete state from a source that is not incremental (a manifest
    /// directory): replaces services, slices and the node at once.
    Snapshot {
        services: Vec<ServiceModel>,
        slices: Vec<SliceModel>,
        node: NodeModel,
    },
    /// A complete (re)list of Services: replaces the whole set atomically at once.
    /// `invalid` lists objects present in the list that failed validation: the core
    /// keeps the last good version it had of those (bad input loses nothing).
    ServicesListed {
        services: Vec<ServiceModel>,
        invalid: Vec<ObjectKey>,
    },
    /// A complete (re)list of EndpointSlices, as above.
    SlicesListed {
        slices: Vec<SliceModel>,
        invalid: Vec<ObjectKey>,
    },
}
