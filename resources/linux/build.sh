#!/usr/bin/env bash
# Builds the VMM's Linux test guest: a minimal 6.1 kernel (vmlinux with a PVH
# entry note, LZ4 bzImage) plus two initrds, from Debian's linux-source-6.1
# with the patches in patches/ and the options in config.fragment.
#
# Results are cached in
#   ${VMM_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm-guests}/linux-<hash>/
# keyed by a hash of this recipe. Progress goes to stderr; the last (only)
# line on stdout is the absolute path of that directory.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
outputs=(vmlinux bzImage initrd-tiny.cpio initrd-busybox.cpio rootfs.ext4 vmlinux-acpi)
packages=(linux-source-6.1 busybox-static gcc make libc6-dev flex bison bc
	  libelf-dev libssl-dev lz4 xz-utils cpio patch perl python3 e2fsprogs)

log() { printf '[linux-guest] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------
# 1. Debian packages (installed only when missing)
# ---------------------------------------------------------------------------
installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}
missing=()
for p in "${packages[@]}"; do
	installed "$p" || missing+=("$p")
done
if ((${#missing[@]})); then
	log "installing missing packages: ${missing[*]}"
	sudo=()
	if [[ $(id -u) != 0 ]]; then
		command -v sudo >/dev/null || die "not root and no sudo: install ${missing[*]}"
		sudo=(sudo -n)
	fi
	export DEBIAN_FRONTEND=noninteractive
	"${sudo[@]}" apt-get update </dev/null >&2
	"${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" </dev/null >&2
fi
src_tar=/usr/src/linux-source-6.1.tar.xz
[[ -f $src_tar ]] || die "$src_tar not found (package linux-source-6.1)"
linux_ver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
busybox_ver=$(dpkg-query -W -f='${Version}' busybox-static)

# ---------------------------------------------------------------------------
# 2. Cache key: hash of the recipe and of the package versions it consumes
# ---------------------------------------------------------------------------
shopt -s nullglob
patches=("$here"/patches/*.patch)
shopt -u nullglob
((${#patches[@]})) || die "no patches in $here/patches"
recipe=(build.sh config.fragment config-acpi.fragment init/init-tiny.c init/init-busybox.sh init/init-rootfs.sh
	init/vsock-helper.c)
for p in "${patches[@]}"; do recipe+=("patches/${p##*/}"); done
hash=$(
	cd "$here"
	for f in "${recipe[@]}"; do
		printf '%s %s\n' "$(sha256sum <"$f" | cut -d' ' -f1)" "$f"
	done
	printf 'linux-source-6.1 %s\nbusybox-static %s\n' "$linux_ver" "$busybox_ver"
)
hash=$(printf '%s\n' "$hash" | sha256sum | cut -c1-16)

cache_root=${VMM_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm-guests}
mkdir -p "$cache_root"
cache_root=$(cd "$cache_root" && pwd)
final=$cache_root/linux-$hash

complete() {
	[[ -f $1/.complete ]] || return 1
	local f
	for f in "${outputs[@]}"; do [[ -s $1/$f ]] || return 1; done
}
if complete "$final"; then
	echo "$final"
	exit 0
fi

# One build per key at a time; whoever waited may find it done.
exec 9>"$cache_root/.linux-$hash.lock"
flock 9
if complete "$final"; then
	echo "$final"
	exit 0
fi

# ---------------------------------------------------------------------------
# 3. Build in a temporary directory inside the cache root
# ---------------------------------------------------------------------------
work=$(mktemp -d "$cache_root/.build-linux-$hash.XXXXXX")
buildlog=$work/build.log
cleanup() {
	local rc=$?
	if ((rc != 0)); then
		if [[ -s $buildlog ]]; then
			log "last lines of $buildlog:"
			tail -n 40 "$buildlog" >&2 || true
			cp "$buildlog" "$cache_root/linux-$hash.failed.log" 2>/dev/null &&
				log "full log: $cache_root/linux-$hash.failed.log"
		fi
		log "build FAILED (exit $rc)"
	fi
	rm -rf "$work"
}
trap cleanup EXIT
: >"$buildlog"
run() { "$@" >>"$buildlog" 2>&1; }	# noisy tools write to the build log

out=$work/out
mkdir -p "$out"
start=$SECONDS
log "recipe hash $hash, linux-source-6.1 $linux_ver; building in $work"
log "unpacking $src_tar"
tar -xf "$src_tar" -C "$work"
src=$work/linux-source-6.1
[[ -d $src ]] || die "unexpected layout of $src_tar"

for p in "${patches[@]}"; do
	log "applying ${p##*/}"
	patch -d "$src" -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch <"$p" >&2 ||
		die "patch ${p##*/} does not apply"
done

kmake() { run make -C "$src" ARCH=x86_64 "$@"; }

log "configuring: tinyconfig + config.fragment + olddefconfig"
kmake tinyconfig
run "$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$here/config.fragment"
kmake olddefconfig

# Every option a fragment sets must have survived olddefconfig.
check_fragment() {
	local fragment=$1 bad=0 line sym
	while IFS= read -r line; do
		case $line in
		CONFIG_*=*)
			grep -qxF -- "$line" "$src/.config" || {
				log "config: wanted '$line', got '$(grep -E "^(# )?${line%%=*}[= ]" "$src/.config" || echo unset)'"
				bad=1
			}
			;;
		"# CONFIG_"*" is not set")
			sym=${line#\# }
			sym=${sym%% *}
			if grep -qE "^$sym=" "$src/.config"; then
				log "config: wanted '$line', got '$(grep -E "^$sym=" "$src/.config")'"
				bad=1
			fi
			;;
		esac
	done <"$here/$fragment"
	((bad == 0)) || die "$fragment options did not survive olddefconfig (see above)"
}
check_fragment config.fragment

jobs=$(nproc)
log "building vmlinux and bzImage with make -j$jobs (takes a few minutes)"
kmake -j"$jobs" vmlinux bzImage
log "kernel built after $((SECONDS - start)) s"

# The PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY = 18) lets QEMU and the VMM
# boot the ELF vmlinux directly.
readelf -n "$src/vmlinux" | grep -Eq '^[[:space:]]*Xen[[:space:]].*(0x00000012|PHYS32_ENTRY)' ||
	die "vmlinux has no XEN_ELFNOTE_PHYS32_ENTRY note (CONFIG_PVH?)"
cp "$src/vmlinux" "$out/vmlinux"
cp "$src/arch/x86/boot/bzImage" "$out/bzImage"
cp "$src/.config" "$out/config"

# ---------------------------------------------------------------------------
# 4. Initrds (cpio archives written by the kernel's own gen_init_cpio)
# ---------------------------------------------------------------------------
log "building initrds"
kmake headers
gcc -O2 -o "$work/gen_init_cpio" "$src/usr/gen_init_cpio.c"

gcc -nostdlib -static -Os -fno-pie -no-pie -fno-stack-protector \
	-fno-asynchronous-unwind-tables -fno-ident -s \
	-include "$src/tools/include/nolibc/nolibc.h" -I "$src/usr/include" \
	-o "$work/init-tiny" "$here/init/init-tiny.c" -lgcc
cat >"$work/tiny.list" <<EOF
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0755 0 0
dir /sys 0755 0 0
file /init $work/init-tiny 0755 0 0
EOF
"$work/gen_init_cpio" "$work/tiny.list" >"$out/initrd-tiny.cpio"

busybox=/bin/busybox
"$busybox" --list-full >/dev/null || die "$busybox does not work"
{
	for d in /dev /proc /sys /tmp /root /etc /bin /sbin /usr /usr/bin /usr/sbin; do
		echo "dir $d 0755 0 0"
	done
	echo "nod /dev/console 0600 0 0 c 5 1"
	echo "file /bin/busybox $busybox 0755 0 0"
	echo "file /init $here/init/init-busybox.sh 0755 0 0"
	"$busybox" --list-full | sort -u | while read -r applet; do
		[[ $applet == bin/busybox ]] && continue
		echo "slink /$applet /bin/busybox 0777 0 0"
	done
} >"$work/busybox.list"
"$work/gen_init_cpio" "$work/busybox.list" >"$out/initrd-busybox.cpio"

# ---------------------------------------------------------------------------
# 5. Root disk: the same busybox on ext4, made from a directory (no mount)
# ---------------------------------------------------------------------------
log "building rootfs.ext4"
root=$work/rootfs
for d in dev proc sys tmp root etc bin sbin usr/bin usr/sbin; do
	mkdir -p "$root/$d"
done
cp "$busybox" "$root/bin/busybox"
"$busybox" --list-full | sort -u | while read -r applet; do
	[[ $applet == bin/busybox || $applet == sbin/init ]] && continue
	ln -sf /bin/busybox "$root/$applet"
done
install -m 0755 "$here/init/init-rootfs.sh" "$root/sbin/init"
# busybox has no AF_VSOCK: the project's own small tool (built against the
# kernel tree's headers, statically)
gcc -static -O2 -Wall -Wextra -Werror -I "$src/usr/include" -o "$root/bin/vsock-helper" \
	"$here/init/vsock-helper.c" >>"$buildlog" 2>&1 || die "vsock-helper.c does not build"
# 64 MiB, 4 KiB blocks, no journal (nothing to replay after a reboot -f
# that synced first), root-owned files, fixed UUID and hash seed so that the
# image depends only on the recipe
mkfs.ext4 -q -F -b 4096 -O ^has_journal -E root_owner=0:0,hash_seed=5e1c7a4e-0000-4000-8000-000000000001 \
	-U 5e1c7a4e-0000-4000-8000-000000000000 -L vmm-root -d "$root" "$out/rootfs.ext4" 64M >>"$buildlog" 2>&1 ||
	die "mkfs.ext4 -d failed"
e2fsck -fn "$out/rootfs.ext4" >>"$buildlog" 2>&1 || die "e2fsck -fn finds rootfs.ext4 unclean"

# ---------------------------------------------------------------------------
# 6. The ACPI variant: the same kernel with config-acpi.fragment on top
# ---------------------------------------------------------------------------
log "configuring the ACPI variant: + config-acpi.fragment"
run "$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$here/config-acpi.fragment"
kmake olddefconfig
check_fragment config-acpi.fragment
log "building vmlinux-acpi with make -j$jobs"
kmake -j"$jobs" vmlinux
cp "$src/vmlinux" "$out/vmlinux-acpi"
cp "$src/.config" "$out/config-acpi"

cp "$buildlog" "$out/build.log"
( cd "$out" && sha256sum "${outputs[@]}" >SHA256SUMS )
log "done in $((SECONDS - start)) s: $(cd "$out" && ls -l "${outputs[@]}" | awk '{printf "%s=%s ", $NF, $5}')"

# ---------------------------------------------------------------------------
# 7. Publish: stamp last, then one rename
# ---------------------------------------------------------------------------
date -u +%Y-%m-%dT%H:%M:%SZ >"$out/.complete"
rm -rf "$final"
mv "$out" "$final"
echo "$final"
