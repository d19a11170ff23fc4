//! The host side of a serial console: the terminal in raw mode while the
//! guest owns it, and the input buffer that feeds host input into the
//! UART's receive FIFO without dropping a byte.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::terminal::Terminal;

/// Ctrl-A, the escape key (as in QEMU): Ctrl-A x leaves, Ctrl-A Ctrl-A
/// sends one Ctrl-A to the guest.
pub const ESCAPE: u8 = 0x01;
/// The key that, after [`ESCAPE`], leaves the console.
pub const ESCAPE_QUIT: u8 = b'x';

/// Whether this process put stdin's terminal in raw mode and has not
/// restored it yet, for every exit path.
static RAW_MODE: AtomicBool = AtomicBool::new(false);

/// Standard input's descriptor as a vmm-sys-util [`Terminal`].
///
/// vmm-sys-util implements the trait for `StdinLock`, but the console
/// input thread holds that lock while it blocks in `read`: restoring the
/// terminal through it (at the end of a run, or from a panic hook) would
/// wait for the next key press. This handle takes no lock.
struct StdinTerminal;

// SAFETY: descriptor 0 is standard input for the whole life of the process
// (nothing in this VMM closes it), so the descriptor returned is valid for
// at least as long as any `StdinTerminal`.
unsafe impl Terminal for StdinTerminal {
    fn tty_fd(&self) -> RawFd {
        libc::STDIN_FILENO
    }
}

/// Puts standard input's terminal in raw mode (no echo, no line editing,
/// no signals from keys: Ctrl-C goes to the guest) and restores it when
/// dropped. Output processing stays on, so host messages keep their line
/// breaks.
///
/// Through vmm-sys-util's [`Terminal`]: `set_raw_mode` clears only `ICANON`,
/// `ECHO` and `ISIG` in the local flags and never touches the output flags,
/// so `OPOST` (and with it `ONLCR`) stays as the user had it; dropping (or
/// [`restore_terminal`]) calls `set_canon_mode`, which sets those three
/// flags again. The input flags are left as they were too: where the
/// terminal has them, Ctrl-S/Ctrl-Q flow control (`IXON`) stays with the
/// host and Enter reaches the guest as a line feed (`ICRNL`).
#[derive(Debug)]
pub struct RawTerminal(());

impl RawTerminal {
    /// Switches stdin to raw mode; `None` when stdin is not a terminal or
    /// its mode cannot be changed.
    pub fn enable() -> Option<RawTerminal> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        // Set first, so that a panic on another thread restores the mode
        // even while it is being changed.
        RAW_MODE.store(true, Ordering::SeqCst);
        if let Err(err) = StdinTerminal.set_raw_mode() {
            RAW_MODE.store(false, Ordering::SeqCst);
            log::warn!("cannot put the terminal in raw mode: {err}");
            return None;
        }
        Some(RawTerminal(()))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Takes the terminal out of the raw mode [`RawTerminal::enable`] set
/// (canonical mode, echo and signals from keys again), if it did. Safe to
/// call more than once and from any thread, e.g. from a panic hook: it
/// waits for no lock.
pub fn restore_terminal() {
    if RAW_MODE.swap(false, Ordering::SeqCst)
        && let Err(err) = StdinTerminal.set_canon_mode()
    {
        log::warn!("cannot restore the terminal's mode: {err}");
    }
}

/// True when standard input is /dev/null: there is no input to pump.
pub fn stdin_is_null() -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (Ok(stdin), Ok(null)) = (std::fs::metadata("/dev/stdin"), std::fs::metadata("/dev/null"))
    else {
        return false;
    };
    stdin.file_type().is_char_device() && stdin.rdev() == null.rdev()
}

/// Filters the escape sequence out of host input.
#[derive(Debug, Default)]
struct EscapeFilter {
    after_escape: bool,
}

impl EscapeFilter {
    /// Appends what the guest should get from `input` to `out`; true when
    /// the user asked to quit (the rest of `input` is dropped).
    fn filter(&mut self, input: &[u8], out: &mut VecDeque<u8>) -> bool {
        for &byte in input {
            if self.after_escape {
                self.after_escape = false;
                match byte {
                    ESCAPE_QUIT => return true,
                    ESCAPE => out.push_back(ESCAPE),
                    other => out.extend([ESCAPE, other]),
                }
            } else if byte == ESCAPE {
                self.after_escape = true;
            } else {
                out.push_back(byte);
            }
        }
        false
    }
}

/// Host input on its way to the UART's receive FIFO, for an event loop:
/// [`ConsoleInput::feed`] what stdin gave, [`ConsoleInput::deliver`] what the
/// FIFO takes; while bytes are pending the loop stops reading stdin and
/// waits for the FIFO to empty (the serial port's input-room event), so no
/// byte is ever dropped and nothing polls.
#[derive(Debug)]
pub struct ConsoleInput {
    escape: Option<EscapeFilter>,
    pending: VecDeque<u8>,
}

impl ConsoleInput {
    /// With `escape`, Ctrl-A x asks to leave and Ctrl-A Ctrl-A sends one
    /// Ctrl-A; without, every byte is data.
    pub fn new(escape: bool) -> ConsoleInput {
        ConsoleInput { escape: escape.then(EscapeFilter::default), pending: VecDeque::new() }
    }

    /// Takes bytes read from the host; true when the user asked to leave.
    pub fn feed(&mut self, input: &[u8]) -> bool {
        match &mut self.escape {
            Some(filter) => filter.filter(input, &mut self.pending),
            None => {
                self.pending.extend(input);
                false
            }
        }
    }

    /// Hands pending bytes, in order, to `push`, which takes what fits and
    /// returns how many it took; stops when it takes none. True when
    /// nothing is left pending.
    pub fn deliver(&mut self, mut push: impl FnMut(&[u8]) -> usize) -> bool {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            let taken = push(front).min(front.len());
            if taken == 0 {
                return false;
            }
            self.pending.drain(..taken);
        }
        true
    }

    /// True when bytes wait for room in the FIFO.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of 5, delivering into a FIFO that takes at
    /// most 7 bytes and is full every other time.
    fn run(input: &[u8], escape: bool) -> (Vec<u8>, bool) {
        let mut console = ConsoleInput::new(escape);
        let mut got = Vec::new();
        let mut calls = 0;
        for chunk in input.chunks(5) {
            if console.feed(chunk) {
                console.deliver(|bytes| {
                    got.extend_from_slice(bytes);
                    bytes.len()
                });
                return (got, true);
            }
            while !console.deliver(|bytes| {
                calls += 1;
                let room = if calls % 2 == 0 { 0 } else { 7 };
                let n = room.min(bytes.len());
                got.extend_from_slice(&bytes[..n]);
                n
            }) {}
        }
        (got, false)
    }

    #[test]
    fn every_byte_arrives_in_order_even_when_the_fifo_is_small() {
        let input: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        assert_eq!(run(&input, false), (input, false));
    }

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_ctrl_a_sends_one_ctrl_a() {
        assert_eq!(run(b"ab\x01\x01c\x01dx\x01xzzz", true), (b"ab\x01c\x01dx".to_vec(), true));
    }

    #[test]
    fn without_escape_ctrl_a_is_data() {
        assert_eq!(run(b"\x01x", false), (b"\x01x".to_vec(), false));
    }

    #[test]
    fn a_full_fifo_keeps_bytes_pending() {
        let mut console = ConsoleInput::new(false);
        console.feed(b"abc");
        assert!(!console.deliver(|_| 0));
        assert!(console.has_pending());
        let mut got = Vec::new();
        assert!(console.deliver(|b| {
            got.extend_from_slice(b);
            b.len()
        }));
        assert_eq!(got, b"abc");
        assert!(!console.has_pending());
    }
}
