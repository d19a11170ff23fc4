//! One virtual CPU.

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::cpuid::CpuTopology;
use crate::{Result, cpuid, kvm_error, modes, platform};

/// The longest x86 instruction.
const MAX_INSTRUCTION_LEN: usize = 15;
const PAGE_SIZE: u64 = 4096;

/// A KVM vCPU and the guest memory it runs in.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    memory: GuestMemoryMmap,
    /// The VM has the in-kernel irqchip (so the vCPU has a LAPIC to save).
    pub(crate) irqchip: bool,
    /// The MSRs a snapshot saves (KVM's list).
    pub(crate) msr_indices: Vec<u32>,
}

/// Where a vCPU stood when the guest failed, for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultContext {
    /// Instruction pointer.
    pub rip: u64,
    /// Code segment selector.
    pub cs: u16,
    /// Code segment base (non-zero in real mode).
    pub cs_base: u64,
    /// Up to 15 bytes at CS:RIP, if they are in guest RAM.
    pub bytes: Option<Vec<u8>>,
}

impl Vcpu {
    pub(crate) fn new(
        kvm: &Kvm,
        vm: &VmFd,
        memory: GuestMemoryMmap,
        index: u8,
        topology: CpuTopology,
        irqchip: bool,
    ) -> Result<Self> {
        let fd = vm.create_vcpu(u64::from(index)).map_err(kvm_error("KVM_CREATE_VCPU"))?;
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_error("KVM_GET_SUPPORTED_CPUID"))?;
        cpuid::adjust(&mut cpuid, index, topology);
        fd.set_cpuid2(&cpuid).map_err(kvm_error("KVM_SET_CPUID2"))?;
        let msr_indices = crate::state::msrs_to_save(kvm)?;
        Ok(Vcpu { fd, index, memory, irqchip, msr_indices })
    }

    /// The vCPU's index (and APIC id).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The KVM vCPU file descriptor.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The KVM vCPU file descriptor, mutably.
    pub fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    /// Starts the vCPU in 16-bit real mode at `segment:ip`.
    pub fn setup_real_mode(&mut self, segment: u16, ip: u16) -> Result<()> {
        let mut sregs = self.fd.get_sregs().map_err(kvm_error("KVM_GET_SREGS"))?;
        modes::real_mode_sregs(&mut sregs, segment);
        self.fd.set_sregs(&sregs).map_err(kvm_error("KVM_SET_SREGS"))?;
        self.fd.set_regs(&modes::real_mode_regs(ip)).map_err(kvm_error("KVM_SET_REGS"))
    }

    /// Starts the vCPU in 32-bit protected mode (paging off, flat segments)
    /// at `eip` with `ebx` and `eax` set, writing the GDT into guest memory.
    pub fn setup_protected_mode(&mut self, eip: u32, ebx: u32, eax: u32) -> Result<()> {
        modes::write_descriptor_tables(&self.memory)?;
        let mut sregs = self.fd.get_sregs().map_err(kvm_error("KVM_GET_SREGS"))?;
        modes::protected_mode_sregs(&mut sregs);
        self.fd.set_sregs(&sregs).map_err(kvm_error("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&modes::protected_mode_regs(eip, ebx, eax))
            .map_err(kvm_error("KVM_SET_REGS"))
    }

    /// Gives the vCPU the state a PC firmware leaves for an operating
    /// system: boot MSRs, an initialised FPU, and (with the in-kernel
    /// irqchip) LINT0 as ExtINT and LINT1 as NMI.
    pub fn setup_platform(&mut self, in_kernel_irqchip: bool) -> Result<()> {
        platform::set_boot_msrs(&self.fd)?;
        platform::set_fpu(&self.fd)?;
        if in_kernel_irqchip {
            platform::set_lint(&self.fd)?;
        }
        Ok(())
    }

    /// Starts the vCPU in 64-bit long mode at `rip`, writing the GDT and
    /// identity page tables into guest memory; `rsi` is passed as given.
    pub fn setup_long_mode(&mut self, rip: u64, rsi: u64) -> Result<()> {
        modes::write_long_mode_tables(&self.memory)?;
        let mut sregs = self.fd.get_sregs().map_err(kvm_error("KVM_GET_SREGS"))?;
        modes::long_mode_sregs(&mut sregs);
        self.fd.set_sregs(&sregs).map_err(kvm_error("KVM_SET_SREGS"))?;
        self.fd.set_regs(&modes::long_mode_regs(rip, rsi)).map_err(kvm_error("KVM_SET_REGS"))
    }

    /// Runs the guest until its next exit.
    pub fn run(&mut self) -> std::result::Result<VcpuExit<'_>, kvm_ioctls::Error> {
        self.fd.run()
    }

    /// Clears a pending kick so the next [`Vcpu::run`] enters the guest.
    pub fn clear_kick(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
    }

    /// True when RFLAGS.IF is set.
    pub fn interrupts_enabled(&self) -> bool {
        const RFLAGS_IF: u64 = 1 << 9;
        self.fd.get_regs().is_ok_and(|regs| regs.rflags & RFLAGS_IF != 0)
    }

    /// The suberror and data words KVM gave with the last
    /// KVM_EXIT_INTERNAL_ERROR.
    pub fn internal_error(&mut self) -> (u32, Vec<u64>) {
        // SAFETY: reading the `internal` member of the kvm_run exit union is
        // valid after an exit with reason KVM_EXIT_INTERNAL_ERROR, which is the
        // only time this is called; every bit pattern of its fields is a valid
        // integer, so reading it otherwise would yield garbage, not UB.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let count = (internal.ndata as usize).min(internal.data.len());
        (internal.suberror, internal.data[..count].to_vec())
    }

    /// Reads where the vCPU stands: RIP, CS and the instruction bytes there.
    pub fn fault_context(&self) -> Result<FaultContext> {
        let regs = self.fd.get_regs().map_err(kvm_error("KVM_GET_REGS"))?;
        let sregs = self.fd.get_sregs().map_err(kvm_error("KVM_GET_SREGS"))?;
        let linear = sregs.cs.base.wrapping_add(regs.rip);
        Ok(FaultContext {
            rip: regs.rip,
            cs: sregs.cs.selector,
            cs_base: sregs.cs.base,
            bytes: self.read_linear(linear, MAX_INSTRUCTION_LEN),
        })
    }

    /// Reads up to `len` bytes at a guest linear address through the guest's
    /// own page tables (KVM_TRANSLATE); stops at the first byte that is not
    /// in RAM. `None` when not even the first byte is.
    fn read_linear(&self, linear: u64, len: usize) -> Option<Vec<u8>> {
        let mut bytes = Vec::with_capacity(len);
        let mut address = linear;
        while bytes.len() < len {
            let translation = self.fd.translate_gva(address).ok()?;
            if translation.valid == 0 {
                break;
            }
            let in_page = (PAGE_SIZE - (address % PAGE_SIZE)) as usize;
            let mut chunk = vec![0u8; in_page.min(len - bytes.len())];
            if self
                .memory
                .read_slice(&mut chunk, GuestAddress(translation.physical_address))
                .is_err()
            {
                // Partly outside RAM: take what is readable, byte by byte.
                for (offset, byte) in chunk.iter_mut().enumerate() {
                    let gpa = GuestAddress(translation.physical_address + offset as u64);
                    match self.memory.read_obj::<u8>(gpa) {
                        Ok(value) => *byte = value,
                        Err(_) => {
                            bytes.extend_from_slice(&chunk[..offset]);
                            return (!bytes.is_empty()).then_some(bytes);
                        }
                    }
                }
            }
            bytes.extend_from_slice(&chunk);
            address = address.wrapping_add(chunk.len() as u64);
        }
        (!bytes.is_empty()).then_some(bytes)
    }

    pub(crate) fn kvm_run_ptr(&mut self) -> *mut kvm_bindings::kvm_run {
        self.fd.get_kvm_run()
    }
}
