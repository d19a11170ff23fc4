//! How a run ends, and the process exit status for each ending.

use std::fmt;

/// Exit status: the guest stopped cleanly (halt, power-off, reset).
const EXIT_CLEAN: u8 = 0;
/// Exit status: the VMM failed (bad input, KVM error).
pub const EXIT_VMM_ERROR: u8 = 2;
/// Exit status: KVM could not emulate a guest instruction (internal error).
const EXIT_INTERNAL_ERROR: u8 = 4;
/// Exit status: KVM could not enter the guest (invalid guest state).
const EXIT_FAIL_ENTRY: u8 = 6;
/// Exit status: the guest reported a crash (SYSTEM_EVENT crash).
const EXIT_GUEST_CRASH: u8 = 8;
/// Exit status: an exit reason this VMM does not handle.
const EXIT_UNHANDLED: u8 = 10;

/// Why the guest was reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetCause {
    /// A triple fault (KVM_EXIT_SHUTDOWN), as after Linux's `reboot=t`.
    TripleFault,
    /// KVM_SYSTEM_EVENT_RESET (e.g. a PSCI or firmware reset).
    SystemEvent,
    /// The guest asked a device to reset the CPU (e.g. the i8042).
    Device,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A vCPU executed HLT with nothing to wake it.
    Halted {
        /// The vCPU.
        vcpu: u8,
        /// Whether RFLAGS.IF was set.
        interrupts_enabled: bool,
    },
    /// The guest reset the machine; the VMM does not restart it.
    Reset {
        /// The vCPU that caused it.
        vcpu: u8,
        /// How.
        cause: ResetCause,
    },
    /// The guest powered off (KVM_SYSTEM_EVENT_SHUTDOWN).
    PowerOff {
        /// The vCPU.
        vcpu: u8,
    },
    /// The guest powered off through a device (ACPI S5).
    DevicePowerOff,
    /// The guest reported a crash (KVM_SYSTEM_EVENT_CRASH).
    GuestCrash {
        /// The vCPU.
        vcpu: u8,
    },
    /// A system event of a type this VMM does not know.
    UnknownSystemEvent {
        /// The vCPU.
        vcpu: u8,
        /// The event type.
        kind: u32,
    },
    /// The guest wrote `value` to the debug-exit port.
    DebugExit {
        /// The written value.
        value: u32,
    },
    /// KVM could not handle an instruction (KVM_EXIT_INTERNAL_ERROR).
    InternalError {
        /// The vCPU.
        vcpu: u8,
        /// KVM's suberror (1 = emulation failure).
        suberror: u32,
        /// Extra data words KVM gave.
        data: Vec<u64>,
        /// Where the vCPU stood, if it could be read.
        context: Option<vmm_vcpu::FaultContext>,
    },
    /// KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY).
    FailEntry {
        /// The vCPU.
        vcpu: u8,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// An exit this VMM has no handler for.
    Unhandled {
        /// The vCPU.
        vcpu: u8,
        /// The exit, as text.
        exit: String,
    },
    /// KVM_RUN itself failed.
    RunFailed {
        /// The vCPU.
        vcpu: u8,
        /// The error.
        error: String,
    },
    /// The VMM failed while the guest ran (e.g. a thread could not be
    /// sandboxed).
    VmmError {
        /// What failed.
        error: String,
    },
    /// The VMM was asked to stop (e.g. by a signal).
    Stopped {
        /// The reason, for the report.
        reason: String,
        /// The exit status to use.
        status: u8,
    },
}

impl Outcome {
    /// The process exit status for this outcome (documented in the README).
    pub fn exit_status(&self) -> u8 {
        match self {
            Outcome::Halted { .. }
            | Outcome::Reset { .. }
            | Outcome::PowerOff { .. }
            | Outcome::DevicePowerOff => EXIT_CLEAN,
            Outcome::DebugExit { value } => (value.wrapping_shl(1) | 1) as u8,
            Outcome::InternalError { .. } => EXIT_INTERNAL_ERROR,
            Outcome::FailEntry { .. } => EXIT_FAIL_ENTRY,
            Outcome::GuestCrash { .. } => EXIT_GUEST_CRASH,
            Outcome::UnknownSystemEvent { .. } | Outcome::Unhandled { .. } => EXIT_UNHANDLED,
            Outcome::RunFailed { .. } | Outcome::VmmError { .. } => EXIT_VMM_ERROR,
            Outcome::Stopped { status, .. } => *status,
        }
    }

    /// True for the endings a user expects from a healthy guest.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            Outcome::Halted { .. }
                | Outcome::Reset { .. }
                | Outcome::PowerOff { .. }
                | Outcome::DevicePowerOff
                | Outcome::DebugExit { .. }
                | Outcome::Stopped { status: 0, .. }
        )
    }
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Halted { vcpu, interrupts_enabled: false } => {
                write!(f, "vCPU {vcpu} halted with interrupts disabled")
            }
            Outcome::Halted { vcpu, interrupts_enabled: true } => write!(
                f,
                "vCPU {vcpu} halted with interrupts enabled but no interrupt source; stopping"
            ),
            Outcome::Reset { vcpu, cause: ResetCause::TripleFault } => {
                write!(f, "guest reset by a triple fault (KVM_EXIT_SHUTDOWN) on vCPU {vcpu}")
            }
            Outcome::Reset { vcpu, cause: ResetCause::SystemEvent } => {
                write!(f, "guest reset (KVM_SYSTEM_EVENT_RESET) on vCPU {vcpu}")
            }
            Outcome::Reset { vcpu, cause: ResetCause::Device } => {
                write!(f, "guest reset through a device on vCPU {vcpu}")
            }
            Outcome::PowerOff { vcpu } => {
                write!(f, "guest powered off (KVM_SYSTEM_EVENT_SHUTDOWN) on vCPU {vcpu}")
            }
            Outcome::DevicePowerOff => write!(f, "guest powered off (ACPI sleep state S5)"),
            Outcome::GuestCrash { vcpu } => {
                write!(f, "guest crashed (KVM_SYSTEM_EVENT_CRASH) on vCPU {vcpu}")
            }
            Outcome::UnknownSystemEvent { vcpu, kind } => {
                write!(f, "unknown KVM system event type {kind} on vCPU {vcpu}")
            }
            Outcome::DebugExit { value } => write!(
                f,
                "guest wrote {value:#x} to the debug-exit port (exit status {})",
                self.exit_status()
            ),
            Outcome::InternalError { vcpu, suberror, data, context } => {
                let kind = match suberror {
                    1 => " (emulation failure: KVM cannot emulate the instruction)",
                    2 => " (simultaneous exception)",
                    3 => " (delivery event)",
                    _ => "",
                };
                write!(f, "KVM internal error on vCPU {vcpu}: suberror {suberror}{kind}")?;
                match context {
                    Some(ctx) => {
                        write!(f, ", RIP {:#x}, CS {:#06x}", ctx.rip, ctx.cs)?;
                        if ctx.cs_base != 0 {
                            write!(f, " (base {:#x})", ctx.cs_base)?;
                        }
                        match &ctx.bytes {
                            Some(bytes) => write!(f, ", bytes at RIP: {}", hex_bytes(bytes))?,
                            None => write!(f, ", RIP is not in guest RAM")?,
                        }
                    }
                    None => write!(f, ", registers unreadable")?,
                }
                if !data.is_empty() {
                    let words: Vec<String> = data.iter().map(|w| format!("{w:#x}")).collect();
                    write!(f, ", data [{}]", words.join(", "))?;
                }
                Ok(())
            }
            Outcome::FailEntry { vcpu, reason } => write!(
                f,
                "KVM could not enter the guest on vCPU {vcpu} (KVM_EXIT_FAIL_ENTRY, \
                 hardware reason {reason:#x})"
            ),
            Outcome::Unhandled { vcpu, exit } => {
                write!(f, "unhandled exit on vCPU {vcpu}: {exit}")
            }
            Outcome::RunFailed { vcpu, error } => {
                write!(f, "KVM_RUN failed on vCPU {vcpu}: {error}")
            }
            Outcome::VmmError { error } => write!(f, "error: {error}"),
            Outcome::Stopped { reason, .. } => write!(f, "stopped: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_endings_exit_zero() {
        assert_eq!(Outcome::Halted { vcpu: 0, interrupts_enabled: false }.exit_status(), 0);
        assert_eq!(Outcome::Reset { vcpu: 0, cause: ResetCause::TripleFault }.exit_status(), 0);
        assert_eq!(Outcome::PowerOff { vcpu: 1 }.exit_status(), 0);
        assert_eq!(Outcome::DevicePowerOff.exit_status(), 0);
        assert!(Outcome::DevicePowerOff.is_clean());
    }

    #[test]
    fn debug_exit_status_is_odd_and_faults_are_distinct_and_even() {
        assert_eq!(Outcome::DebugExit { value: 5 }.exit_status(), 11);
        assert_eq!(Outcome::DebugExit { value: 0 }.exit_status(), 1);
        let faults = [
            Outcome::InternalError { vcpu: 0, suberror: 1, data: vec![], context: None },
            Outcome::FailEntry { vcpu: 0, reason: 0x21 },
            Outcome::GuestCrash { vcpu: 0 },
            Outcome::Unhandled { vcpu: 0, exit: "Debug".into() },
            Outcome::RunFailed { vcpu: 0, error: "EFAULT".into() },
        ];
        let statuses: Vec<u8> = faults.iter().map(Outcome::exit_status).collect();
        assert_eq!(statuses, vec![4, 6, 8, 10, 2]);
        assert!(faults.iter().all(|o| !o.is_clean()));
    }

    #[test]
    fn internal_error_report_names_rip_cs_and_bytes() {
        let outcome = Outcome::InternalError {
            vcpu: 0,
            suberror: 1,
            data: vec![0x10],
            context: Some(vmm_vcpu::FaultContext {
                rip: 0x10_0004,
                cs: 8,
                cs_base: 0,
                bytes: Some(vec![0x0f, 0x0b]),
            }),
        };
        assert_eq!(
            outcome.to_string(),
            "KVM internal error on vCPU 0: suberror 1 (emulation failure: KVM cannot emulate \
             the instruction), RIP 0x100004, CS 0x0008, bytes at RIP: 0f 0b, data [0x10]"
        );
    }
}
