#!/bin/sh
# /init of initrd-busybox.cpio: mounts the pseudo file systems, prints the
# ready marker and gives an interactive shell on the console. When the shell
# exits, the machine restarts (reboot=t: triple fault -> KVM_EXIT_SHUTDOWN).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/ TERM=linux
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo VMM-BUSYBOX-READY
# cttyhack opens the real console tty (ttyS0) so the shell gets job control
setsid cttyhack sh
reboot -f
