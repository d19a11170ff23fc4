//! The event loop: the main thread waits on file descriptors only (queue
//! notifiers, console input and room in the UART's FIFO, stop signals
//! through a signalfd, the control API's requests, and the run's end), with
//! rust-vmm's event-manager.
//!
//! While the VM is paused the loop serves no device: the subscribers of the
//! virtio queues and host descriptors and of the console input are taken
//! out of the loop ([`EventLoop::pause_devices`]) and put back on resume, so
//! nothing is read, written or delivered to the guest meanwhile and what
//! arrived waits in its descriptor.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use event_manager::{
    EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use vmm_devices::console::ConsoleInput;
use vmm_dispatch::{Outcome, RunControl};
use vmm_sys_util::eventfd::EventFd;
use vmm_virtio::QueueNotify;

use crate::api::{Endpoint, Message, Reply};
use crate::machine::Serial;

/// The loop and what it serves.
pub struct EventLoop {
    manager: EventManager<Box<dyn MutEventSubscriber>>,
    control: Arc<RunControl>,
    /// The subscribers that serve the guest's devices (queues, console
    /// input), taken out while paused.
    devices: Vec<SubscriberId>,
    /// The device subscribers taken out by a pause.
    parked: Vec<Box<dyn MutEventSubscriber>>,
    /// The control API's requests, when it is on.
    api: Option<Receiver<Message>>,
}

impl EventLoop {
    /// A loop that runs until `control` says the run is over; `finished`
    /// is signalled when it is.
    pub fn new(control: Arc<RunControl>, finished: EventFd) -> anyhow::Result<EventLoop> {
        let mut manager: EventManager<Box<dyn MutEventSubscriber>> =
            EventManager::new().context("cannot create the event loop (epoll)")?;
        manager.add_subscriber(Box::new(Finished(finished)));
        Ok(EventLoop { manager, control, devices: Vec::new(), parked: Vec::new(), api: None })
    }

    /// Serves the queues of a virtio device when their notifiers fire.
    pub fn add_queues(&mut self, transport: Arc<Mutex<dyn QueueNotify>>, notifiers: Vec<EventFd>) {
        let id = self.manager.add_subscriber(Box::new(Queues { transport, notifiers }));
        self.devices.push(id);
    }

    /// Takes the control API's requests from `requests` whenever `wake`
    /// fires; [`EventLoop::run`]'s handler answers them.
    pub fn add_api(&mut self, requests: Receiver<Message>, wake: EventFd) {
        self.manager.add_subscriber(Box::new(Finished(wake)));
        self.api = Some(requests);
    }

    /// Stops serving the devices (the VM is paused): their subscribers
    /// leave the loop, and with them their descriptors.
    pub fn pause_devices(&mut self) {
        for id in self.devices.drain(..) {
            match self.manager.remove_subscriber(id) {
                Ok(subscriber) => self.parked.push(subscriber),
                Err(err) => log::error!("cannot pause a device's events: {err:?}"),
            }
        }
    }

    /// Serves the devices again: their subscribers rejoin the loop and
    /// watch their descriptors again (what arrived meanwhile is served now).
    pub fn resume_devices(&mut self) {
        for subscriber in self.parked.drain(..) {
            let id = self.manager.add_subscriber(subscriber);
            self.devices.push(id);
        }
    }

    /// Ends the run on SIGINT, SIGTERM or SIGHUP (which the caller has
    /// blocked in every thread) with 128 + the signal's number.
    pub fn add_stop_signals(&mut self, signals: &[libc::c_int]) -> anyhow::Result<()> {
        let fd = signal_fd(signals).context("cannot create a signalfd for the stop signals")?;
        self.manager.add_subscriber(Box::new(Signals { fd, control: self.control.clone() }));
        Ok(())
    }

    /// Feeds stdin to the UART's receive FIFO, waiting for `room` when it
    /// is full; with `escape`, Ctrl-A x ends the run.
    pub fn add_console_input(&mut self, serial: Arc<Serial>, room: EventFd, escape: bool) {
        let id = self.manager.add_subscriber(Box::new(Console {
            input: ConsoleInput::new(escape),
            serial,
            room,
            control: self.control.clone(),
            reading: true,
        }));
        self.devices.push(id);
    }

    /// Runs until the run is over; `handle` answers the control API's
    /// requests, with the loop at hand (to pause the devices).
    pub fn run(
        &mut self,
        mut handle: impl FnMut(Endpoint, &mut EventLoop) -> Reply,
    ) -> anyhow::Result<()> {
        while !self.control.should_stop() {
            match self.manager.run() {
                Ok(_) => {}
                Err(event_manager::Error::Epoll(err)) if err.errno() == libc::EINTR => {}
                Err(err) => return Err(anyhow::anyhow!("the event loop failed: {err:?}")),
            }
            let messages: Vec<Message> = match &self.api {
                Some(requests) => requests.try_iter().collect(),
                None => Vec::new(),
            };
            for (endpoint, reply) in messages {
                let answer = handle(endpoint, self);
                // The API thread may have given up waiting; nothing to do.
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }
}

/// An eventfd that only wakes the loop: the run's end (the loop then sees
/// the stop flag) or a control API request (the loop then takes it).
struct Finished(EventFd);

impl MutEventSubscriber for Finished {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.0.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(&self.0, EventSet::IN)) {
            log::error!("cannot watch the run's end: {err:?}");
        }
    }
}

/// The queue notifiers of one virtio device.
struct Queues {
    transport: Arc<Mutex<dyn QueueNotify>>,
    notifiers: Vec<EventFd>,
}

/// Event data of a device's host descriptor `i`: `HOST_FD_DATA + i`.
const HOST_FD_DATA: u32 = 0x1_0000;

impl MutEventSubscriber for Queues {
    fn process(&mut self, events: Events, _: &mut EventOps) {
        let data = events.data();
        let mut transport = self.transport.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(host) = data.checked_sub(HOST_FD_DATA) {
            transport.host_event(host as usize);
        } else if let Some(notifier) = self.notifiers.get(data as usize) {
            let _ = notifier.read();
            transport.queue_notify(data as usize);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (index, notifier) in self.notifiers.iter().enumerate() {
            if let Err(err) = ops.add(Events::with_data(notifier, index as u32, EventSet::IN)) {
                log::error!("cannot watch queue notifier {index}: {err:?}");
            }
        }
        let host_fds = self.transport.lock().unwrap_or_else(PoisonError::into_inner).host_fds();
        for (index, fd) in host_fds.into_iter().enumerate() {
            // Edge-triggered: the device reads until it would block or has
            // no buffer, and resumes when the driver adds buffers.
            let events = EventSet::IN | EventSet::EDGE_TRIGGERED;
            if let Err(err) =
                ops.add(Events::with_data_raw(fd, HOST_FD_DATA + index as u32, events))
            {
                log::error!("cannot watch a device's host descriptor {index}: {err:?}");
            }
        }
    }
}

/// A signalfd for `signals`, which must be blocked in every thread.
fn signal_fd(signals: &[libc::c_int]) -> std::io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &signal in signals {
        // SAFETY: `set` is initialised; a bad number only returns EINVAL.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    // SAFETY: `set` is initialised; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

struct Signals {
    fd: OwnedFd,
    control: Arc<RunControl>,
}

impl MutEventSubscriber for Signals {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is writable for `size` bytes; the descriptor is ours.
        let read =
            unsafe { libc::read(self.fd.as_raw_fd(), std::ptr::addr_of_mut!(info).cast(), size) };
        if usize::try_from(read).ok() != Some(size) {
            return;
        }
        let signal = info.ssi_signo as libc::c_int;
        let name = match signal {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            libc::SIGHUP => "SIGHUP",
            _ => "a signal",
        };
        self.control.finish(Outcome::Stopped {
            reason: format!("received {name}"),
            // 128 + the signal's number, as shells report it.
            status: u8::try_from(128 + signal).unwrap_or(u8::MAX),
        });
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch the stop signals: {err:?}");
        }
    }
}

const STDIN: RawFd = libc::STDIN_FILENO;
const STDIN_DATA: u32 = 0;
const ROOM_DATA: u32 = 1;

/// Host stdin to the UART: reads stdin while the FIFO has room; when it is
/// full, stops reading and waits for the guest to empty it.
struct Console {
    input: ConsoleInput,
    serial: Arc<Serial>,
    room: EventFd,
    control: Arc<RunControl>,
    reading: bool,
}

impl Console {
    fn deliver(&mut self) -> bool {
        let serial = &self.serial;
        self.input.deliver(|bytes| {
            serial.lock().unwrap_or_else(PoisonError::into_inner).enqueue_input(bytes)
        })
    }

    fn stop_reading(&mut self, ops: &mut EventOps) {
        if self.reading {
            let _ = ops.remove(Events::empty_raw(STDIN));
            self.reading = false;
        }
    }

    fn read_stdin(&mut self, events: &Events, ops: &mut EventOps) {
        let mut buffer = [0u8; 256];
        // SAFETY: `buffer` is writable for its length; stdin stays open.
        let read = unsafe { libc::read(STDIN, buffer.as_mut_ptr().cast(), buffer.len()) };
        let read = match usize::try_from(read) {
            Ok(0) => {
                log::debug!("console input ended");
                self.stop_reading(ops);
                return;
            }
            Ok(read) => read,
            Err(_) => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted
                    && err.kind() != std::io::ErrorKind::WouldBlock
                {
                    log::warn!("console input stopped: {err}");
                    self.stop_reading(ops);
                } else if events.event_set().contains(EventSet::HANG_UP) {
                    self.stop_reading(ops);
                }
                return;
            }
        };
        let quit = self.input.feed(&buffer[..read]);
        self.deliver();
        if quit {
            self.control
                .finish(Outcome::Stopped { reason: "console escape (Ctrl-A x)".into(), status: 0 });
        } else if self.input.has_pending() {
            // The FIFO is full: wait for the guest to empty it.
            self.stop_reading(ops);
        }
    }
}

impl MutEventSubscriber for Console {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            STDIN_DATA => self.read_stdin(&events, ops),
            _ => {
                let _ = self.room.read();
                if self.deliver() && !self.reading {
                    self.reading =
                        ops.add(Events::with_data_raw(STDIN, STDIN_DATA, EventSet::IN)).is_ok();
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::with_data(&self.room, ROOM_DATA, EventSet::IN)) {
            log::error!("cannot watch the serial input room: {err:?}");
        }
        // Back from a pause, stdin is watched again only if it was before
        // (not after its end, nor while the FIFO is full).
        if self.reading
            && let Err(err) = ops.add(Events::with_data_raw(STDIN, STDIN_DATA, EventSet::IN))
        {
            // A regular file as stdin cannot be waited on.
            log::warn!("console input is not read: stdin cannot be watched ({err:?})");
            self.reading = false;
        }
    }
}
