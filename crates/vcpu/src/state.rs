//! Saving and restoring the state KVM keeps for a vCPU and for the VM, as
//! plain serde structs (kvm-bindings' `serde` feature serializes each KVM
//! structure as its bytes).
//!
//! The orders follow Firecracker's `vstate/vcpu.rs`. Saving: the MP state
//! first (KVM_GET_MP_STATE accepts pending INIT/SIPI events into the vCPU
//! and LAPIC state, which the later reads must see), then registers, FPU and
//! extended state (xsave, XCRs), debug registers, LAPIC, TSC frequency,
//! CPUID, MSRs, and the pending events last. Restoring: CPUID first (the
//! MSRs and xsave layout KVM accepts depend on it), the MP state,
//! registers and special registers, xsave, XCRs, debug registers, LAPIC,
//! then the MSRs (after the LAPIC, so the TSC deadline is not cleared by
//! the LAPIC write; IA32_TSC before the deadline), and the pending events
//! last (they may inject an exception into the state set before).
//!
//! MSRs come from KVM's own list (KVM_GET_MSR_INDEX_LIST, read once when
//! the vCPU is created). Some of them cannot be read on a given host (KVM
//! lists what it knows, not what this CPU has): KVM_GET_MSRS stops at the
//! first it cannot read, which is left out and the read goes on with the
//! rest, as Firecracker does. On restore an MSR the new host refuses is
//! logged and skipped likewise.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs,
    kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Vcpu, Vm, kvm_error};

/// IA32_TSC_DEADLINE: restored after IA32_TSC, which it is relative to.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// The irqchip ids of KVM_GET_IRQCHIP.
const IRQCHIP_PIC_MASTER: u32 = 0;
const IRQCHIP_PIC_SLAVE: u32 = 1;
const IRQCHIP_IOAPIC: u32 = 2;

/// Everything KVM holds for one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's index (its APIC id).
    pub index: u8,
    /// CPUID as the guest sees it.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// MP state (running, halted, waiting for INIT/SIPI).
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// x87, SSE and AVX state (the XSAVE area; it holds what KVM_GET_FPU
    /// would give).
    pub xsave: kvm_xsave,
    /// The extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The local APIC (with the in-kernel irqchip).
    pub lapic: Option<kvm_lapic_state>,
    /// The guest's TSC frequency, where KVM reports it.
    pub tsc_khz: Option<u32>,
    /// Every MSR that could be read, in the order to restore them.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub events: kvm_vcpu_events,
}

/// What KVM holds for the VM: interrupt controllers, PIT and clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    /// The master and slave 8259 PICs and the I/O APIC, with the in-kernel
    /// irqchip.
    pub irqchips: Option<[kvm_irqchip; 3]>,
    /// The 8254 PIT, with the in-kernel irqchip.
    pub pit: Option<kvm_pit_state2>,
    /// The guest's kvmclock.
    pub clock: kvm_clock_data,
}

/// The MSRs a vCPU's state saves: KVM's list, the TSC deadline last.
pub fn msrs_to_save(kvm: &Kvm) -> Result<Vec<u32>> {
    let list = kvm.get_msr_index_list().map_err(kvm_error("KVM_GET_MSR_INDEX_LIST"))?;
    let mut indices: Vec<u32> =
        list.as_slice().iter().copied().filter(|&msr| msr != MSR_IA32_TSC_DEADLINE).collect();
    if list.as_slice().contains(&MSR_IA32_TSC_DEADLINE) {
        indices.push(MSR_IA32_TSC_DEADLINE);
    }
    Ok(indices)
}

fn msrs_of(entries: &[kvm_msr_entry]) -> Result<Msrs> {
    Msrs::from_entries(entries).map_err(|_| Error::Kvm {
        what: "building the MSR list",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })
}

/// Reads the MSRs `indices` names, leaving out those KVM cannot read.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    let mut saved = Vec::with_capacity(indices.len());
    let mut rest: Vec<kvm_msr_entry> =
        indices.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
    while !rest.is_empty() {
        let chunk = rest.len().min(kvm_bindings::KVM_MAX_MSR_ENTRIES);
        let mut msrs = msrs_of(&rest[..chunk])?;
        let read = fd.get_msrs(&mut msrs).map_err(kvm_error("KVM_GET_MSRS"))?;
        saved.extend_from_slice(&msrs.as_slice()[..read]);
        // KVM stopped at the first MSR it could not read: skip it.
        let skip = if read < chunk {
            log::debug!("vCPU state: MSR {:#x} cannot be read, left out", rest[read].index);
            read + 1
        } else {
            read
        };
        rest.drain(..skip);
    }
    Ok(saved)
}

/// Writes `entries`, skipping (and logging) those KVM refuses.
fn write_msrs(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<()> {
    let mut rest = entries;
    while !rest.is_empty() {
        let chunk = rest.len().min(kvm_bindings::KVM_MAX_MSR_ENTRIES);
        let written = fd.set_msrs(&msrs_of(&rest[..chunk])?).map_err(kvm_error("KVM_SET_MSRS"))?;
        let skip = if written < chunk {
            let refused = rest[written];
            // A zero is what KVM resets most MSRs to: nothing is lost.
            let level = if refused.data == 0 { log::Level::Debug } else { log::Level::Warn };
            log::log!(
                level,
                "restore: KVM refuses MSR {:#x} = {:#x} here, left as it is",
                refused.index,
                refused.data
            );
            written + 1
        } else {
            written
        };
        rest = &rest[skip..];
    }
    Ok(())
}

impl Vcpu {
    /// Reads the vCPU's whole state (on its own thread, while it is
    /// parked between two runs).
    pub fn save_state(&self) -> Result<VcpuState> {
        let fd = self.fd();
        let mp_state = fd.get_mp_state().map_err(kvm_error("KVM_GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(kvm_error("KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(kvm_error("KVM_GET_SREGS"))?;
        let xsave = fd.get_xsave().map_err(kvm_error("KVM_GET_XSAVE"))?;
        let xcrs = fd.get_xcrs().map_err(kvm_error("KVM_GET_XCRS"))?;
        let debug_regs = fd.get_debug_regs().map_err(kvm_error("KVM_GET_DEBUGREGS"))?;
        let lapic = if self.irqchip {
            Some(fd.get_lapic().map_err(kvm_error("KVM_GET_LAPIC"))?)
        } else {
            None
        };
        let tsc_khz = fd.get_tsc_khz().ok();
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_error("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let msrs = read_msrs(fd, &self.msr_indices)?;
        let events = fd.get_vcpu_events().map_err(kvm_error("KVM_GET_VCPU_EVENTS"))?;
        Ok(VcpuState {
            index: self.index(),
            cpuid,
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            tsc_khz,
            msrs,
            events,
        })
    }

    /// Gives the (new, not yet run) vCPU `state`, replacing what set-up
    /// gave it.
    pub fn restore_state(&mut self, state: &VcpuState) -> Result<()> {
        let fd = self.fd();
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| Error::Kvm {
            what: "building the CPUID list",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        fd.set_cpuid2(&cpuid).map_err(kvm_error("KVM_SET_CPUID2"))?;
        if let Some(khz) = state.tsc_khz
            && fd.get_tsc_khz().ok() != Some(khz)
            && let Err(err) = fd.set_tsc_khz(khz)
        {
            log::warn!("restore: cannot set the guest's TSC to {khz} kHz: {err}");
        }
        fd.set_mp_state(state.mp_state).map_err(kvm_error("KVM_SET_MP_STATE"))?;
        fd.set_regs(&state.regs).map_err(kvm_error("KVM_SET_REGS"))?;
        fd.set_sregs(&state.sregs).map_err(kvm_error("KVM_SET_SREGS"))?;
        // SAFETY: the buffer is a whole kvm_xsave (4 KiB) as KVM_GET_XSAVE
        // gave it; the kernel reads no more than that (no XSAVE2 size was
        // negotiated for this vCPU).
        unsafe { fd.set_xsave(&state.xsave) }.map_err(kvm_error("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&state.xcrs).map_err(kvm_error("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&state.debug_regs).map_err(kvm_error("KVM_SET_DEBUGREGS"))?;
        if let Some(lapic) = &state.lapic {
            fd.set_lapic(lapic).map_err(kvm_error("KVM_SET_LAPIC"))?;
        }
        write_msrs(fd, &state.msrs)?;
        fd.set_vcpu_events(&state.events).map_err(kvm_error("KVM_SET_VCPU_EVENTS"))
    }
}

impl Vm {
    /// Reads the VM's interrupt controllers, PIT (with the in-kernel
    /// irqchip) and clock.
    pub fn save_state(&self) -> Result<VmState> {
        let clock = self.clock()?;
        if !self.has_irqchip() {
            return Ok(VmState { irqchips: None, pit: None, clock });
        }
        let pit = self.fd().get_pit2().map_err(kvm_error("KVM_GET_PIT2"))?;
        let mut chips = [IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE, IRQCHIP_IOAPIC]
            .map(|chip_id| kvm_irqchip { chip_id, ..Default::default() });
        for chip in &mut chips {
            self.fd().get_irqchip(chip).map_err(kvm_error("KVM_GET_IRQCHIP"))?;
        }
        Ok(VmState { irqchips: Some(chips), pit: Some(pit), clock })
    }

    /// Gives the VM (whose irqchip, if any, exists) `state`: the PIT, the
    /// clock, the PICs and the I/O APIC, in Firecracker's order.
    pub fn restore_state(&self, state: &VmState) -> Result<()> {
        if let Some(pit) = &state.pit {
            self.fd().set_pit2(pit).map_err(kvm_error("KVM_SET_PIT2"))?;
        }
        self.set_clock(&state.clock)?;
        if let Some(chips) = &state.irqchips {
            for chip in chips {
                self.fd().set_irqchip(chip).map_err(kvm_error("KVM_SET_IRQCHIP"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuTopology;
    use vmm_memory::GuestRam;

    /// KVM, or `None` (with a note) where there is none and it is not required.
    fn kvm() -> Option<Kvm> {
        match crate::kvm::open(crate::kvm::DEFAULT_DEVICE) {
            Ok(kvm) => Some(kvm),
            Err(err) if std::env::var_os("VMM_REQUIRE_KVM").is_none() => {
                eprintln!("SKIPPED: /dev/kvm is not usable here: {err}");
                None
            }
            Err(err) => panic!("{err}"),
        }
    }

    fn machine(kvm: &Kvm) -> (Vm, Vcpu) {
        let vm = Vm::new(kvm, GuestRam::new(2).unwrap()).unwrap();
        vm.create_irqchip().unwrap();
        let topology = CpuTopology { count: 1, pv_ipi: false };
        let mut vcpu = vm.create_vcpu(kvm, 0, topology).unwrap();
        vcpu.setup_platform(true).unwrap();
        (vm, vcpu)
    }

    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;

    #[test]
    fn a_vcpu_and_vm_restored_into_a_fresh_vm_read_back_the_same() {
        let Some(kvm) = kvm() else { return };
        let (vm, mut vcpu) = machine(&kvm);
        vcpu.setup_long_mode(0x10_0000, 0x7000).unwrap();
        let mut regs = vcpu.fd().get_regs().unwrap();
        (regs.rax, regs.rbx, regs.r15) = (0x1234, 0x5678_9abc_def0, u64::MAX);
        vcpu.fd().set_regs(&regs).unwrap();
        let gs = kvm_msr_entry {
            index: MSR_KERNEL_GS_BASE,
            data: 0xffff_8880_0000_1000,
            ..Default::default()
        };
        vcpu.fd().set_msrs(&msrs_of(&[gs]).unwrap()).unwrap();
        let mut debug = vcpu.fd().get_debug_regs().unwrap();
        debug.db[0] = 0x4000;
        vcpu.fd().set_debug_regs(&debug).unwrap();

        let saved = vcpu.save_state().unwrap();
        let vm_saved = vm.save_state().unwrap();
        assert!(saved.lapic.is_some() && vm_saved.irqchips.is_some() && vm_saved.pit.is_some());
        assert!(saved.msrs.iter().any(|m| m.index == MSR_KERNEL_GS_BASE && m.data == gs.data));
        // Through the snapshot's encoding and back.
        let json = serde_json::to_vec(&(&saved, &vm_saved)).unwrap();
        let (state, vm_state): (VcpuState, VmState) = serde_json::from_slice(&json).unwrap();

        let (fresh_vm, mut fresh) = machine(&kvm);
        fresh_vm.restore_state(&vm_state).unwrap();
        fresh.restore_state(&state).unwrap();
        let again = fresh.save_state().unwrap();
        let bytes = |value: &dyn erased::Bytes| value.bytes();
        assert_eq!(again.regs.rax, 0x1234);
        assert_eq!(bytes(&again.regs), bytes(&saved.regs));
        assert_eq!(bytes(&again.sregs), bytes(&saved.sregs));
        assert_eq!(bytes(&again.xcrs), bytes(&saved.xcrs));
        assert_eq!(bytes(&again.debug_regs), bytes(&saved.debug_regs));
        assert_eq!(bytes(&again.mp_state), bytes(&saved.mp_state));
        assert_eq!(bytes(&again.xsave), bytes(&saved.xsave));
        assert_eq!(again.cpuid.len(), saved.cpuid.len());
        let lapic = |state: &VcpuState| state.lapic.as_ref().map(|l| l.regs.to_vec());
        // The APIC timer's current count (0x390) moves; the rest must not.
        let mut before = lapic(&saved).unwrap();
        let mut after = lapic(&again).unwrap();
        before[0x390..0x394].fill(0);
        after[0x390..0x394].fill(0);
        assert_eq!(before, after);
        let msrs = |state: &VcpuState| -> Vec<(u32, u64)> {
            state
                .msrs
                .iter()
                .filter(|m| m.index != MSR_IA32_TSC)
                .map(|m| (m.index, m.data))
                .collect()
        };
        assert_eq!(msrs(&again), msrs(&saved));
        let pics = |state: &VmState| {
            state.irqchips.as_ref().map(|chips| chips.iter().map(|c| bytes(c)).collect::<Vec<_>>())
        };
        assert_eq!(pics(&fresh_vm.save_state().unwrap()), pics(&vm_saved));
    }

    /// The bytes of a KVM structure, to compare two.
    mod erased {
        pub trait Bytes {
            fn bytes(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Bytes for T {
            fn bytes(&self) -> Vec<u8> {
                serde_json::from_value(serde_json::to_value(self).unwrap()).unwrap()
            }
        }
    }
}
