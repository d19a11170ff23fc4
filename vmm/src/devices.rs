//! The device manager: the legacy port devices, and virtio-mmio devices
//! with their slot, interrupt and queue notifiers.
//!
//! Virtio devices are set up in two steps, because the kernel command line
//! must name them before the loader writes it, and KVM must exist before
//! their interrupts and notifiers can be wired: [`DeviceManager::add_virtio`]
//! allocates a 4 KiB slot in the MMIO hole and a GSI (vm-allocator) and
//! returns the `virtio_mmio.device=` entry; [`DeviceManager::attach`] then
//! registers each device's window on the MMIO bus, its interrupt as an irqfd
//! and one ioeventfd per queue on QueueNotify (datamatch: the queue index),
//! so a notification never leaves the kernel as an MMIO exit.

use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};
use vm_device::DeviceMmio;
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vmm_devices::ExitRequest;
use vmm_devices::acpi_pm::{ACPI_PM_PORT_LEN, AcpiPm};
use vmm_devices::debug_exit::{DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN, DebugExit};
use vmm_devices::fw_cfg::{FW_CFG_PORT, FW_CFG_PORT_LEN, FwCfg};
use vmm_devices::i8042::{I8042, I8042_COMMAND_PORT, I8042_DATA_PORT};
use vmm_devices::pci_host::{PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN, PciHost};
use vmm_devices::serial::{COM1_PORT, SERIAL_PORT_LEN};
use vmm_memory::layout;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_virtio::mmio::{ACK_VRING, INTERRUPT_ACK, QUEUE_NOTIFY};
use vmm_virtio::{
    MMIO_WINDOW_SIZE, Memory, MmioTransport, QueueNotify, TransportPersist, VirtioDevice,
};

use crate::api::control::CounterSource;
use crate::machine::Serial;

/// A device's counters as JSON (for the control API's `vm.counters`).
pub trait DeviceCounters {
    /// The counters, by name.
    fn counters_json(&self) -> serde_json::Value;
}

impl DeviceCounters for vmm_virtio::block::Block {
    fn counters_json(&self) -> serde_json::Value {
        let c = self.counters();
        serde_json::json!({
            "requests": c.requests,
            "read_bytes": c.read_bytes,
            "write_bytes": c.written_bytes,
            "errors": c.errors,
            "malformed": c.malformed,
        })
    }
}

impl<T: vmm_virtio::tap::TapIo> DeviceCounters for vmm_virtio::net::Net<T> {
    fn counters_json(&self) -> serde_json::Value {
        let c = self.counters();
        serde_json::json!({
            "rx_frames": c.rx_frames,
            "rx_bytes": c.rx_bytes,
            "rx_dropped": c.rx_dropped,
            "tx_frames": c.tx_frames,
            "tx_bytes": c.tx_bytes,
            "tx_dropped": c.tx_dropped,
            "malformed": c.malformed,
        })
    }
}

impl DeviceCounters for vmm_virtio::vsock::Vsock {
    fn counters_json(&self) -> serde_json::Value {
        let c = self.counters();
        serde_json::json!({
            "rx_packets": c.rx_packets,
            "rx_bytes": c.rx_bytes,
            "tx_packets": c.tx_packets,
            "tx_bytes": c.tx_bytes,
            "connections": c.connections,
            "open_connections": self.connections(),
            "rst_sent": c.rst_sent,
            "rst_dropped": c.rst_dropped,
            "refused": c.refused,
            "malformed": c.malformed,
            "bad_cid": c.bad_cid,
            "bad_op": c.bad_op,
            "unknown_connection": c.unknown_connection,
            "credit_overflow": c.credit_overflow,
            "timeouts": c.timeouts,
        })
    }
}

impl<R: std::io::Read + Send> DeviceCounters for vmm_virtio::rng::Rng<R> {
    fn counters_json(&self) -> serde_json::Value {
        serde_json::json!({ "bytes": self.bytes() })
    }
}

/// A virtio-mmio device placed in the machine.
pub struct VirtioSlot {
    /// What it is, for messages ("virtio-blk", ...).
    pub name: String,
    /// Its id in the control API's counters ("disk0", "net0", "vsock", "rng").
    pub id: String,
    /// Reads its counters.
    pub counters: CounterSource,
    /// Guest-physical base of its register window.
    pub addr: u64,
    /// Its interrupt line.
    pub gsi: u32,
    transport: Arc<Mutex<dyn QueueNotify>>,
    /// Its registers and queues for a snapshot.
    pub persist: Arc<Mutex<dyn TransportPersist>>,
    window: Arc<dyn DeviceMmio + Send + Sync>,
    interrupt: EventFd,
    /// One eventfd per queue, signalled by KVM (ioeventfd) or the transport.
    pub notifiers: Vec<EventFd>,
    /// Signalled by KVM (ioeventfd) for the driver's acknowledgements of
    /// used-buffer interrupts, read by the transport.
    acks: EventFd,
}

impl VirtioSlot {
    /// The transport, to serve its queues.
    pub fn transport(&self) -> Arc<Mutex<dyn QueueNotify>> {
        self.transport.clone()
    }
}

/// The machine's devices beyond RAM and vCPUs.
pub struct DeviceManager {
    mmio: AddressAllocator,
    gsis: IdAllocator,
    /// The virtio devices, in the order the guest numbers them.
    pub virtio: Vec<VirtioSlot>,
}

impl DeviceManager {
    /// A machine with no virtio device yet.
    pub fn new() -> anyhow::Result<DeviceManager> {
        Ok(DeviceManager {
            mmio: AddressAllocator::new(layout::VIRTIO_MMIO_START, layout::VIRTIO_MMIO_SIZE)
                .map_err(|err| anyhow::anyhow!("virtio-mmio window: {err}"))?,
            gsis: IdAllocator::new(layout::VIRTIO_FIRST_GSI, layout::VIRTIO_LAST_GSI)
                .map_err(|err| anyhow::anyhow!("virtio interrupts: {err}"))?,
            virtio: Vec::new(),
        })
    }

    /// Places `device` behind a virtio-mmio transport on `mem` and returns
    /// the kernel command-line entry that announces it.
    pub fn add_virtio<D: VirtioDevice + DeviceCounters + 'static>(
        &mut self,
        name: &str,
        id: &str,
        device: D,
        mem: &Memory,
    ) -> anyhow::Result<String> {
        let Ok(gsi) = self.gsis.allocate_id() else {
            bail!(
                "too many virtio devices: interrupts {} to {} are all taken",
                layout::VIRTIO_FIRST_GSI,
                layout::VIRTIO_LAST_GSI
            );
        };
        let range = self
            .mmio
            .allocate(MMIO_WINDOW_SIZE, MMIO_WINDOW_SIZE, AllocPolicy::FirstMatch)
            .map_err(|err| anyhow::anyhow!("no room for another virtio-mmio device: {err}"))?;
        let interrupt = EventFd::new(EFD_NONBLOCK).context("cannot create an eventfd")?;
        let queues = device.queue_max_sizes().len();
        let notifiers = (0..queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()
            .context("cannot create an eventfd")?;
        let mut transport =
            MmioTransport::new(device, mem.clone(), Box::new(interrupt.try_clone()?))?;
        transport.set_notifiers(
            notifiers.iter().map(EventFd::try_clone).collect::<std::io::Result<_>>()?,
        );
        let acks = EventFd::new(EFD_NONBLOCK).context("cannot create an eventfd")?;
        transport.set_ack_notifier(acks.try_clone()?);
        let transport = Arc::new(Mutex::new(transport));
        let typed = transport.clone();
        let counters: CounterSource = Box::new(move || {
            typed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).device().counters_json()
        });
        let addr = range.start();
        self.virtio.push(VirtioSlot {
            name: name.to_owned(),
            id: id.to_owned(),
            counters,
            addr,
            gsi,
            transport: transport.clone(),
            persist: transport.clone(),
            window: transport,
            interrupt,
            notifiers,
            acks,
        });
        log::info!("{name} at {addr:#x}, interrupt {gsi}");
        Ok(format!("virtio_mmio.device=4K@{addr:#x}:{gsi}"))
    }

    /// The interrupts the virtio devices use.
    pub fn gsis(&self) -> Vec<u32> {
        self.virtio.iter().map(|slot| slot.gsi).collect()
    }

    /// Wires every virtio device to KVM and puts its window on `bus`.
    pub fn attach(&self, vm: &VmFd, bus: &mut IoManager) -> anyhow::Result<()> {
        for slot in &self.virtio {
            vm.register_irqfd(&slot.interrupt, slot.gsi).with_context(|| {
                format!("cannot connect the {} interrupt (KVM_IRQFD)", slot.name)
            })?;
            for (index, notifier) in slot.notifiers.iter().enumerate() {
                let address = IoEventAddress::Mmio(slot.addr + QUEUE_NOTIFY);
                vm.register_ioevent(notifier, &address, index as u32).with_context(|| {
                    format!("cannot register the {} queue notifier (KVM_IOEVENTFD)", slot.name)
                })?;
            }
            // The driver's InterruptACK write after a used-buffer interrupt
            // then costs no exit: the transport reads the count itself.
            let address = IoEventAddress::Mmio(slot.addr + INTERRUPT_ACK);
            vm.register_ioevent(&slot.acks, &address, ACK_VRING).with_context(|| {
                format!(
                    "cannot register the {} acknowledgement notifier (KVM_IOEVENTFD)",
                    slot.name
                )
            })?;
            let range = MmioRange::new(MmioAddress(slot.addr), MMIO_WINDOW_SIZE)?;
            bus.register_mmio(range, slot.window.clone())
                .with_context(|| format!("cannot register the {} window", slot.name))?;
        }
        Ok(())
    }
}

/// The ACPI sleep and reset registers, at the ports the FADT names, and
/// the PCI configuration ports an ACPI kernel probes.
pub fn add_acpi_pm(
    bus: &mut IoManager,
    requests: impl ExitRequest + 'static,
) -> anyhow::Result<Arc<Mutex<PciHost>>> {
    let pm = AcpiPm::new(requests, layout::ACPI_S5_SLEEP_TYPE, layout::ACPI_RESET_VALUE);
    let range = PioRange::new(PioAddress(layout::ACPI_SLEEP_CONTROL_PORT), ACPI_PM_PORT_LEN)?;
    bus.register_pio(range, Arc::new(Mutex::new(pm)))
        .context("cannot register the ACPI power-management registers")?;
    // An ACPI kernel has PCI support and looks for configuration space.
    let range = PioRange::new(PioAddress(PCI_CONFIG_PORT), PCI_CONFIG_PORT_LEN)?;
    let pci_host = Arc::new(Mutex::new(PciHost::new()));
    bus.register_pio(range, pci_host.clone())
        .context("cannot register the PCI configuration ports")?;
    Ok(pci_host)
}

/// The legacy devices that hold state, for a snapshot (the serial port is
/// the machine's own; debug exit and the ACPI registers hold none).
pub struct LegacyDevices<R> {
    /// The i8042 controller.
    pub i8042: Arc<Mutex<I8042<R>>>,
    /// fw_cfg.
    pub fw_cfg: Arc<Mutex<FwCfg>>,
    /// The PCI host (with ACPI).
    pub pci_host: Option<Arc<Mutex<PciHost>>>,
}

/// The legacy devices on the port I/O bus; fw_cfg tells the guest the RAM
/// size and CPU count.
pub fn legacy_bus<R: ExitRequest + Clone + 'static>(
    serial: Arc<Serial>,
    requests: R,
    ram_size: u64,
    cpus: u8,
) -> anyhow::Result<(IoManager, LegacyDevices<R>)> {
    let mut bus = IoManager::new();
    bus.register_pio(PioRange::new(PioAddress(COM1_PORT), SERIAL_PORT_LEN)?, serial)
        .context("cannot register the serial port")?;
    let debug_exit = Arc::new(Mutex::new(DebugExit::new(requests.clone())));
    bus.register_pio(PioRange::new(PioAddress(DEBUG_EXIT_PORT), DEBUG_EXIT_PORT_LEN)?, debug_exit)
        .context("cannot register the debug-exit port")?;
    let i8042 = Arc::new(Mutex::new(I8042::new(requests)));
    for port in [I8042_DATA_PORT, I8042_COMMAND_PORT] {
        bus.register_pio(PioRange::new(PioAddress(port), 1)?, i8042.clone())
            .context("cannot register the i8042 controller")?;
    }
    let fw_cfg = Arc::new(Mutex::new(FwCfg::new(ram_size, u16::from(cpus))));
    bus.register_pio(PioRange::new(PioAddress(FW_CFG_PORT), FW_CFG_PORT_LEN)?, fw_cfg.clone())
        .context("cannot register fw_cfg")?;
    Ok((bus, LegacyDevices { i8042, fw_cfg, pci_host: None }))
}
