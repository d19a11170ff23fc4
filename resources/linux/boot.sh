#!/usr/bin/env bash
# Boots the project's test Linux under the VMM from its root disk (virtio-blk,
# /dev/vda, busybox on ext4) to a shell on this terminal. Builds the kernel
# and rootfs.ext4 on first use (a few minutes, progress on stderr; cached
# afterwards) and the VMM in release mode.
#
# The disk is your own copy of the build's rootfs.ext4, kept between boots
# (what you write in the guest stays) until the recipe changes:
#   ${VMM_ROOT_DISK:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm-rootfs/<build>.ext4}
# Delete it (or set VMM_ROOT_DISK to another file) to start afresh.
#
# Extra arguments go to the VMM, e.g. --cpus 2, --rng, --log-level info, or
# a second disk: --disk path=FILE,readonly=on (/dev/vdb in the guest).
# Leave the console with Ctrl-A x, or type `exit` (or `reboot -f`) in the
# guest; `exit` syncs and remounts / read-only first, leaving the disk clean.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

guest=$(bash "$here/build.sh" | tail -n 1)
disk=${VMM_ROOT_DISK:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm-rootfs/${guest##*/}.ext4}
mkdir -p "$(dirname "$disk")"
disk=$(realpath -m "$disk")

# Whether a process (another VMM) has the file open.
in_use() {
	local fd
	for fd in /proc/[0-9]*/fd/*; do
		[[ $(readlink "$fd" 2>/dev/null) == "$1" ]] && return 0
	done
	return 1
}

if [[ ! -s $disk ]]; then
	cp "$guest/rootfs.ext4" "$disk.tmp"
	mv "$disk.tmp" "$disk"
	echo "boot.sh: new root disk $disk (a copy of $guest/rootfs.ext4)" >&2
elif ! in_use "$disk"; then
	# A session left with Ctrl-A x did not unmount the file system (it has
	# no journal): let e2fsck tidy it (status 1: it fixed something). A disk
	# in use is left alone; the VMM refuses it.
	rc=0
	e2fsck -p "$disk" >&2 || rc=$?
	if ((rc > 1)); then
		echo "boot.sh: e2fsck -p $disk failed ($rc); delete the file to start afresh" >&2
		exit 1
	fi
	echo "boot.sh: root disk $disk" >&2
else
	echo "boot.sh: root disk $disk is in use (by another VMM?)" >&2
fi

cargo build --release -p vmm --manifest-path "$root/Cargo.toml" >&2
exec "$root/target/x86_64-unknown-linux-gnu/release/vmm" \
	--kernel "$guest/vmlinux" \
	--disk "path=$disk" \
	--cmdline "$(cat "$here/cmdline.txt") root=/dev/vda rw" \
	--memory 256 \
	"$@"
