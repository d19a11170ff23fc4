#!/bin/sh
# /sbin/init of rootfs.ext4, the busybox root disk (root=/dev/vda rw): mounts
# the pseudo file systems and prints the ready marker. A host that put a
# /test.sh on the disk (debugfs -w; it need not be executable) gets it run
# by sh, its status printed and the machine restarted; otherwise an
# interactive shell runs on the console. Either way the root file system is
# synced and remounted read-only (so that it is left clean) before the
# restart (reboot=t: triple fault -> KVM_EXIT_SHUTDOWN, the VMM exits 0).

# Guest user code runs natively here and its CPUID shows the host's AVX,
# AVX2 and AVX-512, but the kernel (noxsave) saves only the x87/SSE state:
# glibc's AVX string functions then crash busybox (seen in every pipeline
# under QEMU and the VMM). Keep glibc to SSE, for this shell (PID 1) too.
if [ -z "$GLIBC_TUNABLES" ]; then
	export GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-FMA,-FMA4,-AVX_VNNI,-AVX_Fast_Unaligned_Load
	exec /bin/sh "$0" "$@"
fi
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TERM=linux
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
echo VMM-ROOTFS-READY
if [ -f /test.sh ]; then
	sh /test.sh
	echo "VMM-TEST-STATUS $?"
else
	# cttyhack opens the real console tty (ttyS0) so the shell gets job control
	setsid cttyhack sh
fi
sync
mount -o remount,ro / || echo "VMM-ROOTFS: cannot remount / read-only"
reboot -f
