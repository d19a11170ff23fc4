//! The KVM virtual machine and its RAM.

use std::sync::atomic::{AtomicBool, Ordering};

use kvm_ioctls::{Kvm, VmFd};
use vmm_memory::{GuestRam, layout};

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_clock_data, kvm_pit_config};

use crate::{CpuTopology, Result, Vcpu, kvm_error};

/// A KVM VM that owns its guest RAM.
///
/// The fields drop in order: the VM file descriptor closes before the RAM is
/// unmapped, so KVM never holds a slot over freed memory.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    ram: GuestRam,
    /// The in-kernel irqchip and PIT exist.
    irqchip: AtomicBool,
}

impl Vm {
    /// Creates a VM, places KVM's TSS and identity-map pages in the MMIO hole,
    /// and registers `ram` as its memory.
    pub fn new(kvm: &Kvm, ram: GuestRam) -> Result<Self> {
        let fd = kvm.create_vm().map_err(kvm_error("KVM_CREATE_VM"))?;
        fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(kvm_error("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_error("KVM_SET_IDENTITY_MAP_ADDR"))?;
        // SAFETY: `ram` is moved into the returned `Vm`, whose `fd` field is
        // dropped (closing the VM) before `ram` is, so the mapping outlives
        // every use KVM can make of it.
        unsafe { ram.register(&fd) }?;
        Ok(Vm { fd, ram, irqchip: AtomicBool::new(false) })
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The guest's RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Creates the in-kernel interrupt controllers (8259 PICs, I/O APIC,
    /// local APICs) and the 8254 PIT, as a PC has them. Must come before
    /// the vCPUs are created.
    pub fn create_irqchip(&self) -> Result<()> {
        self.fd.create_irq_chip().map_err(kvm_error("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        self.fd.create_pit2(pit).map_err(kvm_error("KVM_CREATE_PIT2"))?;
        self.irqchip.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// True once [`Vm::create_irqchip`] succeeded.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip.load(Ordering::Relaxed)
    }

    /// The guest's kvmclock (KVM_GET_CLOCK), to hold it still over a pause.
    pub fn clock(&self) -> Result<kvm_clock_data> {
        self.fd.get_clock().map_err(kvm_error("KVM_GET_CLOCK"))
    }

    /// Sets the guest's kvmclock to `clock`'s value (KVM_SET_CLOCK), as it
    /// was read, not advanced by the wall-clock time since: the flags are
    /// cleared, so KVM does not add the real time elapsed (KVM_CLOCK_REALTIME).
    pub fn set_clock(&self, clock: &kvm_clock_data) -> Result<()> {
        let clock = kvm_clock_data { clock: clock.clock, ..Default::default() };
        self.fd.set_clock(&clock).map_err(kvm_error("KVM_SET_CLOCK"))
    }

    /// Creates vCPU `index` of `topology` with the host's supported CPUID,
    /// adjusted for it.
    pub fn create_vcpu(&self, kvm: &Kvm, index: u8, topology: CpuTopology) -> Result<Vcpu> {
        Vcpu::new(kvm, &self.fd, self.ram.memory().clone(), index, topology, self.has_irqchip())
    }
}
