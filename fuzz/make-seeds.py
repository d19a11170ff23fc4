#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/TARGET/seed-*): real test guests and
synthetic images for `loader` (behind its 16-byte option header, see
fuzz_targets/loader.rs), and a few device sessions for `dispatch` and
`serial_i8042`. Every seed stays under 64 KiB.

    fuzz/make-seeds.py          # builds the test guests into a temporary directory
"""

import os
import struct
import subprocess
import sys
import tempfile

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
MAX_SEED = 64 * 1024

PROTOCOLS = {"auto": 0, "bare": 1, "pvh": 2, "linux64": 3, "multiboot": 4}
INITRDS = {None: 0, "small": 4, "large": 5, "empty": 6, "missing": 7}


def loader_input(image, ram_mib=8, cpus=1, boot="auto", initrd=None, cmdline=None,
                 load_addr=None, entry=None, unpack=False):
    """The loader target's input: option header, command line, image."""
    assert 2 <= ram_mib <= 32 and 1 <= cpus <= 8
    flags = PROTOCOLS[boot] | INITRDS[initrd] << 3
    cmdline = (cmdline or "").encode()
    assert len(cmdline) < 4096
    if cmdline:
        flags |= 0x40
    if unpack:
        flags |= 0x80
    more = (len(cmdline) >> 8) << 2
    if load_addr is not None:
        more |= 1
    if entry is not None:
        more |= 2
    sizing = (cpus - 1) << 5 | (ram_mib - 2)
    header = struct.pack("<BBBBIQ", sizing, flags, more, len(cmdline) & 0xFF, load_addr or 0,
                         entry or 0)
    return header + cmdline + image


def elf64(segments, entry, notes=b""):
    """A minimal ELF64 x86-64 executable: PT_LOAD (paddr, code, bss)
    segments, and a PT_NOTE segment holding `notes` if given."""
    phnum = len(segments) + (1 if notes else 0)
    data_at = 64 + 56 * phnum
    phdrs, body = b"", b""
    for paddr, code, bss in segments:
        offset = data_at + len(body)
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, offset, paddr, paddr, len(code),
                             len(code) + bss, 0x1000)
        body += code
    if notes:
        offset = data_at + len(body)
        phdrs += struct.pack("<IIQQQQQQ", 4, 4, offset, 0, 0, len(notes), len(notes), 4)
        body += notes
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, entry, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    return ehdr + phdrs + body


def note(name, kind, desc):
    pad = lambda b: b + bytes(-len(b) % 4)
    name = name + b"\0"
    return struct.pack("<III", len(name), len(desc), kind) + pad(name) + pad(desc)


def multiboot_header(flags, kludge=None):
    words = [0x1BADB002, flags, (-(0x1BADB002 + flags)) & 0xFFFFFFFF] + list(kludge or [])
    return struct.pack("<%dI" % len(words), *words)


def elf32_multiboot(code, paddr=0x100000, bss=0x100):
    """An ELF32 i386 multiboot kernel: one PT_LOAD holding the whole file."""
    header = multiboot_header(0x3)
    body_at = 52 + 32
    image_len = body_at + len(header) + len(code)
    entry = paddr + body_at + len(header)
    ehdr = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, entry, 52, 0, 0, 52, 32, 1, 40, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, 0, paddr, paddr, image_len, image_len + bss, 7, 0x1000)
    return ehdr + phdr + header + code


def lz4_literals(data):
    """An LZ4 block holding `data` as literals only (valid, if uncompressed)."""
    n = len(data)
    if n < 15:
        return bytes([n << 4]) + data
    rest, extra = n - 15, b""
    while rest >= 255:
        extra += b"\xff"
        rest -= 255
    return b"\xf0" + extra + bytes([rest]) + data


def lz4_legacy_frame(data):
    block = lz4_literals(data)
    return bytes([2, 0x21, 0x4C, 0x18]) + struct.pack("<I", len(block)) + block + \
        struct.pack("<I", len(data))


def tiny_bzimage(version=0x020F, kernel=0x400, payload=None):
    """The synthetic bzImage of crates/loader/src/linux.rs's tests; with
    `payload`, its kernel holds it where payload_offset/length say."""
    if payload is not None:
        kernel = max(kernel, 0x40 + len(payload))
    image = bytearray(5 * 512 + kernel)
    image[0x1F1] = 4
    image[0x1FE:0x200] = struct.pack("<H", 0xAA55)
    image[0x202:0x206] = b"HdrS"
    image[0x206:0x208] = struct.pack("<H", version)
    image[0x211] = 0x01
    image[0x214:0x218] = struct.pack("<I", 0x100000)
    image[0x22C:0x230] = struct.pack("<I", 0x7FFFFFFF)
    image[0x230:0x234] = struct.pack("<I", 0x200000)
    image[0x234] = 1
    image[0x236:0x238] = struct.pack("<H", 0x01)
    image[0x238:0x23C] = struct.pack("<I", 2047)
    image[0x258:0x260] = struct.pack("<Q", 0x1000000)
    image[0x260:0x264] = struct.pack("<I", 0x100000)
    for i in range(5 * 512, len(image)):
        image[i] = 0x90
    if payload is not None:
        image[0x248:0x24C] = struct.pack("<I", 0x40)
        image[0x24C:0x250] = struct.pack("<I", len(payload))
        image[5 * 512 + 0x40:5 * 512 + 0x40 + len(payload)] = payload
    return bytes(image)


def write(target, name, data):
    assert len(data) < MAX_SEED, f"{name}: {len(data)} bytes"
    directory = os.path.join(FUZZ, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "seed-" + name), "wb") as f:
        f.write(data)


def loader_seeds(guests):
    hello_real = open(os.path.join(guests, "hello_real.bin"), "rb").read()
    write("loader", "hello_real", loader_input(hello_real, ram_mib=2))
    write("loader", "hello_real-7c00",
          loader_input(hello_real, boot="bare", load_addr=0x7C00, entry=0x7C00))
    for name in ["hello_long", "triple_fault", "unclaimed", "exec_mmio"]:
        elf = open(os.path.join(guests, name + ".elf"), "rb").read()
        write("loader", name, loader_input(elf))
    hello_long = open(os.path.join(guests, "hello_long.elf"), "rb").read()
    write("loader", "hello_long-linux64-initrd",
          loader_input(hello_long, ram_mib=16, boot="linux64", initrd="small",
                       cmdline="console=ttyS0 quiet"))

    code = bytes([0xF4, 0xEB, 0xFD])
    pvh_notes = note(b"Linux", 6, b"6.1\0") + note(b"Xen", 18, struct.pack("<I", 0x100000))
    pvh = elf64([(0x100000, code, 0x100), (0x200000, b"data", 0x1000)], 0x100000, pvh_notes)
    write("loader", "pvh", loader_input(pvh, ram_mib=8))
    write("loader", "pvh-initrd-cmdline",
          loader_input(pvh, ram_mib=16, cpus=2, initrd="small", cmdline="root=/dev/ram0 -- init"))
    vmlinux = elf64([(0x100000, code, 0x2000)], 0x100000, note(b"Linux", 6, b"6.1\0"))
    write("loader", "vmlinux-linux64", loader_input(vmlinux, ram_mib=8, initrd="large"))
    write("loader", "bare-elf-entry", loader_input(elf64([(0x100000, code, 0)], 0x100000),
                                                   boot="bare", entry=0x100001))

    bz = tiny_bzimage()
    write("loader", "bzimage", loader_input(bz, ram_mib=32))
    write("loader", "bzimage-initrd-cmdline",
          loader_input(bz, ram_mib=32, cpus=4, initrd="small", cmdline="console=ttyS0 panic=1"))
    write("loader", "bzimage-short", loader_input(tiny_bzimage(kernel=0x100), ram_mib=32))
    write("loader", "bzimage-old", loader_input(tiny_bzimage(0x0206), ram_mib=32))
    lz4 = tiny_bzimage(payload=lz4_legacy_frame(vmlinux))
    write("loader", "bzimage-lz4-unpack", loader_input(lz4, ram_mib=32, unpack=True))
    write("loader", "bzimage-lz4-unpack-initrd",
          loader_input(lz4, ram_mib=8, unpack=True, initrd="small", cmdline="quiet"))

    # Multiboot: a flat binary through the a.out kludge, an ELF32, an ELF64
    # through the kludge (no Linux note).
    kludge = multiboot_header(0x10003, [0x100000, 0x100000, 0, 0x101000, 0x100020])
    flat = kludge + bytes(0x20 - len(kludge)) + code
    write("loader", "multiboot-flat", loader_input(flat))
    write("loader", "multiboot-flat-module",
          loader_input(flat, initrd="small", cmdline="console=ttyS0 mb"))
    write("loader", "multiboot-elf32",
          loader_input(elf32_multiboot(code), boot="multiboot", initrd="empty"))
    elf = elf64([(0x100000, code, 0)], 0x100000)
    at = (len(elf) + 3) & ~3
    elf += bytes(at - len(elf)) + multiboot_header(
        0x10000, [0x100000 + at, 0x100000, 0, 0, 0x100000 + at - len(code)])
    write("loader", "multiboot-elf64-kludge", loader_input(elf, ram_mib=4, cpus=2))


def dispatch_seeds():
    # Each exit: vCPU, op (low nibble kind, high nibble length), then fields
    # (see fuzz_targets/dispatch.rs). Port selector 0 = near COM1, 0x10 = +2.
    def out(port_pick, data):
        return bytes([0, len(data) << 4 | 3, port_pick]) + data

    def inn(port_pick, length, fill=0):
        return bytes([0, length << 4 | 0, port_pick, fill])

    hello = b"".join(out(0x10, bytes([c])) for c in b"Hi\n")  # 0x3f8 + 2 - 2 = 0x3f8
    lsr = inn(0x10 + (5 << 3), 1)
    i8042 = out(0x14, b"\xaa") + inn(0x13, 1) + out(0x14, b"\xd1") + out(0x13, b"\x02")
    debug = out(0x12, b"\x05") + out(0x12, b"\x34\x12")
    # fw_cfg: select the signature with a 16-bit write, read 4 bytes.
    fw_cfg = out(0x15, b"\x00\x00") + b"".join(inn(0x1D, 1) for _ in range(4))
    write("dispatch", "session", hello + lsr + i8042 + debug + fw_cfg + bytes([0, 8, 0, 9]))


def serial_i8042_seeds():
    # Serial write (op 0) offset, data; read (op 4); enqueue (op 7); i8042 (9, 12); pump (15).
    session = bytes([0x10, 3, 0x80, 0x20, 0, 0x0C, 0x00, 0x10, 3, 0x03])  # DLAB, divisor, 8N1
    session += bytes([0x10, 0, ord("A"), 0x10, 1, 0x03])  # THR, IER
    session += bytes([7, 5]) + b"input" + bytes([0x14, 5, 0, 0x14, 0, 0, 0x14, 2, 0])
    session += bytes([0x19, 1, 0xAA, 0x1C, 0, 0, 0x19, 1, 0xFE])
    session += bytes([0x0F, 1, 3]) + b"\x02\x03\x00" + bytes([1, 7]) + struct.pack("<H", 8)
    session += b"ab\x01\x01c\x01x"
    write("serial_i8042", "session", session)


def main():
    with tempfile.TemporaryDirectory() as guests:
        subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "resources", "guests"),
                        f"OUT={guests}"], check=True)
        loader_seeds(guests)
    dispatch_seeds()
    serial_i8042_seeds()
    return 0


if __name__ == "__main__":
    sys.exit(main())
