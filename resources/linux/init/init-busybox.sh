#!/bin/sh
# /init of initrd-busybox.cpio: mounts the pseudo file systems, prints the
# ready marker and gives an interactive shell on the console. When the shell
# exits, the machine restarts (reboot=t: triple fault -> KVM_EXIT_SHUTDOWN).
# Guest user code runs natively and its CPUID shows the host's AVX family,
# but the kernel (noxsave) saves only x87/SSE state: glibc's AVX string
# functions would crash busybox. Keep glibc to SSE, for PID 1 too (as
# init-rootfs.sh does).
if [ -z "$GLIBC_TUNABLES" ]; then
	export GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-FMA,-FMA4,-AVX_VNNI,-AVX_Fast_Unaligned_Load
	exec /bin/sh "$0" "$@"
fi
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/ TERM=linux
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo VMM-BUSYBOX-READY
# cttyhack opens the real console tty (ttyS0) so the shell gets job control
setsid cttyhack sh
reboot -f
