//! The VMM's exit dispatcher over its real device bus.
//!
//! Builds the bus as `vmm/src/machine.rs` does (COM1 UART at 0x3f8-0x3ff,
//! debug exit at 0xf4-0xf7, i8042 at 0x60 and 0x64, fw_cfg at 0x510-0x511),
//! decodes the input into
//! a sequence of vCPU exits (port and MMIO accesses of 0 to 8 bytes and the
//! exits that end a run) and hands each to `Dispatcher::handle`.
//!
//! Invariants:
//! - it never panics;
//! - an access no device claims entirely (no device, straddling a device's
//!   end, or 0 bytes long) reads all-ones, is otherwise ignored, and counts
//!   once in `Dispatcher::stats()`; a claimed one does not count;
//! - what claimed reads return, what reaches the serial output, and which
//!   debug-exit and reset requests the devices make match reference models
//!   of the devices (`vmm_fuzz::{SerialModel, I8042Model, FwCfgModel}`);
//! - every exit gets the step crates/dispatch documents: accesses and
//!   `Intr` continue, `Hlt` halts, `InternalError` asks for the vCPU's
//!   state, the others finish with the documented outcome and exit status.
#![no_main]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;
use libfuzzer_sys::fuzz_target;
use vm_device::bus::{PioAddress, PioRange};
use vm_device::device_manager::{IoManager, PioManager};
use vmm_devices::EventFdTrigger;
use vmm_devices::debug_exit::{DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN, DebugExit};
use vmm_devices::fw_cfg::{FW_CFG_PORT, FW_CFG_PORT_LEN, FwCfg};
use vmm_devices::i8042::{I8042, I8042_COMMAND_PORT, I8042_DATA_PORT};
use vmm_devices::serial::{COM1_PORT, SERIAL_PORT_LEN, SerialPort};
use vmm_dispatch::{Dispatcher, Outcome, ResetCause, Step};
use vmm_fuzz::{FwCfgModel, I8042Model, Input, Request, Requests, SerialModel};

/// Port ranges the bus claims: (base, length).
const CLAIMED: [(u16, u16); 5] = [
    (COM1_PORT, SERIAL_PORT_LEN),
    (DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN),
    (I8042_DATA_PORT, 1),
    (I8042_COMMAND_PORT, 1),
    (FW_CFG_PORT, FW_CFG_PORT_LEN),
];

/// The machine fw_cfg describes.
const RAM_SIZE: u64 = 128 << 20;
const CPUS: u16 = 2;

/// The device range that holds all of `[port, port + len)`, if any.
fn claimed_by(port: u16, len: usize) -> Option<(u16, u16)> {
    if len == 0 {
        return None;
    }
    let last = u32::from(port) + len as u32 - 1;
    CLAIMED
        .into_iter()
        .find(|&(base, size)| port >= base && last < u32::from(base) + u32::from(size))
}

/// A port near the devices most of the time, so accesses hit them, their
/// edges and their neighbours; any port otherwise.
fn port(input: &mut Input) -> u16 {
    let pick = input.u8();
    let near = |base: u16| base.wrapping_add(u16::from(pick >> 3)).wrapping_sub(2);
    match pick & 7 {
        0 | 1 => near(COM1_PORT),
        2 => near(DEBUG_EXIT_PORT),
        3 => near(I8042_DATA_PORT),
        4 => near(I8042_COMMAND_PORT),
        5 => near(FW_CFG_PORT),
        _ => input.u16(),
    }
}

fn mmio_address(input: &mut Input) -> u64 {
    match input.u8() & 3 {
        0 => 0xd000_0000 + u64::from(input.u16()),
        1 => u64::MAX - u64::from(input.u8()),
        _ => input.u64(),
    }
}

struct Machine {
    dispatcher: Dispatcher,
    serial: Arc<Mutex<SerialPort<Vec<u8>>>>,
    requests: Requests,
    serial_model: SerialModel,
    i8042_model: I8042Model,
    fw_cfg_model: FwCfgModel,
    expected_requests: Vec<Request>,
    unclaimed_pio: u64,
    unclaimed_mmio: u64,
}

impl Machine {
    /// The bus of `vmm/src/machine.rs`'s `build_bus`.
    fn new() -> Machine {
        let serial = SerialPort::new(EventFdTrigger::new().expect("eventfd"), Vec::new());
        let serial = Arc::new(Mutex::new(serial));
        let requests = Requests::default();
        let mut bus = IoManager::new();
        bus.register_pio(
            PioRange::new(PioAddress(COM1_PORT), SERIAL_PORT_LEN).unwrap(),
            serial.clone(),
        )
        .unwrap();
        let debug_exit = Arc::new(Mutex::new(DebugExit::new(requests.clone())));
        bus.register_pio(
            PioRange::new(PioAddress(DEBUG_EXIT_PORT), DEBUG_EXIT_PORT_LEN).unwrap(),
            debug_exit,
        )
        .unwrap();
        let i8042 = Arc::new(Mutex::new(I8042::new(requests.clone())));
        for port in [I8042_DATA_PORT, I8042_COMMAND_PORT] {
            bus.register_pio(PioRange::new(PioAddress(port), 1).unwrap(), i8042.clone()).unwrap();
        }
        let fw_cfg = Arc::new(Mutex::new(FwCfg::new(RAM_SIZE, CPUS)));
        bus.register_pio(PioRange::new(PioAddress(FW_CFG_PORT), FW_CFG_PORT_LEN).unwrap(), fw_cfg)
            .unwrap();
        Machine {
            dispatcher: Dispatcher::new(Arc::new(bus)),
            serial,
            requests,
            serial_model: SerialModel::default(),
            i8042_model: I8042Model::default(),
            fw_cfg_model: FwCfgModel::new(RAM_SIZE, CPUS),
            expected_requests: Vec::new(),
            unclaimed_pio: 0,
            unclaimed_mmio: 0,
        }
    }

    /// What a port read must return, updating the models.
    fn expect_in(&mut self, port: u16, len: usize) -> Vec<u8> {
        match claimed_by(port, len) {
            None => {
                self.unclaimed_pio += 1;
                vec![0xff; len]
            }
            Some((COM1_PORT, _)) => self.serial_model.pio_read(port - COM1_PORT, len),
            Some((DEBUG_EXIT_PORT, _)) => vec![0xff; len],
            Some((FW_CFG_PORT, _)) => self.fw_cfg_model.read(port - FW_CFG_PORT, len),
            Some(_) => vec![self.i8042_model.read(port)],
        }
    }

    /// Updates the models for a port write.
    fn expect_out(&mut self, port: u16, data: &[u8]) {
        match claimed_by(port, data.len()) {
            None => self.unclaimed_pio += 1,
            Some((COM1_PORT, _)) => self.serial_model.pio_write(port - COM1_PORT, data),
            Some((DEBUG_EXIT_PORT, _)) => {
                // A write of 1 to 4 bytes at the first port carries the value.
                if port == DEBUG_EXIT_PORT {
                    let mut value = [0u8; 4];
                    value[..data.len()].copy_from_slice(data);
                    self.expected_requests.push(Request::DebugExit(u32::from_le_bytes(value)));
                }
            }
            Some((FW_CFG_PORT, _)) => self.fw_cfg_model.write(port - FW_CFG_PORT, data),
            Some(_) => {
                let resets = self.i8042_model.resets;
                self.i8042_model.write(port, data[0]);
                if self.i8042_model.resets > resets {
                    self.expected_requests.push(Request::Reset);
                }
            }
        }
    }

    fn check_counters_and_requests(&mut self) {
        let stats = self.dispatcher.stats();
        assert_eq!(stats.unclaimed_pio.load(Ordering::Relaxed), self.unclaimed_pio);
        assert_eq!(stats.unclaimed_mmio.load(Ordering::Relaxed), self.unclaimed_mmio);
        assert_eq!(self.requests.take(), std::mem::take(&mut self.expected_requests));
        let serial = self.serial.lock().unwrap();
        assert_eq!(serial.output().len(), self.serial_model.output.len());
        assert_eq!(serial.input_room(), vmm_fuzz::FIFO_SIZE - self.serial_model.fifo.len());
    }
}

/// The outcome `handle` must give for a run-ending exit, and its exit status.
fn check_finish(step: &Step, expected: Outcome, status: u8, clean: bool) {
    assert_eq!(*step, Step::Finish(expected));
    if let Step::Finish(outcome) = step {
        assert_eq!(outcome.exit_status(), status, "{outcome}");
        assert_eq!(outcome.is_clean(), clean, "{outcome}");
        assert!(!outcome.to_string().is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut machine = Machine::new();
    let mut buffer = [0u8; 8];
    while !input.is_empty() {
        let vcpu = input.u8();
        let op = input.u8();
        let len = usize::from(op >> 4) % 9; // 0..=8
        match op & 0x0f {
            0..=2 => {
                let port = port(&mut input);
                // Whatever the buffer held must not leak through.
                buffer.fill(input.u8());
                let expected = machine.expect_in(port, len);
                let step =
                    machine.dispatcher.handle(vcpu, VcpuExit::IoIn(port, &mut buffer[..len]));
                assert_eq!(step, Step::Continue);
                assert_eq!(buffer[..len], expected[..], "IN {len} bytes from {port:#x}");
            }
            3..=5 => {
                let port = port(&mut input);
                let data = input.bytes(len);
                machine.expect_out(port, data);
                let step = machine.dispatcher.handle(vcpu, VcpuExit::IoOut(port, data));
                assert_eq!(step, Step::Continue);
            }
            6 => {
                let address = mmio_address(&mut input);
                buffer.fill(input.u8());
                let step = machine
                    .dispatcher
                    .handle(vcpu, VcpuExit::MmioRead(address, &mut buffer[..len]));
                assert_eq!(step, Step::Continue);
                // No MMIO device on this machine: every read is unclaimed.
                assert!(buffer[..len].iter().all(|&b| b == 0xff), "MMIO read at {address:#x}");
                machine.unclaimed_mmio += 1;
            }
            7 => {
                let address = mmio_address(&mut input);
                let data = input.bytes(len);
                let step = machine.dispatcher.handle(vcpu, VcpuExit::MmioWrite(address, data));
                assert_eq!(step, Step::Continue);
                machine.unclaimed_mmio += 1;
            }
            8 => assert_eq!(machine.dispatcher.handle(vcpu, VcpuExit::Hlt), Step::Halt),
            9 => {
                let step = machine.dispatcher.handle(vcpu, VcpuExit::Shutdown);
                check_finish(
                    &step,
                    Outcome::Reset { vcpu, cause: ResetCause::TripleFault },
                    0,
                    true,
                );
            }
            10 => {
                let kind = match input.u8() & 3 {
                    0 => KVM_SYSTEM_EVENT_SHUTDOWN,
                    1 => KVM_SYSTEM_EVENT_RESET,
                    2 => KVM_SYSTEM_EVENT_CRASH,
                    _ => input.u32(),
                };
                let words: Vec<u64> = (0..len).map(|_| input.u64()).collect();
                let step = machine.dispatcher.handle(vcpu, VcpuExit::SystemEvent(kind, &words));
                let (expected, status, clean) = match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => (Outcome::PowerOff { vcpu }, 0, true),
                    KVM_SYSTEM_EVENT_RESET => {
                        (Outcome::Reset { vcpu, cause: ResetCause::SystemEvent }, 0, true)
                    }
                    KVM_SYSTEM_EVENT_CRASH => (Outcome::GuestCrash { vcpu }, 8, false),
                    kind => (Outcome::UnknownSystemEvent { vcpu, kind }, 10, false),
                };
                check_finish(&step, expected, status, clean);
            }
            11 => {
                let (reason, cpu) = (input.u64(), input.u32());
                let step = machine.dispatcher.handle(vcpu, VcpuExit::FailEntry(reason, cpu));
                check_finish(&step, Outcome::FailEntry { vcpu, reason }, 6, false);
            }
            12 => {
                let step = machine.dispatcher.handle(vcpu, VcpuExit::InternalError);
                assert_eq!(step, Step::InternalError);
            }
            13 => assert_eq!(machine.dispatcher.handle(vcpu, VcpuExit::Intr), Step::Continue),
            _ => {
                let exit = match input.u8() % 6 {
                    0 => VcpuExit::Unknown,
                    1 => VcpuExit::Exception,
                    2 => VcpuExit::IrqWindowOpen,
                    3 => VcpuExit::Nmi,
                    4 => VcpuExit::Watchdog,
                    _ => VcpuExit::IoapicEoi(input.u8()),
                };
                let name = format!("{exit:?}");
                match machine.dispatcher.handle(vcpu, exit) {
                    Step::Finish(outcome @ Outcome::Unhandled { .. }) => {
                        assert_eq!(outcome, Outcome::Unhandled { vcpu, exit: name });
                        assert_eq!(outcome.exit_status(), 10);
                        assert!(!outcome.is_clean());
                    }
                    other => panic!("{name} gave {other:?}, not Unhandled"),
                }
            }
        }
        machine.check_counters_and_requests();
    }
    let serial = machine.serial.lock().unwrap();
    assert_eq!(serial.output(), &machine.serial_model.output[..]);
    // Every interrupt the UART raised went to its eventfd.
    let raised = serial.interrupt().event_fd().read().unwrap_or(0);
    assert_eq!(raised, machine.serial_model.interrupts);
});
