#!/usr/bin/env bash
# Boots the project's test Linux under the VMM, to a busybox shell on this
# terminal. Builds the kernel and initrds on first use (a few minutes,
# progress on stderr; cached afterwards) and the VMM in release mode.
# Extra arguments go to the VMM, e.g. --cpus 2 or --log-level info.
# Leave the console with Ctrl-A x, or type `reboot -f` (or `exit`) in the guest.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

guest=$(bash "$here/build.sh" | tail -n 1)
cargo build --release -p vmm --manifest-path "$root/Cargo.toml" >&2
exec "$root/target/release/vmm" \
	--kernel "$guest/vmlinux" \
	--initrd "$guest/initrd-busybox.cpio" \
	--cmdline "$(cat "$here/cmdline.txt")" \
	--memory 256 \
	"$@"
