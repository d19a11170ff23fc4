//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2): the
//! register window through which a driver discovers a device, negotiates
//! features, sets up queues and is notified, in front of any
//! [`VirtioDevice`].
//!
//! Queue notifications are meant to bypass it: the VMM registers one
//! eventfd per queue on the QueueNotify register (an ioeventfd, so KVM
//! signals it without leaving the kernel) and calls
//! [`QueueNotify::queue_notify`] when it fires. A notification that does
//! reach the register (a value the ioeventfds do not match) is forwarded
//! to the same eventfd, so queues are only ever served where the VMM
//! serves them, never on the vCPU thread that wrote the register. Without
//! notifiers (a transport used alone), the write serves the queue at once.

use std::io;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_device::MutDeviceMmio;
use vm_device::bus::MmioAddress;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::device::queue_pending;
use crate::{Error, Interrupt, Memory, QueueNotify, Result, VirtioDevice};

/// "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The transport version: 2, modern devices only.
pub const VERSION: u32 = 2;
/// The vendor id the device reports.
pub const VENDOR_ID: u32 = 0;

// Register offsets (virtio 1.2, table 4.1).
const MAGIC_VALUE: u64 = 0x000;
const VERSION_REG: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID_REG: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
/// The QueueNotify register, where the VMM puts its ioeventfds.
pub const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
/// The InterruptACK register, where the VMM may put an ioeventfd for
/// [`ACK_VRING`] ([`MmioTransport::set_ack_notifier`]).
pub const INTERRUPT_ACK: u64 = 0x064;
/// The acknowledgement a driver writes after a used-buffer interrupt
/// (VIRTIO_MMIO_INT_VRING), the ioeventfd's datamatch.
pub const ACK_VRING: u32 = VIRTIO_MMIO_INT_VRING;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_AVAIL_LOW: u64 = 0x090;
const QUEUE_AVAIL_HIGH: u64 = 0x094;
const QUEUE_USED_LOW: u64 = 0x0a0;
const QUEUE_USED_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;
/// Where the device's configuration space starts.
pub const CONFIG_SPACE: u64 = 0x100;

/// One queue as the driver configures it. The raw values are kept so that a
/// bad size or a misaligned address is noticed when the driver sets the
/// queue ready, instead of being silently replaced.
#[derive(Debug)]
struct QueueSlot {
    queue: Queue,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueSlot {
    fn new(max_size: u16) -> Result<QueueSlot> {
        let queue =
            Queue::new(max_size).map_err(|source| Error::Queue { size: max_size, source })?;
        Ok(QueueSlot { queue, size: max_size, desc: 0, avail: 0, used: 0 })
    }

    fn reset(&mut self) {
        self.queue.reset();
        self.size = self.queue.max_size();
        (self.desc, self.avail, self.used) = (0, 0, 0);
    }

    /// Applies the driver's values; false when one of them is invalid or
    /// the rings do not lie in guest RAM.
    fn make_ready(&mut self, mem: &Memory) -> bool {
        let queue = &mut self.queue;
        let applied = queue.try_set_size(self.size).is_ok()
            && queue.try_set_desc_table_address(GuestAddress(self.desc)).is_ok()
            && queue.try_set_avail_ring_address(GuestAddress(self.avail)).is_ok()
            && queue.try_set_used_ring_address(GuestAddress(self.used)).is_ok();
        queue.set_ready(applied);
        applied && queue.is_valid(mem)
    }
}

/// Sets the low or high half of `value`.
fn set_half(value: &mut u64, high: bool, half: u32) {
    *value = if high {
        (*value & 0xffff_ffff) | (u64::from(half) << 32)
    } else {
        (*value & !0xffff_ffff) | u64::from(half)
    };
}

/// A virtio-mmio register window in front of device `D`. Put it on an MMIO
/// bus (it implements vm-device's [`MutDeviceMmio`]) at a 4 KiB slot.
#[derive(Debug)]
pub struct MmioTransport<D> {
    device: D,
    mem: Memory,
    interrupt: Box<dyn Interrupt>,
    notifiers: Vec<EventFd>,
    /// Counts the driver's InterruptACK writes of [`ACK_VRING`], made
    /// without an exit (an ioeventfd); taken when the device next raises.
    ack_notifier: Option<EventFd>,
    queues: Vec<QueueSlot>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
}

impl std::fmt::Debug for dyn Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interrupt")
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// A transport for `device` on guest memory `mem`, raising `interrupt`.
    pub fn new(device: D, mem: Memory, interrupt: Box<dyn Interrupt>) -> Result<Self> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&size| QueueSlot::new(size))
            .collect::<Result<_>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            notifiers: Vec::new(),
            ack_notifier: None,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
        })
    }

    /// Routes notifications that reach the QueueNotify register to these
    /// eventfds (one per queue, in queue order), the ones the VMM also
    /// registered as ioeventfds and serves queues from.
    pub fn set_notifiers(&mut self, notifiers: Vec<EventFd>) {
        self.notifiers = notifiers;
    }

    /// Takes the driver's acknowledgements of used-buffer interrupts from
    /// `notifier` (a non-blocking eventfd: it is read when its count may
    /// be 0) instead of the InterruptACK register: the VMM registers it
    /// as an ioeventfd matching [`ACK_VRING`] on [`INTERRUPT_ACK`], so the
    /// write does not leave the kernel (one exit of the two an interrupt
    /// costs the guest). The transport reads it before it raises a
    /// used-buffer interrupt, which is the only moment the acknowledgement
    /// matters: a bit still set there means the driver has not yet taken
    /// the last interrupt. Until then InterruptStatus may still show
    /// VIRTIO_MMIO_INT_VRING to a driver that read it again (it then finds
    /// no new work), and a snapshot may hold it (the restore raises it once
    /// more).
    pub fn set_ack_notifier(&mut self, notifier: EventFd) {
        self.ack_notifier = Some(notifier);
    }

    /// The device behind the transport.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device status register (ACKNOWLEDGE, DRIVER, FEATURES_OK, ...).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.driver_features
    }

    /// The number of queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    fn driver_ok(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) == 0
    }

    fn selected_queue(&mut self) -> Option<&mut QueueSlot> {
        let index = usize::try_from(self.queue_select).ok()?;
        self.queues.get_mut(index)
    }

    /// The selected queue, if the driver may still configure it (not
    /// ready, device not live).
    fn configurable_queue(&mut self) -> Option<&mut QueueSlot> {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            return None;
        }
        self.selected_queue().filter(|slot| !slot.queue.ready())
    }

    /// Sets `bit` in InterruptStatus and raises the interrupt, unless the
    /// bit was already set: then the interrupt that set it has not been
    /// acknowledged, and the driver, which acknowledges before it looks
    /// at its queues, will see this work too. A second edge would only
    /// make the driver read an empty status (two exits) later; this is
    /// what a level-triggered line, as QEMU's, does by itself.
    fn raise(&mut self, bit: u32) {
        if bit & VIRTIO_MMIO_INT_VRING != 0
            && let Some(notifier) = &self.ack_notifier
            && notifier.read().is_ok_and(|acks| acks > 0)
        {
            // Acknowledged through the ioeventfd since the last raise.
            self.interrupt_status &= !VIRTIO_MMIO_INT_VRING;
        }
        let pending = self.interrupt_status & bit == bit;
        self.interrupt_status |= bit;
        if pending {
            return;
        }
        if let Err(err) = self.interrupt.trigger() {
            log::warn!(
                "virtio device {}: cannot raise its interrupt: {err}",
                self.device.device_type()
            );
        }
    }

    /// The device cannot go on: tell the driver (DEVICE_NEEDS_RESET and a
    /// configuration-change interrupt) and serve nothing until it resets.
    fn needs_reset(&mut self, why: &str) {
        log::warn!("virtio device {}: {why}; it needs a reset", self.device.device_type());
        if self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0 {
            self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
            self.raise(VIRTIO_MMIO_INT_CONFIG);
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for slot in &mut self.queues {
            slot.reset();
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let added = value & !self.status;
        if value & self.status != self.status {
            // The driver may only add bits; clearing one is a bug of its.
            log::debug!("virtio status {:#x} -> {value:#x} clears bits; ignored", self.status);
            return;
        }
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = self.device.features();
            let valid = self.driver_features & !offered == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if !valid {
                // FEATURES_OK stays clear: the driver reads it back and gives up.
                log::warn!(
                    "virtio device {}: driver features {:#x} are not a modern subset of {offered:#x}",
                    self.device.device_type(),
                    self.driver_features
                );
                self.status = value & !VIRTIO_CONFIG_S_FEATURES_OK & !VIRTIO_CONFIG_S_DRIVER_OK;
                return;
            }
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            let needed =
                VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
            if value & needed != needed {
                log::warn!("virtio status {value:#x}: DRIVER_OK before FEATURES_OK; ignored");
                return;
            }
            let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
            for slot in &mut self.queues {
                slot.queue.set_event_idx(event_idx);
            }
            self.status = value;
            self.device.activate(self.driver_features);
            // Buffers made available before DRIVER_OK are served now.
            for index in 0..self.queues.len() {
                self.notify(index);
            }
            return;
        }
        self.status = value;
    }

    fn set_queue_ready(&mut self, ready: bool) {
        let mem = self.mem.clone();
        let index = self.queue_select;
        let Some(slot) = self.configurable_queue() else { return };
        if !ready {
            slot.queue.set_ready(false);
            return;
        }
        if !slot.make_ready(&mem) {
            slot.queue.set_ready(false);
            let why = format!(
                "queue {} set up with size {}, rings at {:#x}/{:#x}/{:#x}: not a power of two, \
                 misaligned or outside guest RAM",
                index, slot.size, slot.desc, slot.avail, slot.used
            );
            self.needs_reset(&why);
        }
    }

    /// Forwards a notification to the queue's eventfd, or serves it here
    /// when the transport has none.
    fn notify(&mut self, index: usize) {
        match self.notifiers.get(index) {
            Some(notifier) => {
                if let Err(err) = notifier.write(1) {
                    log::warn!("cannot forward a queue notification: {err}");
                }
            }
            None if self.notifiers.is_empty() => self.queue_notify(index),
            None => log::debug!("notification of queue {index}, which does not exist"),
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let features_word = |features: u64, select: u32| match select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        let selected = usize::try_from(self.queue_select).ok().and_then(|i| self.queues.get(i));
        match offset {
            MAGIC_VALUE => MAGIC,
            VERSION_REG => VERSION,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID_REG => VENDOR_ID,
            DEVICE_FEATURES => features_word(self.device.features(), self.device_features_select),
            QUEUE_NUM_MAX => selected.map_or(0, |slot| u32::from(slot.queue.max_size())),
            QUEUE_READY => selected.map_or(0, |slot| u32::from(slot.queue.ready())),
            INTERRUPT_STATUS => self.interrupt_status,
            STATUS => self.status,
            CONFIG_GENERATION => self.config_generation,
            _ => {
                log::debug!("virtio-mmio read of register {offset:#x}, which is not readable");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_select = value,
            DRIVER_FEATURES_SEL => self.driver_features_select = value,
            DRIVER_FEATURES => {
                let negotiating = self.status & VIRTIO_CONFIG_S_DRIVER != 0
                    && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0;
                match self.driver_features_select {
                    _ if !negotiating => log::debug!("driver features written outside negotiation"),
                    0 => set_half(&mut self.driver_features, false, value),
                    1 => set_half(&mut self.driver_features, true, value),
                    _ => {}
                }
            }
            QUEUE_SEL => self.queue_select = value,
            QUEUE_NUM => {
                if let Some(slot) = self.configurable_queue() {
                    slot.size = u16::try_from(value).unwrap_or(0);
                }
            }
            QUEUE_READY => self.set_queue_ready(value == 1),
            QUEUE_NOTIFY => {
                if self.driver_ok() {
                    self.notify(value as usize);
                }
            }
            INTERRUPT_ACK => self.interrupt_status &= !value,
            STATUS => self.set_status(value),
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_AVAIL_LOW | QUEUE_AVAIL_HIGH
            | QUEUE_USED_LOW | QUEUE_USED_HIGH => {
                if let Some(slot) = self.configurable_queue() {
                    let high = offset & 4 != 0;
                    let field = match offset & !4 {
                        QUEUE_DESC_LOW => &mut slot.desc,
                        QUEUE_AVAIL_LOW => &mut slot.avail,
                        _ => &mut slot.used,
                    };
                    set_half(field, high, value);
                }
            }
            _ => log::debug!(
                "virtio-mmio write of {value:#x} to register {offset:#x}, which is not writable"
            ),
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.device.config();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match config.get(start..).and_then(|rest| rest.get(..data.len())) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0),
        }
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Raises the used-buffer interrupt if any queue of `used` (a bit mask)
    /// wants one.
    fn interrupt_for(&mut self, used: u64) -> std::result::Result<(), virtio_queue::Error> {
        let mut wants = false;
        for (index, slot) in self.queues.iter_mut().enumerate() {
            if index < 64 && used & (1 << index) != 0 && slot.queue.needs_notification(&self.mem)? {
                wants = true;
            }
        }
        if wants {
            self.raise(VIRTIO_MMIO_INT_VRING);
        }
        Ok(())
    }
}

impl<D: VirtioDevice> QueueNotify for MmioTransport<D> {
    fn host_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.device.host_fds()
    }

    fn host_event(&mut self, index: usize) {
        if !self.driver_ok() {
            return;
        }
        let mut queues: Vec<&mut Queue> =
            self.queues.iter_mut().map(|slot| &mut slot.queue).collect();
        let result = self.device.host_event(index, &mut queues, &self.mem);
        match result.and_then(|used| self.interrupt_for(used)) {
            Ok(()) => {}
            Err(err) => self.needs_reset(&format!("host event {index}: {err:?}")),
        }
    }

    fn queue_notify(&mut self, index: usize) {
        if !self.driver_ok() {
            return;
        }
        let Some(slot) = self.queues.get_mut(index) else { return };
        if !slot.queue.ready() {
            return;
        }
        let result = self.device.process_queue(index, &mut slot.queue, &self.mem);
        let (needs_interrupt, more) = match result.and_then(|used| {
            let wants = used && slot.queue.needs_notification(&self.mem)?;
            Ok((wants, queue_pending(&slot.queue, &self.mem)?))
        }) {
            Ok(outcome) => outcome,
            Err(err) => {
                self.needs_reset(&format!("queue {index}: {err:?}"));
                return;
            }
        };
        if needs_interrupt {
            self.raise(VIRTIO_MMIO_INT_VRING);
        }
        if more && !self.notifiers.is_empty() {
            // The device served one batch: come back after the other
            // devices had their turn. (Used alone, the transport serves
            // the rest at the next notification.)
            self.notify(index);
        }
    }
}

impl<D: VirtioDevice> MutDeviceMmio for MmioTransport<D> {
    fn mmio_read(&mut self, _base: MmioAddress, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.read_config(offset - CONFIG_SPACE, data);
        } else if let Ok(bytes) = <&mut [u8; 4]>::try_from(&mut *data) {
            *bytes = self.read_register(offset).to_le_bytes();
        } else {
            log::debug!(
                "{}-byte virtio-mmio register read at {offset:#x}; registers are 32-bit",
                data.len()
            );
            data.fill(0);
        }
    }

    fn mmio_write(&mut self, _base: MmioAddress, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            log::debug!("write to the configuration space at {offset:#x} ignored");
        } else if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        } else {
            log::debug!("{}-byte virtio-mmio register write at {offset:#x} ignored", data.len());
        }
    }
}

/// One queue's registers and ring positions, as a snapshot keeps them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueState {
    /// QueueNum as the driver wrote it.
    pub size: u16,
    /// Descriptor table, available and used ring addresses.
    pub desc: u64,
    /// The available ring.
    pub avail: u64,
    /// The used ring.
    pub used: u64,
    /// QueueReady.
    pub ready: bool,
    /// The next available-ring entry the device will take.
    pub next_avail: u16,
    /// The next used-ring entry the device will fill.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX is on for the queue.
    pub event_idx: bool,
}

/// A virtio-mmio transport's registers and queues, as a snapshot keeps
/// them (the device's configuration comes from the machine's).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MmioTransportState {
    /// The device type, checked on restore.
    pub device_type: u32,
    /// The status register.
    pub status: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// DeviceFeaturesSel, DriverFeaturesSel, QueueSel.
    pub selects: [u32; 3],
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Each queue.
    pub queues: Vec<QueueState>,
}

/// Saving and restoring a transport through a type-erased handle.
pub trait TransportPersist: Send {
    /// The registers and queues (the device must be quiescent: the VM
    /// paused, its queues not being served).
    fn save_state(&self) -> MmioTransportState;
    /// Takes `state` into a fresh transport of the same device: the queues
    /// are set up and checked against guest RAM as the driver's QueueReady
    /// would, the device is activated with the accepted features when the
    /// state is live (DRIVER_OK), a pending interrupt is raised again and
    /// every ready queue is served once, on the caller's thread (buffers
    /// the driver made available while the snapshot's VM was pausing, and
    /// what the device has to tell the guest first).
    fn restore_state(&mut self, state: &MmioTransportState) -> Result<()>;
}

impl<D: VirtioDevice> TransportPersist for MmioTransport<D> {
    fn save_state(&self) -> MmioTransportState {
        MmioTransportState {
            device_type: self.device.device_type(),
            status: self.status,
            driver_features: self.driver_features,
            selects: [self.device_features_select, self.driver_features_select, self.queue_select],
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            queues: self
                .queues
                .iter()
                .enumerate()
                .map(|(index, slot)| QueueState {
                    size: slot.size,
                    desc: slot.desc,
                    avail: slot.avail,
                    used: slot.used,
                    ready: slot.queue.ready(),
                    // Chains the device holds go back to the ring: the
                    // restored device takes them again.
                    next_avail: slot
                        .queue
                        .next_avail()
                        .wrapping_sub(self.device.held_chains(index)),
                    next_used: slot.queue.next_used(),
                    event_idx: slot.queue.event_idx_enabled(),
                })
                .collect(),
        }
    }

    fn restore_state(&mut self, state: &MmioTransportState) -> Result<()> {
        let device = self.device.device_type();
        let invalid = |reason: String| Error::InvalidState { device, reason };
        if state.device_type != device {
            return Err(invalid(format!("saved as device type {}", state.device_type)));
        }
        if state.queues.len() != self.queues.len() {
            return Err(invalid(format!(
                "{} queues saved, the device has {}",
                state.queues.len(),
                self.queues.len()
            )));
        }
        if state.driver_features & !self.device.features() != 0 {
            return Err(invalid(format!(
                "accepted features {:#x} the device does not offer ({:#x})",
                state.driver_features,
                self.device.features()
            )));
        }
        for (index, (slot, saved)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            slot.reset();
            (slot.size, slot.desc, slot.avail, slot.used) =
                (saved.size, saved.desc, saved.avail, saved.used);
            if saved.ready && !slot.make_ready(&self.mem) {
                return Err(invalid(format!(
                    "queue {index} (size {}, rings at {:#x}/{:#x}/{:#x}) does not fit guest RAM",
                    saved.size, saved.desc, saved.avail, saved.used
                )));
            }
            slot.queue.set_next_avail(saved.next_avail);
            slot.queue.set_next_used(saved.next_used);
            slot.queue.set_event_idx(saved.event_idx);
        }
        [self.device_features_select, self.driver_features_select, self.queue_select] =
            state.selects;
        self.driver_features = state.driver_features;
        self.status = state.status;
        self.config_generation = state.config_generation;
        self.interrupt_status = 0;
        if self.driver_ok() {
            self.device.activate(self.driver_features);
            self.device.restored();
        }
        if state.interrupt_status != 0 {
            self.raise(state.interrupt_status);
        }
        if self.driver_ok() {
            // Served here, before the guest runs again: what a device has
            // to tell the guest at once (vsock's transport reset) is there
            // before anything new happens.
            for index in 0..self.queues.len() {
                self.queue_notify(index);
            }
        }
        Ok(())
    }
}

/// An interrupt that does nothing, for a transport whose driver polls.
#[derive(Debug, Default)]
pub struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn trigger(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::*;
    use vm_memory::Bytes;

    const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX;

    fn rng_transport() -> (MmioTransport<Rng<std::io::Repeat>>, CountingInterrupt, Memory) {
        let mem = memory(1 << 20);
        let irq = CountingInterrupt::default();
        let device = Rng::new(std::io::repeat(0xab));
        (MmioTransport::new(device, mem.clone(), Box::new(irq.clone())).unwrap(), irq, mem)
    }

    #[test]
    fn identity_registers() {
        let (mut t, _, _) = rng_transport();
        assert_eq!(read_reg(&mut t, 0x000), MAGIC);
        assert_eq!(read_reg(&mut t, 0x004), 2);
        assert_eq!(read_reg(&mut t, 0x008), 4);
        assert_eq!(read_reg(&mut t, 0x00c), VENDOR_ID);
        write_reg(&mut t, 0x014, 1);
        assert_eq!(read_reg(&mut t, 0x010), 1); // VERSION_1 is bit 32
        write_reg(&mut t, 0x014, 0);
        assert_eq!(read_reg(&mut t, 0x010), 1 << VIRTIO_RING_F_EVENT_IDX);
        write_reg(&mut t, 0x014, 7);
        assert_eq!(read_reg(&mut t, 0x010), 0);
        assert_eq!(read_reg(&mut t, 0x034), u32::from(crate::rng::QUEUE_SIZE));
        write_reg(&mut t, 0x030, 1);
        assert_eq!(read_reg(&mut t, 0x034), 0, "queue 1 does not exist");
        // Registers are 32-bit: other widths read zero and write nothing.
        let mut byte = [0xffu8; 1];
        t.mmio_read(MmioAddress(0), 0, &mut byte);
        assert_eq!(byte, [0]);
        t.mmio_write(MmioAddress(0), 0x70, &[1]);
        assert_eq!(read_reg(&mut t, 0x70), 0);
    }

    #[test]
    fn features_are_negotiated_and_checked() {
        let (mut t, _, _) = rng_transport();
        assert!(!negotiate(&mut t, 1 << VIRTIO_RING_F_EVENT_IDX), "legacy driver refused");
        assert!(!negotiate(&mut t, FEATURES | 1 << 40), "unoffered feature refused");
        assert!(negotiate(&mut t, FEATURES));
        assert_eq!(t.acked_features(), FEATURES);
        // Features are fixed once FEATURES_OK is set.
        write_reg(&mut t, 0x24, 0);
        write_reg(&mut t, 0x20, 0);
        assert_eq!(t.acked_features(), FEATURES);
    }

    #[test]
    fn status_zero_resets_everything() {
        let (mut t, _, _) = rng_transport();
        assert!(negotiate(&mut t, FEATURES));
        TestQueue::new(16, 0x1000).install(&mut t, 0);
        assert_eq!(read_reg(&mut t, 0x44), 1);
        driver_ok(&mut t);
        write_reg(&mut t, 0x70, 0);
        assert_eq!(read_reg(&mut t, 0x70), 0);
        assert_eq!(read_reg(&mut t, 0x44), 0);
        assert_eq!(t.acked_features(), 0);
    }

    #[test]
    fn a_bad_queue_needs_a_reset() {
        for (size, base) in
            [(3u16, 0x1000u64), (16, 0x1001), (16, 0xff_fff0), (512, 0x1000), (0, 0x1000)]
        {
            let (mut t, irq, _) = rng_transport();
            assert!(negotiate(&mut t, FEATURES));
            let queue = TestQueue::new(size, base);
            queue.install(&mut t, 0);
            assert_eq!(read_reg(&mut t, 0x44), 0, "size {size} at {base:#x}");
            assert_ne!(read_reg(&mut t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
            assert_eq!(read_reg(&mut t, 0x60) & VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_CONFIG);
            assert_eq!(irq.count(), 1);
        }
    }

    #[test]
    fn a_restored_transport_continues_the_rings_where_the_saved_one_was() {
        let (mut t, _, mem) = rng_transport();
        assert!(negotiate(&mut t, FEATURES));
        let mut queue = TestQueue::new(16, 0x1000);
        queue.install(&mut t, 0);
        driver_ok(&mut t);
        queue.add_chain(&mem, &[(0x10000, 8, true)]);
        write_reg(&mut t, 0x50, 0);
        assert_eq!(queue.take_used(&mem), vec![(0, 8)]);
        // Made available, not served yet when the snapshot is taken.
        queue.add_chain(&mem, &[(0x11000, 4, true)]);
        let state = t.save_state();
        assert_eq!((state.queues[0].next_avail, state.queues[0].next_used), (1, 1));
        assert_eq!(state.interrupt_status, VIRTIO_MMIO_INT_VRING);
        let json = serde_json::to_string(&state).unwrap();
        let state: MmioTransportState = serde_json::from_str(&json).unwrap();

        // A fresh transport on the same memory: live at once, the pending
        // interrupt raised again, the waiting buffer served.
        let irq = CountingInterrupt::default();
        let device = Rng::new(std::io::repeat(0xcd));
        let mut restored = MmioTransport::new(device, mem.clone(), Box::new(irq.clone())).unwrap();
        restored.restore_state(&state).unwrap();
        assert_eq!(read_reg(&mut restored, 0x70), state.status);
        assert_eq!(restored.acked_features(), FEATURES);
        assert_eq!(read_reg(&mut restored, 0x60), VIRTIO_MMIO_INT_VRING);
        assert!(irq.count() >= 1);
        assert_eq!(queue.take_used(&mem), vec![(1, 4)]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x11000)).unwrap(), 0xcd);
        assert_eq!(restored.save_state().queues[0].next_used, 2);

        // States that do not fit are refused.
        let (mut other, _, _) = rng_transport();
        let mut bad = state.clone();
        bad.device_type = 2;
        assert!(other.restore_state(&bad).unwrap_err().to_string().contains("device type 2"));
        let mut bad = state.clone();
        bad.queues[0].desc = 0xff_fff0;
        assert!(other.restore_state(&bad).unwrap_err().to_string().contains("does not fit"));
        let mut bad = state;
        bad.queues.push(bad.queues[0].clone());
        assert!(other.restore_state(&bad).is_err());
    }

    #[test]
    fn rng_fills_buffers_and_interrupts_by_event_idx() {
        let (mut t, irq, mem) = rng_transport();
        assert!(negotiate(&mut t, FEATURES));
        let mut queue = TestQueue::new(16, 0x1000);
        queue.install(&mut t, 0);
        driver_ok(&mut t);
        queue.add_chain(&mem, &[(0x10000, 100, true), (0x20000, 28, true)]);
        write_reg(&mut t, 0x50, 0);
        assert_eq!(queue.take_used(&mem), vec![(0, 128)]);
        let mut got = [0u8; 100];
        mem.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
        assert_eq!(got, [0xab; 100]);
        // used_event is 0 (the driver wants an interrupt after entry 0).
        assert_eq!(irq.count(), 1);
        assert_eq!(read_reg(&mut t, 0x60), VIRTIO_MMIO_INT_VRING);
        write_reg(&mut t, 0x64, VIRTIO_MMIO_INT_VRING);
        assert_eq!(read_reg(&mut t, 0x60), 0);
        // A device-readable buffer is never written.
        mem.write_slice(&[0; 16], GuestAddress(0x30000)).unwrap();
        queue.add_chain(&mem, &[(0x30000, 16, false)]);
        write_reg(&mut t, 0x50, 0);
        assert_eq!(queue.take_used(&mem), vec![(2, 0)]);
        let mut untouched = [1u8; 16];
        mem.read_slice(&mut untouched, GuestAddress(0x30000)).unwrap();
        assert_eq!(untouched, [0; 16]);
        // used_event still 0: no interrupt for entry 1.
        assert_eq!(irq.count(), 1);
    }

    #[test]
    fn notifications_go_to_the_notifier_not_the_device() {
        let (mut t, _, mem) = rng_transport();
        let notifier = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        t.set_notifiers(vec![notifier.try_clone().unwrap()]);
        assert!(negotiate(&mut t, FEATURES));
        let mut queue = TestQueue::new(16, 0x1000);
        queue.install(&mut t, 0);
        driver_ok(&mut t);
        queue.add_chain(&mem, &[(0x10000, 8, true)]);
        write_reg(&mut t, 0x50, 0);
        assert_eq!(queue.take_used(&mem), vec![], "not served on the writer's thread");
        assert!(notifier.read().unwrap() >= 1);
        t.queue_notify(0);
        assert_eq!(queue.take_used(&mem), vec![(0, 8)]);
    }

    #[test]
    fn a_ring_full_of_work_is_served_in_batches() {
        let (mut t, _, mem) = rng_transport();
        let notifier = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        t.set_notifiers(vec![notifier.try_clone().unwrap()]);
        assert!(negotiate(&mut t, FEATURES));
        let mut queue = TestQueue::new(4, 0x1000);
        queue.install(&mut t, 0);
        driver_ok(&mut t);
        let _ = notifier.read();
        // Six chains made available: more than one queue's worth at once
        // cannot be (the avail index may run at most `size` ahead), so
        // publish four, serve, publish two more.
        for _ in 0..4 {
            queue.add_chain(&mem, &[(0x10000, 8, true)]);
        }
        t.queue_notify(0);
        assert_eq!(queue.take_used(&mem).len(), 4);
        assert!(notifier.read().is_err(), "nothing left, no self-notification");
    }

    #[test]
    fn an_unacknowledged_interrupt_is_not_raised_again() {
        let (mut t, irq, mem) = rng_transport();
        // Without EVENT_IDX every used buffer wants an interrupt.
        assert!(negotiate(&mut t, 1 << VIRTIO_F_VERSION_1));
        let mut queue = TestQueue::new(16, 0x1000);
        queue.install(&mut t, 0);
        driver_ok(&mut t);
        for _ in 0..2 {
            queue.add_chain(&mem, &[(0x10000, 8, true)]);
            write_reg(&mut t, 0x50, 0);
        }
        assert_eq!(queue.take_used(&mem).len(), 2);
        assert_eq!(irq.count(), 1, "the second buffer came while the first interrupt was pending");
        write_reg(&mut t, 0x64, VIRTIO_MMIO_INT_VRING);
        queue.add_chain(&mem, &[(0x10000, 8, true)]);
        write_reg(&mut t, 0x50, 0);
        assert_eq!(irq.count(), 2, "acknowledged: the next buffer raises it again");
        // Another cause (a configuration change) while VRING is pending
        // raises it too.
        mem.write_obj(100u16, GuestAddress(queue.avail + 2)).unwrap();
        t.queue_notify(0);
        assert_eq!(read_reg(&mut t, 0x60), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.count(), 3);
    }

    #[test]
    fn acknowledgements_counted_on_the_ack_notifier_let_the_next_buffer_interrupt() {
        let (mut t, irq, mem) = rng_transport();
        let acks = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        t.set_ack_notifier(acks.try_clone().unwrap());
        assert!(negotiate(&mut t, 1 << VIRTIO_F_VERSION_1));
        let mut queue = TestQueue::new(16, 0x1000);
        queue.install(&mut t, 0);
        driver_ok(&mut t);
        let mut serve_one = |t: &mut MmioTransport<_>| {
            queue.add_chain(&mem, &[(0x10000, 8, true)]);
            write_reg(t, 0x50, 0);
        };
        serve_one(&mut t);
        assert_eq!(irq.count(), 1);
        serve_one(&mut t);
        assert_eq!(irq.count(), 1, "not acknowledged yet");
        // The driver's InterruptACK write of 1, as KVM counts it.
        acks.write(1).unwrap();
        serve_one(&mut t);
        assert_eq!(irq.count(), 2, "acknowledged: raised again");
        assert!(acks.read().is_err(), "the acknowledgement was taken");
        assert_eq!(read_reg(&mut t, 0x60), VIRTIO_MMIO_INT_VRING);
        // The register still works for every other value.
        write_reg(&mut t, 0x64, VIRTIO_MMIO_INT_VRING);
        assert_eq!(read_reg(&mut t, 0x60), 0);
    }

    #[test]
    fn an_avail_index_far_ahead_breaks_the_queue() {
        let (mut t, _, mem) = rng_transport();
        assert!(negotiate(&mut t, FEATURES));
        let queue = TestQueue::new(16, 0x1000);
        queue.install(&mut t, 0);
        driver_ok(&mut t);
        mem.write_obj(100u16, GuestAddress(queue.avail + 2)).unwrap();
        t.queue_notify(0);
        assert_ne!(read_reg(&mut t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_eq!(queue.used_idx(&mem), 0);
    }
}
