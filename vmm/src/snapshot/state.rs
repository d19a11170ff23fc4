//! The machine state a snapshot's `state` file holds (in vmm-snapshot's
//! versioned blob). Plain serde structs made of the crates' own state
//! types; nothing here knows how they are read or applied. The fuzz target
//! `snapshot` decodes this very type (it includes this file).

use serde::{Deserialize, Serialize};
use vmm_devices::fw_cfg::FwCfgState;
use vmm_devices::i8042::I8042State;
use vmm_devices::serial::SerialPortState;
use vmm_vcpu::state::{VcpuState, VmState};
use vmm_virtio::MmioTransportState;

/// Everything but guest RAM and the configuration.
#[derive(Debug, Serialize, Deserialize)]
pub struct MachineState {
    /// What the boot decided about the machine, which a restore (which
    /// loads no image) cannot work out again.
    pub machine: MachineShape,
    /// The VM's interrupt controllers, PIT and clock.
    pub vm: VmState,
    /// Each vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// The devices.
    pub devices: DevicesState,
}

/// The machine's shape, as the booted image made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineShape {
    /// The in-kernel irqchip and PIT exist.
    pub irqchip: bool,
    /// The ACPI power-management registers and PCI host are on the bus.
    pub acpi: bool,
    /// A triple fault is a crash (bare images), not a reset (Linux).
    pub report_triple_faults: bool,
}

/// The devices' state.
#[derive(Debug, Serialize, Deserialize)]
pub struct DevicesState {
    /// COM1.
    pub serial: SerialPortState,
    /// The i8042 controller.
    pub i8042: I8042State,
    /// fw_cfg.
    pub fw_cfg: FwCfgState,
    /// The PCI host's address register, with ACPI.
    pub pci_host: Option<u32>,
    /// Each virtio-mmio transport, in slot order (block and rng devices
    /// hold nothing else: their configuration comes from config.json).
    #[serde(default)]
    pub virtio: Vec<MmioTransportState>,
}
