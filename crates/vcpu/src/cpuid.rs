//! The CPUID a vCPU is shown: the host's supported set, adjusted per vCPU.

use kvm_bindings::CpuId;

/// KVM's paravirtual feature leaf.
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// KVM_FEATURE_PV_SEND_IPI: its hypercall does not complete on some nested
/// hosts, and a guest that sees it hangs bringing up secondary CPUs.
const KVM_FEATURE_PV_SEND_IPI: u32 = 11;
/// KVM_FEATURE_PV_SCHED_YIELD: same hypercall path as PV IPI.
const KVM_FEATURE_PV_SCHED_YIELD: u32 = 13;

/// Adjusts the host's supported CPUID for vCPU `index`: its APIC id, and
/// without the PV IPI and PV sched-yield features.
pub(crate) fn adjust(cpuid: &mut CpuId, index: u8) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            // EBX[31:24]: initial APIC id.
            1 => entry.ebx = (entry.ebx & 0x00ff_ffff) | (u32::from(index) << 24),
            // EDX: x2APIC id in the topology leaves.
            0xb | 0x1f => entry.edx = u32::from(index),
            KVM_CPUID_FEATURES => {
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

    #[test]
    fn apic_id_is_set_and_pv_ipi_hidden() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xff00_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                edx: 7,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: KVM_CPUID_FEATURES,
                eax: 0xffff,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        adjust(&mut cpuid, 3);
        let adjusted = cpuid.as_slice();
        assert_eq!(adjusted[0].ebx, 0x0300_0800);
        assert_eq!(adjusted[1].edx, 3);
        assert_eq!(adjusted[2].eax, 0xffff & !(1 << 11) & !(1 << 13));
    }
}
