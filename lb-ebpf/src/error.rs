//! The kernel programs' one error type: something inside socklb itself failed.
//!
//! Every error is internal (the agent's maps disagree with each other, a helper
//! refused a packet); none is a service's verdict. The hooks never fail traffic for
//! one: a socket proceeds untranslated, a packet passes, and [`Error::counter`] is
//! counted.
//!
//! Where an error is raised it names its [`Cause`] (`.ok_or(Cause::SlotMissing)?`).
//! The cause is for the reader: [`Error`] does not keep it, since all causes share one
//! counter. An enum that carried it through every `Result` costs the socket hooks
//! verifier work (about 8% more for connect4 in a test), which nothing would buy
//! yet; a per-cause counter would make `Error` keep it.
use lb_common::Counter;

/// An internal failure; see the module documentation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Error;

/// What failed, named where an [`Error`] is raised.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A packet helper failed: the packet is shorter than its headers, or a load,
    /// store or checksum update was refused.
    Packet,
    /// A frontend's action is not a [`lb_common::SvcAction`].
    UnknownAction,
    /// A frontend forwards but has no backend slot.
    NoSlots,
    /// A backend slot at or below the frontend's count is missing.
    SlotMissing,
    /// A slot names a backend id the backend map does not hold.
    BackendMissing,
    /// A device with the TC programs has no entry in the device map (SNAT address).
    DeviceMissing,
    /// The FIB has no route for a packet this node must forward itself.
    NoRoute,
    /// An IPv6 tail call failed (the agent has not filled the program array).
    TailCall,
}

impl Error {
    /// The counter an error is recorded in.
    #[inline(always)]
    pub const fn counter(self) -> Counter {
        Counter::Inconsistent
    }
}

impl From<Cause> for Error {
    #[inline(always)]
    fn from(_: Cause) -> Self {
        Error
    }
}

/// aya-ebpf's packet helpers (load, store, checksum updates) fail with an errno.
impl From<i64> for Error {
    #[inline(always)]
    fn from(_: i64) -> Self {
        Cause::Packet.into()
    }
}
