//! The UART and the i8042 driven directly through `vm_device::MutDevicePio`,
//! and the console input buffer (`ConsoleInput`).
//!
//! The input is a sequence of operations: UART register reads and writes at
//! any offset and width (0 to 8 bytes), host input offered to the UART's
//! receive FIFO (`SerialPort::enqueue_input`), i8042 reads and writes at any
//! base and offset, and runs of `console::ConsoleInput` over arbitrary bytes.
//!
//! Invariants:
//! - nothing panics;
//! - the UART matches `vmm_fuzz::SerialModel` register by register: every
//!   byte the guest writes to THR with DLAB clear and loopback off reaches
//!   the output writer, in order, and nothing else does; the receive FIFO
//!   gives back exactly what it accepted, in order; `enqueue_input` never
//!   takes more than the room `input_room` reported (the FIFO holds at most
//!   64 bytes) and takes nothing in loopback; LSR's data-ready bit says
//!   whether the FIFO holds data; the interrupts raised on the eventfd are
//!   exactly the model's;
//! - the i8042 matches `vmm_fuzz::I8042Model` (status, answers, resets
//!   reported through `ExitRequest::reset`), whose output buffer keeps at
//!   most 16 unread answers (a real controller holds one byte);
//! - `ConsoleInput` delivers what it is fed in order without losing or
//!   adding a byte, however the input is split into `feed` chunks (empty
//!   ones included, feeding while bytes are pending or not) and however
//!   little room the FIFO has at each `deliver` (none included): each
//!   delivery hands over exactly min(room, pending) bytes and reports
//!   whether nothing is left, as `has_pending` does; with the escape on,
//!   what it delivers is the input with the Ctrl-A sequences filtered
//!   (Ctrl-A x quits: `feed` says so for the chunk holding the x and the
//!   rest of that chunk is dropped; Ctrl-A Ctrl-A is one Ctrl-A; Ctrl-A and
//!   another key are both passed), across chunk boundaries too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_device::MutDevicePio;
use vm_device::bus::PioAddress;
use vmm_devices::EventFdTrigger;
use vmm_devices::console::{ConsoleInput, ESCAPE, ESCAPE_QUIT};
use vmm_devices::i8042::I8042;
use vmm_devices::serial::{COM1_PORT, SerialPort};
use vmm_fuzz::{FIFO_SIZE, I8042_OUTPUT_MAX, I8042Model, Input, Request, Requests, SerialModel};

fn serial_offset(input: &mut Input) -> u16 {
    let raw = input.u8();
    if raw < 0xf0 { u16::from(raw % 10) } else { input.u16() }
}

/// A base and an offset as vm-device could pass them: the port they name,
/// `base + offset`, never wraps past 0xffff.
fn i8042_port(input: &mut Input) -> (u16, u16) {
    let raw = input.u8();
    let base = match raw & 3 {
        0 => 0x60,
        1 => 0x64,
        2 => 0x60 + u16::from(raw >> 2 & 7),
        _ => input.u16(),
    };
    let offset = match raw >> 5 {
        0..=5 => 0,
        6 => u16::from(input.u8() & 7),
        _ => input.u16(),
    };
    (base, offset.min(u16::MAX - base))
}

/// What the guest should get from `input` with the escape on: the bytes,
/// the index in `input` of the `x` of the first Ctrl-A x (the user asked to
/// quit there; nothing after it counts), and for each prefix
/// `input[..i]` how many output bytes it has produced (`produced[i]`; a
/// Ctrl-A waiting for its key has produced nothing yet).
struct Filtered {
    out: Vec<u8>,
    quit_at: Option<usize>,
    produced: Vec<usize>,
}

fn filter_escape(input: &[u8], escape: bool) -> Filtered {
    let mut out = Vec::new();
    let mut produced = vec![0];
    let mut quit_at = None;
    let mut after_escape = false;
    for (i, &byte) in input.iter().enumerate() {
        if !escape {
            out.push(byte);
        } else if after_escape {
            after_escape = false;
            match byte {
                ESCAPE_QUIT => {
                    quit_at = Some(i);
                    produced.push(out.len());
                    break;
                }
                ESCAPE => out.push(ESCAPE),
                other => out.extend_from_slice(&[ESCAPE, other]),
            }
        } else if byte == ESCAPE {
            // Waits for the next byte, perhaps in the next chunk; a Ctrl-A
            // at the very end waits for a key that never comes.
            after_escape = true;
        } else {
            out.push(byte);
        }
        produced.push(out.len());
    }
    Filtered { out, quit_at, produced }
}

/// `ConsoleInput` as the VMM's event loop drives it: host input fed in
/// chunks of fuzz-chosen sizes (empty ones included), deliveries into a
/// FIFO with fuzz-chosen room each time (none included), interleaved as
/// the input says or, as the VMM does, never feeding while bytes wait.
fn fuzz_console(input: &mut Input) {
    let flags = input.u8();
    let escape = flags & 1 != 0;
    // The VMM stops reading stdin while bytes are pending; the API allows
    // feeding more at any time.
    let interleave = flags & 2 != 0;
    let schedule = input.u8();
    let chunk_count = usize::from(input.u8() % 8);
    let chunk_sizes = input.bytes(chunk_count);
    let room_count = usize::from(input.u8() % 8) + 1;
    let rooms = input.bytes(room_count);
    let len = usize::from(input.u16() % 2048);
    let data = input.bytes(len);
    let model = filter_escape(data, escape);

    let mut console = ConsoleInput::new(escape);
    let mut got: Vec<u8> = Vec::new();
    let mut fed = 0usize;
    let mut chunks = 0usize;
    let mut deliveries = 0usize;
    let mut quit = false;
    // Bounded: every step feeds at least one byte (empty chunks are
    // limited) or delivers; deliveries into no room are limited too.
    let mut empty_feeds_left = 4;
    let mut empty_rooms_left = 4;
    let mut steps = 0usize;
    while !quit && fed < data.len() || console.has_pending() {
        steps += 1;
        assert!(steps < 20_000, "the console input does not make progress");
        let pending = model.produced[fed] - got.len();
        assert_eq!(console.has_pending(), pending > 0, "has_pending with {pending} pending");
        let feed_now = !quit
            && fed < data.len()
            && (!console.has_pending() || interleave && schedule.rotate_left(steps as u32) & 1 != 0);
        if feed_now {
            let mut size = usize::from(chunk_sizes.get(chunks % chunk_count.max(1)).copied().unwrap_or(255));
            chunks += 1;
            if size == 0 {
                if empty_feeds_left == 0 {
                    size = 1;
                } else {
                    empty_feeds_left -= 1;
                }
            }
            let chunk = &data[fed..(fed + size).min(data.len())];
            let quits = console.feed(chunk);
            let quit_here = model.quit_at.is_some_and(|at| (fed..fed + chunk.len()).contains(&at));
            assert_eq!(quits, quit_here, "feed of {} bytes at {fed}: quit {quits}", chunk.len());
            if quits {
                quit = true;
                fed = model.quit_at.unwrap_or(fed) + 1;
            } else {
                fed += chunk.len();
            }
            continue;
        }
        // Deliver into a FIFO with this much room; it takes what fits.
        let mut room = usize::from(rooms.get(deliveries % room_count).copied().unwrap_or(255));
        deliveries += 1;
        if room == 0 {
            if empty_rooms_left == 0 {
                room = 1;
            } else {
                empty_rooms_left -= 1;
            }
        }
        let before = got.len();
        let mut left = room;
        let emptied = console.deliver(|bytes| {
            assert!(!bytes.is_empty(), "pushed nothing");
            let take = left.min(bytes.len());
            got.extend_from_slice(&bytes[..take]);
            left -= take;
            take
        });
        assert_eq!(got.len() - before, room.min(pending), "room {room}, {pending} pending");
        assert_eq!(emptied, room >= pending, "deliver's result, room {room}, {pending} pending");
        assert_eq!(emptied, !console.has_pending());
        assert!(model.out.starts_with(&got), "delivered bytes differ from the input's");
    }
    assert_eq!(quit, model.quit_at.is_some(), "Ctrl-A x not reported");
    let expected = if quit { &model.out[..] } else { &model.out[..model.produced[data.len()]] };
    assert_eq!(got, expected);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let base = PioAddress(COM1_PORT);
    let mut serial = SerialPort::new(EventFdTrigger::new().expect("eventfd"), Vec::new());
    let mut serial_model = SerialModel::default();
    let requests = Requests::default();
    let mut i8042 = I8042::new(requests.clone());
    let mut i8042_model = I8042Model::default();
    let mut buffer = [0u8; 8];

    while !input.is_empty() {
        let op = input.u8();
        let len = usize::from(op >> 4) % 9; // 0..=8
        match op & 0x0f {
            0..=3 => {
                let offset = serial_offset(&mut input);
                let data = input.bytes(len);
                serial.pio_write(base, offset, data);
                serial_model.pio_write(offset, data);
                assert_eq!(serial.output().len(), serial_model.output.len());
            }
            4..=6 => {
                let offset = serial_offset(&mut input);
                buffer.fill(input.u8());
                serial.pio_read(base, offset, &mut buffer[..len]);
                let expected = serial_model.pio_read(offset, len);
                assert_eq!(buffer[..len], expected[..], "UART read of {len} at offset {offset}");
            }
            7 | 8 => {
                let count = usize::from(input.u8() % 80);
                let bytes = input.bytes(count);
                let room = serial.input_room();
                assert_eq!(room, FIFO_SIZE - serial_model.fifo.len());
                let taken = serial.enqueue_input(bytes);
                assert!(taken <= room && taken <= bytes.len(), "took {taken} with room {room}");
                assert_eq!(taken, serial_model.enqueue(bytes));
                assert_eq!(serial.input_room(), room - taken);
            }
            9..=11 => {
                let (port_base, offset) = i8042_port(&mut input);
                let data = input.bytes(len);
                i8042.pio_write(PioAddress(port_base), offset, data);
                if let Some(&value) = data.first() {
                    i8042_model.write(port_base + offset, value);
                }
            }
            12..=14 => {
                let (port_base, offset) = i8042_port(&mut input);
                buffer.fill(input.u8());
                i8042.pio_read(PioAddress(port_base), offset, &mut buffer[..len]);
                // The device answers with one byte (the rest zero); a
                // 0-byte read (which vm-device never makes) still reads it.
                let value = i8042_model.read(port_base + offset);
                if let Some((first, rest)) = buffer[..len].split_first() {
                    assert_eq!(*first, value, "i8042 read at {:#x}", port_base + offset);
                    assert!(rest.iter().all(|&b| b == 0));
                }
            }
            _ => fuzz_console(&mut input),
        }
        let resets = requests.take();
        assert!(resets.iter().all(|r| *r == Request::Reset), "{resets:?}");
        assert_eq!(resets.len(), std::mem::take(&mut i8042_model.resets));
        // The model keeps at most I8042_OUTPUT_MAX unread answers, so reads
        // that match it show the device's buffer is bounded too (it was
        // not: fuzz/regressions/serial_i8042/i8042-output-unbounded).
        debug_assert!(i8042_model.queued() <= I8042_OUTPUT_MAX);
    }
    assert_eq!(serial.output(), &serial_model.output[..]);
    let raised = serial.interrupt().event_fd().read().unwrap_or(0);
    assert_eq!(raised, serial_model.interrupts);
});
