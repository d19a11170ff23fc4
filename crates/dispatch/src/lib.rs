#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod control;
mod outcome;
mod stats;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vmm_vcpu::Vcpu;

pub use control::{BlockedSignals, RunControl};
pub use outcome::{EXIT_VMM_ERROR, Outcome, ResetCause};
use stats::{Classified, ExitReason};
pub use stats::{ExitReport, ExitStats, MmioCount, PortCount, stats_json};

/// Counters of accesses no device claimed.
#[derive(Debug, Default)]
pub struct Stats {
    /// Port reads and writes to no device.
    pub unclaimed_pio: AtomicU64,
    /// MMIO reads and writes to no device.
    pub unclaimed_mmio: AtomicU64,
}

/// What to do after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Enter the guest again.
    Continue,
    /// The run is over.
    Finish(Outcome),
    /// The guest halted; whether that ends the run depends on its registers.
    Halt,
    /// KVM reported an internal error; the details are in the vCPU's state.
    InternalError,
}

/// Routes exits of any number of vCPUs to one set of buses.
pub struct Dispatcher {
    bus: Arc<IoManager>,
    stats: Stats,
    report_triple_faults: bool,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher over `bus`.
    pub fn new(bus: Arc<IoManager>) -> Self {
        Dispatcher { bus, stats: Stats::default(), report_triple_faults: false }
    }

    /// Logs a triple fault at warn level with the vCPU's RIP. A triple
    /// fault still ends the run as a reset (it cannot be told from Linux's
    /// `reboot=t`), but for a guest that has no reason to reset itself it
    /// is a crash worth a line.
    pub fn report_triple_faults(mut self, report: bool) -> Self {
        self.report_triple_faults = report;
        self
    }

    /// The unclaimed-access counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn unclaimed(&self, counter: &AtomicU64, kind: &str, write: bool, address: u64, len: usize) {
        counter.fetch_add(1, Ordering::Relaxed);
        let op = if write { "write to" } else { "read from" };
        log::debug!("unclaimed {len}-byte {kind} {op} {address:#x}");
    }

    /// Handles one exit of vCPU `vcpu`.
    pub fn handle(&self, vcpu: u8, exit: VcpuExit<'_>) -> Step {
        match exit {
            VcpuExit::IoIn(port, data) => {
                if self.bus.pio_read(PioAddress(port), data).is_err() {
                    data.fill(0xff);
                    self.unclaimed(
                        &self.stats.unclaimed_pio,
                        "port",
                        false,
                        port.into(),
                        data.len(),
                    );
                }
                Step::Continue
            }
            VcpuExit::IoOut(port, data) => {
                if self.bus.pio_write(PioAddress(port), data).is_err() {
                    self.unclaimed(
                        &self.stats.unclaimed_pio,
                        "port",
                        true,
                        port.into(),
                        data.len(),
                    );
                }
                Step::Continue
            }
            VcpuExit::MmioRead(address, data) => {
                if self.bus.mmio_read(MmioAddress(address), data).is_err() {
                    data.fill(0xff);
                    self.unclaimed(&self.stats.unclaimed_mmio, "MMIO", false, address, data.len());
                }
                Step::Continue
            }
            VcpuExit::MmioWrite(address, data) => {
                if self.bus.mmio_write(MmioAddress(address), data).is_err() {
                    self.unclaimed(&self.stats.unclaimed_mmio, "MMIO", true, address, data.len());
                }
                Step::Continue
            }
            VcpuExit::Hlt => Step::Halt,
            VcpuExit::Shutdown => {
                Step::Finish(Outcome::Reset { vcpu, cause: ResetCause::TripleFault })
            }
            VcpuExit::SystemEvent(kind, _) => Step::Finish(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Outcome::PowerOff { vcpu },
                KVM_SYSTEM_EVENT_RESET => Outcome::Reset { vcpu, cause: ResetCause::SystemEvent },
                KVM_SYSTEM_EVENT_CRASH => Outcome::GuestCrash { vcpu },
                kind => Outcome::UnknownSystemEvent { vcpu, kind },
            }),
            VcpuExit::FailEntry(reason, _cpu) => Step::Finish(Outcome::FailEntry { vcpu, reason }),
            VcpuExit::InternalError => Step::InternalError,
            // Spurious: a signal or request arrived; the loop checks for a stop.
            VcpuExit::Intr => Step::Continue,
            other => Step::Finish(Outcome::Unhandled { vcpu, exit: format!("{other:?}") }),
        }
    }

    /// Runs `vcpu` until its run ends or `control` says to stop, and returns
    /// how its run ended (also reported to `control`). Before each entry
    /// into the guest the vCPU parks if `control`'s gate asks for a pause.
    /// With `stats`, every exit is counted and timed (one uncontended lock
    /// per exit, so that the control API can read them while the guest
    /// runs); without, the loop does no extra work.
    pub fn run(
        &self,
        vcpu: &mut Vcpu,
        control: &RunControl,
        stats: Option<&Mutex<ExitStats>>,
    ) -> Outcome {
        let index = vcpu.index();
        let _panic_guard = PanicGuard { control, vcpu: index };
        if index == 0 {
            // Once, outside the loop: the benchmark times a restore to it.
            log::info!("vCPU 0: first KVM_RUN");
        }
        let outcome = loop {
            if control.should_stop() {
                break Outcome::Stopped { reason: format!("vCPU {index} stopped"), status: 0 };
            }
            if control.gate().park_if_requested(index, vcpu) && control.should_stop() {
                // Released from a pause because the run ended.
                break Outcome::Stopped { reason: format!("vCPU {index} stopped"), status: 0 };
            }
            let entered = stats.is_some().then(Instant::now);
            let result = vcpu.run();
            let exited = entered.map(|_| Instant::now());
            let mut classified = None;
            let step = match result {
                Ok(exit) => {
                    if stats.is_some() {
                        classified = Some(Classified::of(&exit));
                    }
                    self.handle(index, exit)
                }
                Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => {
                    if stats.is_some() {
                        classified = Some(Classified::Plain(ExitReason::Interrupted));
                    }
                    // EINTR: a kick (checked at the top); EAGAIN: a secondary
                    // CPU woken from its wait for INIT/SIPI. Both re-enter.
                    if err.errno() == libc::EINTR {
                        vcpu.clear_kick();
                    }
                    Step::Continue
                }
                Err(err) => {
                    Step::Finish(Outcome::RunFailed { vcpu: index, error: err.to_string() })
                }
            };
            if let (Some(stats), Some(entered), Some(exited)) = (stats, entered, exited) {
                let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(classified) = classified {
                    stats.record(classified);
                }
                stats.run_time += exited - entered;
                stats.handle_time += exited.elapsed();
            }
            match step {
                Step::Continue => {}
                Step::Finish(outcome) => {
                    if self.report_triple_faults
                        && matches!(outcome, Outcome::Reset { cause: ResetCause::TripleFault, .. })
                    {
                        let at = vcpu.fault_context().map_or_else(
                            |_| "an unknown RIP".to_owned(),
                            |context| format!("RIP {:#x}", context.rip),
                        );
                        log::warn!(
                            "vCPU {index}: triple fault at {at}; the guest is reset (exit status 0)"
                        );
                    }
                    break outcome;
                }
                Step::Halt => {
                    break Outcome::Halted {
                        vcpu: index,
                        interrupts_enabled: vcpu.interrupts_enabled(),
                    };
                }
                Step::InternalError => {
                    let (suberror, data) = vcpu.internal_error();
                    let context = vcpu.fault_context().ok();
                    break Outcome::InternalError { vcpu: index, suberror, data, context };
                }
            }
        };
        if !matches!(outcome, Outcome::Stopped { .. }) {
            control.finish(outcome.clone());
        }
        outcome
    }
}

/// Ends the run if a vCPU loop panics, so that nothing waits for it forever.
struct PanicGuard<'a> {
    control: &'a RunControl,
    vcpu: u8,
}

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let error = "the vCPU thread panicked".to_owned();
            self.control.finish(Outcome::RunFailed { vcpu: self.vcpu, error });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_device::MutDevicePio;
    use vm_device::bus::{MmioRange, PioAddressOffset, PioRange};

    /// A fake device: remembers writes, answers reads with its offset.
    #[derive(Default)]
    struct Recorder(Vec<(u16, Vec<u8>)>);

    impl MutDevicePio for Recorder {
        fn pio_read(&mut self, _: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn pio_write(&mut self, _: PioAddress, offset: PioAddressOffset, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    fn dispatcher_with_device() -> (Dispatcher, Arc<Mutex<Recorder>>) {
        let device = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = IoManager::new();
        bus.register_pio(PioRange::new(PioAddress(0x100), 4).unwrap(), device.clone()).unwrap();
        (Dispatcher::new(Arc::new(bus)), device)
    }

    #[test]
    fn port_accesses_reach_the_registered_device() {
        let (dispatcher, device) = dispatcher_with_device();
        assert_eq!(dispatcher.handle(0, VcpuExit::IoOut(0x102, &[7])), Step::Continue);
        let mut data = [0u8; 2];
        assert_eq!(dispatcher.handle(0, VcpuExit::IoIn(0x101, &mut data)), Step::Continue);
        assert_eq!(data, [1, 1]);
        assert_eq!(device.lock().unwrap().0, vec![(2, vec![7])]);
        assert_eq!(dispatcher.stats().unclaimed_pio.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn unclaimed_reads_are_all_ones_and_counted() {
        let (dispatcher, device) = dispatcher_with_device();
        let mut data = [0u8; 4];
        dispatcher.handle(0, VcpuExit::IoIn(0x200, &mut data));
        assert_eq!(data, [0xff; 4]);
        // Straddling the end of the device's range is not the device's.
        let mut data = [0u8; 4];
        dispatcher.handle(0, VcpuExit::IoIn(0x102, &mut data));
        assert_eq!(data, [0xff; 4]);
        dispatcher.handle(0, VcpuExit::IoOut(0x200, &[1]));
        let mut data = [0u8; 8];
        dispatcher.handle(0, VcpuExit::MmioRead(0xd000_0000, &mut data));
        assert_eq!(data, [0xff; 8]);
        dispatcher.handle(0, VcpuExit::MmioWrite(0xd000_0000, &[1, 2]));
        assert_eq!(dispatcher.stats().unclaimed_pio.load(Ordering::Relaxed), 3);
        assert_eq!(dispatcher.stats().unclaimed_mmio.load(Ordering::Relaxed), 2);
        assert!(device.lock().unwrap().0.is_empty());
    }

    #[test]
    fn mmio_reaches_a_registered_device() {
        struct Mmio;
        impl vm_device::MutDeviceMmio for Mmio {
            fn mmio_read(&mut self, _: MmioAddress, offset: u64, data: &mut [u8]) {
                data.fill(offset as u8 + 0x10);
            }
            fn mmio_write(&mut self, _: MmioAddress, _: u64, _: &[u8]) {}
        }
        let mut bus = IoManager::new();
        bus.register_mmio(
            MmioRange::new(MmioAddress(0xd000_0000), 0x1000).unwrap(),
            Arc::new(Mutex::new(Mmio)),
        )
        .unwrap();
        let dispatcher = Dispatcher::new(Arc::new(bus));
        let mut data = [0u8; 4];
        dispatcher.handle(0, VcpuExit::MmioRead(0xd000_0004, &mut data));
        assert_eq!(data, [0x14; 4]);
    }

    #[test]
    fn run_ending_exits_become_outcomes() {
        let (dispatcher, _) = dispatcher_with_device();
        assert_eq!(
            dispatcher.handle(1, VcpuExit::Shutdown),
            Step::Finish(Outcome::Reset { vcpu: 1, cause: ResetCause::TripleFault })
        );
        assert_eq!(
            dispatcher.handle(0, VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[])),
            Step::Finish(Outcome::PowerOff { vcpu: 0 })
        );
        assert_eq!(
            dispatcher.handle(0, VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &[])),
            Step::Finish(Outcome::GuestCrash { vcpu: 0 })
        );
        assert_eq!(
            dispatcher.handle(0, VcpuExit::FailEntry(0x21, 0)),
            Step::Finish(Outcome::FailEntry { vcpu: 0, reason: 0x21 })
        );
        assert_eq!(dispatcher.handle(0, VcpuExit::Hlt), Step::Halt);
        assert_eq!(dispatcher.handle(0, VcpuExit::InternalError), Step::InternalError);
        assert!(matches!(
            dispatcher.handle(0, VcpuExit::Unknown),
            Step::Finish(Outcome::Unhandled { .. })
        ));
    }
}
