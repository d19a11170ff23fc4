#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod acpi_pm;
pub mod console;
pub mod debug_exit;
pub mod fw_cfg;
pub mod i8042;
pub mod pci_host;
pub mod serial;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Errors of the devices crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating an event file descriptor failed.
    #[error("cannot create an eventfd for a device interrupt: {0}")]
    EventFd(std::io::Error),
    /// A saved device state that cannot be restored.
    #[error("invalid saved state of the {device}: {reason}")]
    InvalidState {
        /// Which device.
        device: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What a device calls when the guest asks the VMM to stop.
pub trait ExitRequest: Send + Sync {
    /// The guest wrote `value` to the debug-exit port.
    fn debug_exit(&self, value: u32);
    /// The guest reset the machine through a device (e.g. the i8042).
    fn reset(&self);
    /// The guest powered the machine off (e.g. ACPI S5).
    fn power_off(&self);
}

/// An interrupt line backed by an eventfd, ready to be wired to KVM with an
/// irqfd. Implements vm-superio's [`vm_superio::Trigger`].
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Creates a non-blocking eventfd.
    pub fn new() -> Result<Self> {
        EventFd::new(EFD_NONBLOCK).map(EventFdTrigger).map_err(Error::EventFd)
    }

    /// The eventfd, to register as an irqfd.
    pub fn event_fd(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
