#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod cpuid;
pub mod kvm;
pub mod modes;
pub mod pause;
mod platform;
pub mod seccomp;
pub mod state;
pub mod thread;
mod vcpu;
mod vm;

pub use cpuid::CpuTopology;
pub use vcpu::{FaultContext, Vcpu};
pub use vm::Vm;

/// Errors of VM and vCPU set-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The KVM device could not be opened.
    #[error("cannot open {path}: {source}{hint}")]
    OpenKvm {
        /// The device path.
        path: String,
        /// The OS error.
        source: kvm_ioctls::Error,
        /// A hint on how to fix it.
        hint: &'static str,
    },
    /// The path is not a KVM device.
    #[error("{0} is not a KVM device (KVM_GET_API_VERSION failed)")]
    NotKvm(String),
    /// The KVM API version is not the stable one.
    #[error("KVM API version is {0}, but this VMM needs version 12")]
    ApiVersion(i32),
    /// A capability this VMM needs is missing.
    #[error("KVM lacks the capability {0}, which this VMM needs")]
    MissingCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// Registering guest RAM failed.
    #[error(transparent)]
    Memory(#[from] vmm_memory::Error),
    /// Writing boot structures into guest memory failed.
    #[error("writing boot structures to guest memory failed: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// Installing the kick signal handler failed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    /// Building or installing a seccomp filter failed (running without
    /// filters would avoid it).
    #[error("seccomp filter: {0}")]
    Seccomp(String),
    /// Spawning a vCPU thread failed.
    #[error("cannot spawn the vCPU thread: {0}")]
    Spawn(std::io::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn kvm_error(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}
