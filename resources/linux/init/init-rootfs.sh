#!/bin/sh
# /sbin/init of rootfs.ext4, the busybox root disk (root=/dev/vda): mounts the
# pseudo file systems and prints the ready marker. A host that put an
# executable /test.sh on the disk (debugfs -w) gets it run, its status
# printed and the machine restarted; otherwise an interactive shell runs on
# the console. Either way the file system is synced before the restart
# (reboot=t: triple fault -> KVM_EXIT_SHUTDOWN, the VMM exits 0).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TERM=linux
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
echo VMM-ROOTFS-READY
if [ -x /test.sh ]; then
	/test.sh
	echo "VMM-TEST-STATUS $?"
else
	# cttyhack opens the real console tty (ttyS0) so the shell gets job control
	setsid cttyhack sh
fi
sync
reboot -f
