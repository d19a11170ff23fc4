#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/TARGET/seed-*): real test guests and
synthetic images for `loader` (behind its 16-byte option header, see
fuzz_targets/loader.rs), and a few device sessions for `dispatch` and
`serial_i8042`. Every seed stays under 64 KiB.

    fuzz/make-seeds.py          # builds the test guests into a temporary directory
    fuzz/make-seeds.py virtio   # only these targets' seeds (no guests built unless loader)
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
    # ConsoleInput: escape on and feeding while bytes wait (flags 3), the
    # feed/deliver schedule, 3 chunk sizes (one empty), 2 FIFO rooms (one
    # none), 8 bytes of input with Ctrl-A Ctrl-A and Ctrl-A x.
    session += bytes([0x0F, 3, 0x5A, 3]) + b"\x02\x03\x00" + bytes([1, 7, 0])
    session += struct.pack("<H", 8) + b"ab\x01\x01c\x01x"
    write("serial_i8042", "session", session)


class Virtio:
    """A `virtio` target input (see fuzz_targets/virtio.rs): a header byte,
    then operations, each a byte (low nibble: kind, high nibble: its
    parameter) and its fields."""

    BLOCK, BLOCK_RO, RNG, NET = 0, 1, 2, 3
    VSOCK = 2 | 0x40  # device 2 with bit 6 set
    # virtio-vsock operations (op 7's `sel` byte, bits 2-4) and ports.
    REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_UPDATE, CREDIT_REQUEST = range(7)
    GUEST_PORTS = [1000, 1001, 1002, 52]
    HOST_PORTS = [1024, 1025, 5000, 1026, 1 << 30, (1 << 30) + 1, (1 << 30) + 2, 2]
    PAYLOADS = [0, 1, 7, 64, 500, 4096, 16384, 32768]
    BUF_ALLOCS = [256 * 1024, 0, 1, 100, 4096, 65536, 0xFFFFFFFF]
    RX_DATA = [1, 16, 64, 256, 1024, 4096, 0, 16384]
    IN, OUT, FLUSH, GET_ID = 0x00, 0x40, 0x80, 0xA0  # the kind bytes of op 7

    def __init__(self, device, eventfds=False, contiguous=False, rng_mode=0):
        self.data = bytes([device | eventfds << 2 | contiguous << 3 | rng_mode << 4])

    def op(self, kind, param, fields=b""):
        self.data += bytes([param << 4 | kind]) + fields
        return self

    @staticmethod
    def addr(offset, region=0):
        """pick_addr: an offset in RAM region 0 or 1."""
        return bytes([region << 6]) + struct.pack("<H", offset)

    @staticmethod
    def length(n):
        """pick_len: n bytes (n < 64, a multiple of 512 below 32 KiB, or a
        multiple of 32 KiB)."""
        if n < 0x40:
            return bytes([n])
        if n % 512 == 0 and n // 512 < 0x40:
            return bytes([0x40 | n // 512])
        assert n % 0x8000 == 0 and 1 <= n // 0x8000 <= 63
        return bytes([0xBF + n // 0x8000])

    @staticmethod
    def size(n):
        """pick_size: a power of two up to 512."""
        return bytes([n.bit_length() - 1])

    def setup(self, size, ring_offset=0x1000, event_idx=True):
        """Negotiates every offered feature (EVENT_IDX optional), sets up
        queue 0 with its rings from `ring_offset` in region 0, DRIVER_OK."""
        return self.op(15, 0 if event_idx else 1, self.size(size) + self.addr(ring_offset))

    def block(self, kind, sector, segments, header=0x2000, status=0x3000, flip=False,
              indirect=None, raw_kind=None):
        """A block request: header, data segments (address, length), status;
        with `raw_kind`, a request type of any value (kind byte 0xc0)."""
        assert len(segments) <= 3
        fields = bytes([kind])
        if raw_kind is not None:
            assert kind == 0xC0
            fields += struct.pack("<I", raw_kind)
        fields += bytes([sector]) + self.addr(header)
        for address, length in segments:
            fields += address + self.length(length)
        fields += self.addr(status)
        param = len(segments) | flip << 2
        if indirect is not None:
            fields += self.addr(indirect)
            param |= 8
        return self.op(7, param, fields)

    def chain(self, buffers, writable_mask, indirect=None):
        assert 1 <= len(buffers) <= 8
        fields = bytes([writable_mask])
        for address, length in buffers:
            fields += address + self.length(length)
        param = len(buffers) - 1
        if indirect is not None:
            fields += self.addr(indirect)
            param |= 8
        return self.op(6, param, fields)

    def notify_register(self, queue=0):
        return self.op(11, queue << 1)

    def select(self, queue):
        """QueueSel: the queue the driver operations work on."""
        return self.write(0x030, queue)

    def frame(self, kind, n=0, flags=0, gso=0, count=1):
        """virtio-net: the network sends `count` (1, 2, 3, 4, 8, 16, 64 or
        65) frames (op 12, param 8 + count's index): kind
        "short" is n bytes, "small" the header and 64 * n bytes, "mtu" a
        full 1514-byte Ethernet frame, "max" MAX_FRAME_LEN (n > 0: that
        much shorter; "max", n=0 is one byte too long... see send_frame)."""
        b = {"short": 0, "small": 1, "mtu": 2, "max": 3}[kind] << 6 | n
        return self.op(12, 8 | [1, 2, 3, 4, 8, 16, 64, 65].index(count), bytes([b, flags, gso]))

    def host_event(self, index):
        return self.op(12, 1 | index << 1)

    def poke(self, offset, data, region=0):
        return self.op(9, 0, self.addr(offset, region) + bytes([len(data)]) + data)

    def queue_notify(self):
        return self.op(10, 0)

    def serve(self):
        return self.op(12, 0)

    def read(self, offset, width=4):
        """An MMIO read (op 1) of a register (offset < 0x300, 4-aligned)."""
        return self.op(1, {4: 0, 1: 2, 2: 3, 8: 4}[width], bytes([offset // 4, 0xEE]))

    def write(self, offset, value, width=4):
        return self.op(0, {4: 0, 1: 2, 2: 3, 8: 4}[width],
                       bytes([offset // 4]) + value.to_bytes(width, "little"))

    def reset(self):
        return self.op(13, 0)

    # ---- virtio-vsock (fuzz_targets/virtio.rs `vsock_packet`, `vsock_buffers`, `vsock_host`) ----

    def vsock_rx(self, count, data=4096, at=None, split=False, event=False, notify=True):
        """`count` (a power of two up to 128) receive buffers of a header and
        `data` bytes (or event-queue buffers), one after another from `at`."""
        b = self.RX_DATA.index(data) | split << 3 | event << 4 | notify << 5
        return self.op(7, 8 | count.bit_length() - 1, bytes([b]) + (at or self.addr(0x4000)))

    def vsock_tx(self, op, ports=None, payload=0, flags=0, buf_alloc=256 * 1024, fwd=0,
                 header=None, data=None, notify=True, indirect=None, cids=None, raw_type=None,
                 raw_len=None, raw_op=None):
        """A packet from the guest: `ports` (guest, host) from the port
        tables, or None for the ports of the last packet received; `fwd` 0
        says everything received was consumed; `data` puts the payload in a
        second descriptor."""
        sel = (7 if raw_op is not None else op) << 2 | (3 if cids else 0)
        fields = b""
        if cids:
            fields += struct.pack("<QQ", *cids)
        if raw_op is not None:
            fields += struct.pack("<H", raw_op)
        if ports is not None:
            sel |= 1 << 5
            fields += bytes([self.GUEST_PORTS.index(ports[0]) | self.HOST_PORTS.index(ports[1]) << 2])
        if raw_type is not None:
            sel |= 0x80
            fields += struct.pack("<H", raw_type)
        fields = bytes([sel]) + fields
        fields += bytes([self.PAYLOADS.index(payload) | (8 if raw_len is not None else 0)])
        if raw_len is not None:
            fields += struct.pack("<I", raw_len)
        fields += bytes([flags])
        fields += bytes([self.BUF_ALLOCS.index(buf_alloc) | fwd << 3])
        fields += header or self.addr(0x6000)
        param = notify << 1
        if data is not None:
            fields += data
            param |= 1
        if indirect is not None:
            fields += self.addr(indirect)
            param |= 4
        return self.op(7, param, fields)

    def host_connect(self):
        """A host program connects to the device's socket."""
        return self.op(12, 8)

    def host_hello(self, stream, port_index=0):
        """`CONNECT <GUEST_PORTS[port_index]>\n`."""
        return self.op(12, 9, bytes([stream, port_index]))

    def host_line(self, stream, line):
        """Raw bytes as the CONNECT line (at most 63)."""
        return self.op(12, 9, bytes([stream, 0x80 | len(line)]) + line)

    def host_overlong(self, stream, zeros):
        return self.op(12, 9, bytes([stream, 0xC0 | zeros]))

    def host_write(self, stream, index):
        """[1, 10, 100, 1000, 4096, 16384, 65536][index] bytes of the stream's data."""
        return self.op(12, 10, bytes([stream, index]))

    def host_read(self, stream, index):
        """Up to [1, 16, 100, 4096, 65536, 200000, 14, 3][index] bytes."""
        return self.op(12, 11, bytes([stream, index]))

    def host_shutdown(self, stream, how):
        """0: write, 1: read, 2: both."""
        return self.op(12, 12, bytes([stream, how]))

    def host_close(self, stream):
        return self.op(12, 13, bytes([stream, 0]))

    def pump(self):
        """The event loop serves the device four times over."""
        return self.op(12, 15)


def virtio_seeds():
    v = Virtio
    config = lambda s: s.read(0x100, 8).read(0x10C).read(0x114).read(0x118, 2)
    ids = lambda s: s.read(0x000).read(0x004).read(0x008).read(0x034).read(0x044).read(0x070)

    s = ids(v(v.BLOCK)).setup(16)
    s = config(s)
    s.block(v.IN, 2, [(v.addr(0x4000), 1024)]).notify_register()
    s.block(v.OUT, 5, [(v.addr(0x0000, 1), 512)]).notify_register()
    s.block(v.FLUSH, 0, []).block(v.GET_ID, 0, [(v.addr(0x5000), 20)]).notify_register()
    s.block(v.IN, 127, [(v.addr(0x4000), 512), (v.addr(0x6000), 512)]).queue_notify()
    s.read(0x060).op(14, 0)
    write("virtio", "block-read-write-flush-id", s.data)

    # The whole disk in one request, 2 x 32 KiB over region 1; a request
    # past the end; an unknown request; a write through an indirect table.
    s = v(v.BLOCK).setup(256, ring_offset=0x0)
    s.block(v.IN, 0, [(v.addr(0, 1), 0x8000), (v.addr(0, 1), 0x8000)]).notify_register()
    s.block(v.IN, 120, [(v.addr(0x4000), 8 * 512)])
    s.block(0xC0, 0, [], raw_kind=11).notify_register()
    s.block(v.OUT, 64, [(v.addr(0x6000), 2048)], indirect=0x7000).notify_register()
    write("virtio", "block-whole-disk-indirect", s.data)

    # Read-only: writes refused, reads served; no EVENT_IDX.
    s = v(v.BLOCK_RO).setup(64, event_idx=False)
    s.block(v.OUT, 0, [(v.addr(0x4000), 512)]).block(v.IN, 0, [(v.addr(0x4000), 4096)])
    s.notify_register().block(v.FLUSH, 0, []).notify_register()
    write("virtio", "block-read-only", s.data)

    # Notifications through the eventfds, served as the event loop does;
    # requests through indirect tables (one descriptor each) in a 4-entry
    # queue, in two batches.
    s = v(v.BLOCK, eventfds=True).setup(4)
    for sector in range(6):
        s.block(v.IN, sector, [(v.addr(0x4000 + 0x200 * sector), 512)],
                status=0x3000 + sector, indirect=0x6000 + 0x100 * sector)
        if sector == 3:
            s.notify_register().serve()
    s.notify_register().serve().serve()
    write("virtio", "block-eventfd-batches", s.data)

    # Back-to-back RAM regions: a buffer across their boundary; and with a
    # gap: one across the end of region 0 (malformed).
    s = v(v.BLOCK, contiguous=True).setup(16)
    s.block(v.IN, 1, [(v.addr(0x7E00), 1024)]).notify_register()
    write("virtio", "block-across-regions", s.data)
    s = v(v.BLOCK).setup(16)
    s.block(v.IN, 1, [(v.addr(0x7E00), 1024)]).block(v.OUT, 1, [(v.addr(0x7E00), 1024)])
    s.notify_register()
    write("virtio", "block-across-the-gap", s.data)

    # The driver step by step through raw registers, a bad queue (size 3)
    # that needs a reset, then a good one.
    s = v(v.BLOCK)
    s.write(0x070, 1).write(0x070, 3).write(0x024, 0).write(0x020, 1 << 29)
    s.write(0x024, 1).write(0x020, 1).write(0x070, 11).read(0x070)
    s.write(0x030, 0).write(0x038, 3).write(0x080, 0x1000).write(0x090, 0x1100)
    s.write(0x0A0, 0x1200).write(0x044, 1).read(0x044).read(0x070).read(0x060)
    s.reset().read(0x070)
    s.write(0x070, 1).write(0x070, 3).write(0x024, 1).write(0x020, 1).write(0x070, 11)
    s.write(0x038, 8).write(0x080, 0x1000).write(0x090, 0x1100).write(0x0A0, 0x1200)
    s.write(0x044, 1).write(0x070, 15).read(0x044)
    s.block(v.IN, 3, [(v.addr(0x4000), 512)]).write(0x050, 0)
    write("virtio", "block-raw-registers", s.data)

    # Entropy: chains of writable buffers, direct and indirect, a
    # device-readable one (never written), from each kind of source.
    net_seeds()
    vsock_seeds()
    for mode, name in [(0, "rng"), (1, "rng-short-reads"), (2, "rng-eintr"), (3, "rng-runs-dry")]:
        s = ids(v(v.RNG, eventfds=mode == 1, rng_mode=mode)).setup(16)
        s.chain([(v.addr(0x4000), 60), (v.addr(0x0100, 1), 4096)], 0b11)
        s.notify_register().serve()
        s.chain([(v.addr(0x5000), 16)], 0b0).chain([(v.addr(0x0, 1), 0x8000)], 0b1)
        s.chain([(v.addr(0x6000), 60), (v.addr(0x6100), 3 * 512)], 0b11, indirect=0x7000)
        s.queue_notify().serve().op(14, 0)
        write("virtio", name, s.data)


def vsock_seeds():
    v = Virtio
    r1 = lambda offset: v.addr(offset, 1)

    # A host program connects (CONNECT 1000), the guest accepts, the host
    # reads its OK line; data both ways; the guest shuts down, the host
    # closes.
    s = v(v.VSOCK).setup(64).read(0x008).read(0x100, 8)
    s.vsock_rx(16, 1024)
    s.host_connect().host_hello(0).pump()
    s.vsock_tx(v.RESPONSE).pump().host_read(0, 2)
    s.host_write(0, 3).pump()
    s.vsock_tx(v.RW, payload=500).host_read(0, 3).host_write(0, 4).pump()
    s.vsock_tx(v.CREDIT_UPDATE).vsock_tx(v.SHUTDOWN, flags=3).pump().host_close(0).pump()
    write("virtio", "vsock-host-connects", s.data)

    # The guest connects to PATH_1024, the listener's peer writes, the
    # guest sends data (header and payload in two descriptors) and closes
    # with a RST; receive buffers split (header, data).
    s = v(v.VSOCK).setup(64)
    s.vsock_rx(16, 4096, split=True)
    s.vsock_tx(v.REQUEST, ports=(1001, 1024)).pump()
    s.host_write(0, 4).pump().host_write(0, 2).pump()
    s.vsock_tx(v.RW, payload=4096, data=r1(0x1000)).host_read(0, 4)
    s.vsock_tx(v.CREDIT_REQUEST).pump().vsock_tx(v.RST).pump()
    write("virtio", "vsock-guest-connects", s.data)

    # RSTs: no listener at 1026, data and a shutdown for connections that
    # do not exist, a bad CID, a datagram, an unknown operation, a length
    # on a REQUEST; host programs with a bad line, an overlong one, none.
    s = v(v.VSOCK).setup(64)
    s.vsock_rx(32, 64)
    s.vsock_tx(v.REQUEST, ports=(1000, 1026)).vsock_tx(v.RW, ports=(1002, 5000), payload=7)
    s.vsock_tx(v.SHUTDOWN, ports=(52, 1 << 30), flags=1)
    s.vsock_tx(v.REQUEST, ports=(1000, 1024), cids=(4, 2))
    s.vsock_tx(v.REQUEST, ports=(1000, 1025), raw_type=3)
    s.vsock_tx(v.REQUEST, ports=(1000, 5000), raw_op=0x99)
    s.vsock_tx(v.REQUEST, ports=(1001, 5000), raw_len=5, payload=7)
    s.pump()
    s.host_connect().host_line(0, b"OPEN 52\n").host_connect().host_overlong(1, 40)
    s.host_connect().host_close(2).host_connect().host_line(3, b"connect 1002")
    s.pump().host_read(0, 3).host_read(1, 3)
    write("virtio", "vsock-rst", s.data)

    # Credit both ways: a guest with 100 bytes of room gets at most 100
    # (then a CREDIT_REQUEST) until it gives more; a guest that sends past
    # the device's 128 KiB once the host stream is full (the host reads
    # nothing) is reset.
    s = v(v.VSOCK).setup(64)
    s.vsock_rx(32, 4096)
    s.vsock_tx(v.REQUEST, ports=(1000, 1025), buf_alloc=100).pump()
    s.host_write(0, 4).pump().pump()
    s.vsock_tx(v.CREDIT_UPDATE, buf_alloc=4096).pump()
    s.vsock_tx(v.CREDIT_UPDATE, buf_alloc=4096).pump()
    for _ in range(16):
        s.vsock_tx(v.RW, payload=32768, header=v.addr(0x6000), data=r1(0))
    s.pump().vsock_rx(8, 64).pump()
    write("virtio", "vsock-credit", s.data)

    # Through eventfds, without EVENT_IDX: event-queue buffers (held),
    # receive buffers one header-only (malformed), packets through an
    # indirect table, a host program that connects before DRIVER_OK.
    s = v(v.VSOCK, eventfds=True, contiguous=True)
    s.host_connect().host_hello(0, 3).pump()
    s.setup(32, event_idx=False)
    s.vsock_rx(4, 1, event=True).vsock_rx(1, 0).vsock_rx(8, 256, at=v.addr(0x5000))
    s.serve().pump()
    s.vsock_tx(v.RESPONSE, indirect=0x7000).serve().pump().host_read(0, 6).host_read(0, 2)
    s.host_write(0, 5).pump().host_shutdown(0, 0).pump()
    s.vsock_tx(v.RST).serve().pump()
    write("virtio", "vsock-eventfds-indirect", s.data)


def net_seeds():
    v = Virtio
    rx = lambda s, count, length=2048, at=0x4000: [
        s.chain([(v.addr(at + i * length), length)], 0b1) for i in range(count)]

    # Receive buffers, frames from the network (one spread over mergeable
    # buffers), served as the event loop does; then a frame sent.
    s = v(v.NET).setup(16)
    s.read(0x100, 4).read(0x104, 2).read(0x008)
    rx(s, 4, 512)
    s.notify_register()
    s.frame("small", 2).frame("mtu").frame("short", 5).serve()
    s.frame("small", 1).host_event(0)
    s.select(1).chain([(v.addr(0x6000), 60)], 0b0).chain([(v.addr(0x6100), 12), (v.addr(0x6200), 50)], 0)
    s.notify_register(1).select(0)
    write("virtio", "net-rx-tx", s.data)

    # Through eventfds; more than RX_BUDGET (64) frames, so the device
    # signals itself to go on; no EVENT_IDX.
    s = v(v.NET, eventfds=True).setup(128, ring_offset=0x0, event_idx=False)
    for i in range(70):
        s.chain([(v.addr(0x4000 + i * 0x40), 0x3F)], 0b1)
    s.notify_register().frame("small", 0, count=65).frame("short", 20, count=4)
    s.frame("small", 0, count=2).serve().serve().serve()
    write("virtio", "net-rx-budget", s.data)

    # The largest frame into one chain of 3 x 32 KiB; one a byte too long;
    # a frame with offloads the guest did not take (CSUM, TSO4) dropped.
    s = v(v.NET).op(2, 3, struct.pack("<Q", 1 << 5)).op(3, 0, v.size(8) + v.addr(0x1000))
    s.op(3, 1, struct.pack("<I", 1) + v.size(8) + v.addr(0x1400)).op(4, 0)
    s.select(0).chain([(v.addr(0, 1), 0x8000)] * 3, 0b111)
    s.frame("max", 0).frame("max", 1).frame("mtu", 0, flags=1, gso=1).serve()
    s.chain([(v.addr(0x4000), 2048)], 0b1).serve()
    write("virtio", "net-big-frames", s.data)

    # Every offload accepted: a transmit frame that asks for checksum and
    # TSO4 offload, one with ECN; received frames with offloads.
    s = v(v.NET).setup(16)
    rx(s, 2)
    s.frame("mtu", 0, flags=1, gso=1).frame("mtu", 0, flags=2, gso=0x84).serve()
    s.poke(0x6000, bytes([1, 1]) + bytes(10)).poke(0x6100, bytes([1, 0x81]) + bytes(10))
    s.select(1).chain([(v.addr(0x6000), 60)], 0).chain([(v.addr(0x6100), 60)], 0)
    s.notify_register(1)
    # A device-writable transmit buffer and a readable receive one.
    s.chain([(v.addr(0x6200), 60)], 0b1).notify_register(1).select(0)
    s.chain([(v.addr(0x6300), 60)], 0).notify_register()
    write("virtio", "net-offloads", s.data)


SEEDS = {"dispatch": dispatch_seeds, "serial_i8042": serial_i8042_seeds, "virtio": virtio_seeds}


def main():
    targets = sys.argv[1:] or ["loader", *SEEDS]
    if "loader" in targets:
        with tempfile.TemporaryDirectory() as guests:
            subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "resources", "guests"),
                            f"OUT={guests}"], check=True)
            loader_seeds(guests)
    for target in targets:
        if target != "loader":
            SEEDS[target]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
