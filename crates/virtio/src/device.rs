//! What a virtio device implements, independent of the transport.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use crate::Memory;

/// The interrupt line of a device: the transport triggers it when it has
/// set a bit in the interrupt status. With KVM this is an eventfd wired to
/// a GSI with an irqfd; in tests, anything that counts.
pub trait Interrupt: Send {
    /// Raises the interrupt.
    fn trigger(&self) -> std::io::Result<()>;
}

impl Interrupt for vmm_sys_util::eventfd::EventFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.write(1)
    }
}

/// A device model behind a virtio transport: its identity, features,
/// configuration space and how it serves its queues. It knows nothing of
/// the transport's registers, of interrupts or of KVM.
pub trait VirtioDevice: Send {
    /// The virtio device id (`virtio_ids`).
    fn device_type(&self) -> u32;

    /// The maximum size of each of the device's queues; their number is the
    /// device's number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits the device offers (VERSION_1 included).
    fn features(&self) -> u64;

    /// The device's configuration space, as the driver reads it.
    fn config(&self) -> &[u8];

    /// The driver accepted `features` (a subset of [`VirtioDevice::features`])
    /// and set DRIVER_OK: the device starts serving its queues.
    fn activate(&mut self, features: u64) {
        let _ = features;
    }

    /// Serves the available buffers of queue `index`. Returns whether it
    /// put anything in the used ring (the transport then decides whether
    /// the driver wants an interrupt). An error means the queue's rings
    /// are broken: the transport stops the device (DEVICE_NEEDS_RESET).
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &Memory,
    ) -> Result<bool, virtio_queue::Error>;

    /// The driver reset the device: forget everything negotiated.
    ///
    /// Like [`VirtioDevice::activate`], this runs on the thread that wrote
    /// the status register (a vCPU thread, in a VMM), so it should make no
    /// system calls beyond closing descriptors, writing eventfds and
    /// setting a tap's offloads: such threads are sandboxed tightly.
    fn reset(&mut self) {}

    /// How many chains of queue `index` the device holds off the ring,
    /// taken in ring order and not used yet (receive buffers waiting for
    /// data): a snapshot saves the queue's next available entry that many
    /// entries back, so the restored device takes them again. Default none.
    fn held_chains(&self, index: usize) -> u16 {
        let _ = index;
        0
    }

    /// The transport restored a snapshot's state into this device (after
    /// `activate`, before its queues are served again). Default nothing.
    fn restored(&mut self) {}

    /// Host descriptors the device wants watched for reading, besides its
    /// queues (e.g. a tap device), in a fixed order. Watch them
    /// edge-triggered: a device serves each until it would block or has no
    /// buffer left, and resumes when the driver adds buffers.
    fn host_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }

    /// Host descriptor `index` of [`VirtioDevice::host_fds`] is readable
    /// (never called before activation). Returns a bit mask of the queues
    /// it put used buffers in.
    fn host_event(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &Memory,
    ) -> Result<u64, virtio_queue::Error> {
        let _ = (index, queues, mem);
        Ok(0)
    }
}

/// Something whose queue `index` the driver has notified: what an event
/// loop calls when a queue's eventfd fires.
pub trait QueueNotify: Send {
    /// Serves queue `index` (out-of-range or not-ready queues are ignored).
    fn queue_notify(&mut self, index: usize);

    /// The device's host descriptors to watch (edge-triggered), see
    /// [`VirtioDevice::host_fds`].
    fn host_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }

    /// Host descriptor `index` is readable.
    fn host_event(&mut self, index: usize) {
        let _ = index;
    }
}

/// The usual way to serve a queue: pops each available chain, lets
/// `serve` handle it and return how many bytes it wrote into the chain's
/// device-writable buffers, and puts it in the used ring. With EVENT_IDX,
/// re-checks after re-enabling notifications so no buffer is left
/// unnoticed. At most one queue's worth of chains is served per call, so a
/// guest that keeps refilling the ring cannot hold the caller (and every
/// other device it serves) forever: [`queue_pending`] then tells the caller
/// to come back. Returns whether any chain was used.
pub fn drain_queue(
    queue: &mut Queue,
    mem: &Memory,
    mut serve: impl FnMut(DescriptorChain<&Memory>) -> u32,
) -> Result<bool, virtio_queue::Error> {
    let mut budget = queue.size();
    let mut used_any = false;
    loop {
        queue.disable_notification(mem)?;
        while budget > 0 {
            let Some(chain) = queue.iter(mem)?.next() else { break };
            let head = chain.head_index();
            let written = serve(chain);
            queue.add_used(mem, head, written)?;
            used_any = true;
            budget -= 1;
        }
        if budget == 0 {
            // Notifications stay off: the caller comes back by itself.
            return Ok(used_any);
        }
        if !queue.enable_notification(mem)? {
            return Ok(used_any);
        }
    }
}

/// True when the driver has made buffers available that the device has not
/// taken yet.
pub fn queue_pending(queue: &Queue, mem: &Memory) -> Result<bool, virtio_queue::Error> {
    let avail = queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire)?;
    Ok(avail.0 != queue.next_avail())
}
