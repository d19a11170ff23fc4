//! The per-vCPU state a PC firmware would leave for an operating system.

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry};
use kvm_ioctls::VcpuFd;

use crate::{Error, Result, kvm_error};

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE: fast string operations enabled, as firmware sets it.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled with write-back as the default memory type.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// x87 control word after FNINIT: all exceptions masked, 64-bit precision.
const FPU_CONTROL_WORD: u16 = 0x37f;
/// MXCSR after reset: all SSE exceptions masked.
const MXCSR_DEFAULT: u32 = 0x1f80;

/// Local APIC register offsets of the LINT0 and LINT1 vector table entries.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_DELIVERY_MODE_NMI: u32 = 0b100;
const APIC_DELIVERY_MODE_EXTINT: u32 = 0b111;

/// The boot MSRs: syscall and sysenter MSRs cleared, fast strings on,
/// MTRRs enabled with write-back as default.
pub(crate) fn boot_msrs() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry { index, data, ..Default::default() };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}

pub(crate) fn set_boot_msrs(fd: &VcpuFd) -> Result<()> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Kvm {
        what: "building the MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let written = fd.set_msrs(&msrs).map_err(kvm_error("KVM_SET_MSRS"))?;
    if written != entries.len() {
        let failed = entries[written].index;
        log::warn!("KVM refused boot MSR {failed:#x}; {written} of {} set", entries.len());
    }
    Ok(())
}

pub(crate) fn set_fpu(fd: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu { fcw: FPU_CONTROL_WORD, mxcsr: MXCSR_DEFAULT, ..Default::default() };
    fd.set_fpu(&fpu).map_err(kvm_error("KVM_SET_FPU"))
}

/// Replaces the delivery mode (bits 8-10) of a local vector table entry.
pub(crate) fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

fn lapic_reg(regs: &[libc::c_char; 1024], offset: usize) -> u32 {
    let bytes = [regs[offset], regs[offset + 1], regs[offset + 2], regs[offset + 3]];
    u32::from_le_bytes(bytes.map(|b| b as u8))
}

fn set_lapic_reg(regs: &mut [libc::c_char; 1024], offset: usize, value: u32) {
    for (slot, byte) in regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *slot = byte as libc::c_char;
    }
}

/// Wires LINT0 to the 8259's ExtINT and LINT1 to NMI, as the MP table says.
pub(crate) fn set_lint(fd: &VcpuFd) -> Result<()> {
    let mut lapic = fd.get_lapic().map_err(kvm_error("KVM_GET_LAPIC"))?;
    let lint0 = lapic_reg(&lapic.regs, APIC_LVT_LINT0);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT_LINT0,
        with_delivery_mode(lint0, APIC_DELIVERY_MODE_EXTINT),
    );
    let lint1 = lapic_reg(&lapic.regs, APIC_LVT_LINT1);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT_LINT1,
        with_delivery_mode(lint1, APIC_DELIVERY_MODE_NMI),
    );
    fd.set_lapic(&lapic).map_err(kvm_error("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_mode_replaces_bits_8_to_10_only() {
        assert_eq!(with_delivery_mode(0x0001_0000, APIC_DELIVERY_MODE_EXTINT), 0x0001_0700);
        assert_eq!(with_delivery_mode(0x0000_07ff, APIC_DELIVERY_MODE_NMI), 0x0000_04ff);
    }

    #[test]
    fn lapic_registers_round_trip() {
        let mut regs = [0 as libc::c_char; 1024];
        set_lapic_reg(&mut regs, APIC_LVT_LINT1, 0x8000_0400);
        assert_eq!(lapic_reg(&regs, APIC_LVT_LINT1), 0x8000_0400);
    }

    #[test]
    fn boot_msrs_enable_fast_strings_and_mtrrs() {
        let msrs = boot_msrs();
        let get = |index| msrs.iter().find(|m| m.index == index).map(|m| m.data);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(MSR_LSTAR), Some(0));
    }
}
