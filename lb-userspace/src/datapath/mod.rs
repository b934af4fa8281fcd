//! The data path edge: the kernel's maps and links (`kernel`, with the object's kfunc
//! calls patched by `kfunc`), keeping them equal to the desired state (`reconcile`),
//! this node's devices and addresses (`devices`), what is programmed right now
//! (`status`), destroying connected sockets whose backend left their service
//! (`stale_sockets`, in every network namespace of the cgroup: `netns`), and the
//! Maglev tables written through an mmap of their map (`maglev_map`).

pub mod attachment;
pub mod capabilities;
pub mod devices;
pub mod kernel;
pub mod kfunc;
pub mod maglev_map;
pub mod netns;
pub mod reconcile;
pub mod service_maps;
pub mod stale_sockets;
pub mod status;

/// Errors of the data path edge.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("map {map}: {op} failed: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("loading the eBPF programs failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("link {path}: {message}")]
    Link {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("the pinned maps are inconsistent: {0}")]
    Inconsistent(String),
    #[error(
        "pin directory {path} is in use by another socklb agent (stop it first, or give this one another --bpffs)"
    )]
    PinDirInUse { path: std::path::PathBuf },
    #[error("{0}")]
    Capabilities(String),
    #[error(
        "creating map {map} with {entries} entries failed: {source} (lower {flag}, or raise the agent's memory limit: the kernel preallocates the map)"
    )]
    MapCreate {
        map: &'static str,
        entries: u32,
        flag: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("--cgroup {path} is not a directory of a cgroup v2 hierarchy ({found})")]
    NotCgroup2 {
        path: std::path::PathBuf,
        found: String,
    },
    #[error("pin directory {path}: refused: {reason}")]
    UnsafePinDir {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(transparent)]
    Kfunc(#[from] kfunc::KfuncPatchError),
}
