//! The CPUID a vCPU is shown: the host's supported set, adjusted per vCPU.

use kvm_bindings::CpuId;

/// KVM's paravirtual feature leaf.
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// KVM_FEATURE_PV_SEND_IPI: its hypercall does not complete on some nested
/// hosts, and a guest that sees it hangs bringing up secondary CPUs.
const KVM_FEATURE_PV_SEND_IPI: u32 = 11;
/// KVM_FEATURE_PV_SCHED_YIELD: same hypercall path as PV IPI.
const KVM_FEATURE_PV_SCHED_YIELD: u32 = 13;
/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// What the guest's CPUs look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTopology {
    /// Number of vCPUs (one package, one thread per core).
    pub count: u8,
    /// Whether to offer KVM's PV IPI and PV sched-yield features.
    pub pv_ipi: bool,
}

impl Default for CpuTopology {
    fn default() -> Self {
        CpuTopology { count: 1, pv_ipi: false }
    }
}

/// Bits needed to number `count` items.
fn width(count: u8) -> u32 {
    u32::from(count).next_power_of_two().trailing_zeros()
}

/// Adjusts the host's supported CPUID for vCPU `index` of `topology`: APIC
/// ids, one package with `count` single-thread cores, the hypervisor bit,
/// and (unless asked) without the PV IPI and PV sched-yield features.
pub(crate) fn adjust(cpuid: &mut CpuId, index: u8, topology: CpuTopology) {
    let count = topology.count.max(1);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors.
                entry.ebx =
                    (entry.ebx & 0xffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            // Deterministic cache parameters: EAX[31:26] cores per package - 1,
            // EAX[25:14] threads sharing the cache - 1 (one per core).
            4 => entry.eax = (entry.eax & 0x3fff) | ((u32::from(count) - 1) << 26),
            0xb | 0x1f => {
                entry.edx = u32::from(index);
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = (LEVEL_TYPE_SMT << 8) | entry.index;
                    }
                    1 => {
                        entry.eax = width(count);
                        entry.ebx = u32::from(count);
                        entry.ecx = (LEVEL_TYPE_CORE << 8) | entry.index;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            KVM_CPUID_FEATURES if !topology.pv_ipi => {
                entry.eax &= !((1 << KVM_FEATURE_PV_SEND_IPI) | (1 << KVM_FEATURE_PV_SCHED_YIELD));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn sample() -> CpuId {
        let entries = [
            kvm_cpuid_entry2 { function: 1, ebx: 0xff00_0800, edx: EDX_HTT, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xb, index: 0, edx: 7, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xb, index: 1, ..Default::default() },
            kvm_cpuid_entry2 { function: KVM_CPUID_FEATURES, eax: 0xffff, ..Default::default() },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn apic_id_topology_and_hypervisor_bit_are_set() {
        let mut cpuid = sample();
        adjust(&mut cpuid, 3, CpuTopology { count: 4, pv_ipi: false });
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx, 0x0304_0800);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].ebx, e[1].ecx, e[1].edx), (1, 0x100, 3));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx, e[2].edx), (2, 4, 0x201, 3));
    }

    #[test]
    fn pv_ipi_is_hidden_unless_asked() {
        let mut cpuid = sample();
        adjust(&mut cpuid, 0, CpuTopology::default());
        assert_eq!(cpuid.as_slice()[3].eax, 0xffff & !(1 << 11) & !(1 << 13));
        assert_eq!(cpuid.as_slice()[0].edx & EDX_HTT, 0);
        let mut cpuid = sample();
        adjust(&mut cpuid, 0, CpuTopology { count: 1, pv_ipi: true });
        assert_eq!(cpuid.as_slice()[3].eax, 0xffff);
    }

    #[test]
    fn widths() {
        assert_eq!((width(1), width(2), width(3), width(4), width(5)), (0, 1, 2, 2, 3));
    }
}
