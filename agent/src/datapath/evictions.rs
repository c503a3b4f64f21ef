//! The eviction ring, emptied on a thread of its own as well as by every harvest.
//!
//! Why a thread: the agent's loop cannot drain the ring while it is busy with a harvest,
//! and at node scale the harvest's settling alone takes a few hundred ms. A cache that
//! thrashes (flows whose senders move between CPUs, more active flows than slots) was
//! measured sending 140,000 records a second, so the ring would have to hold a whole
//! harvest's worth: 8 MiB of ring mapped twice into the agent. This thread copies the
//! records out whenever the kernel signals the ring is an eighth full (or every 100 ms),
//! so the ring stays small; the agent's loop folds them into their connections every
//! 250 ms and at the start of every harvest (`Harvester::fold_evictions`).

use std::{
    os::fd::{AsRawFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::JoinHandle,
    time::Duration,
};

use agent_common::Evicted;
use aya::maps::{MapData, RingBuf};

use super::DatapathError;

/// Most records held between folds (~100 MiB). Past it the thread stops copying, the
/// ring fills, and the kernel counts what it could not write as `evictions_lost` (alerted
/// on): a harvest stalled for many seconds must not take the node's memory with it.
const QUEUE_MAX: usize = 1_000_000;

/// How long the thread sleeps when the kernel has not woken it.
const IDLE_WAIT: Duration = Duration::from_millis(100);

struct Shared {
    ring: Mutex<RingBuf<MapData>>,
    /// Records copied out by the thread, oldest first.
    queue: Mutex<Vec<Evicted>>,
    stop: AtomicBool,
}

/// Owns the ring and the thread that empties it; stops the thread when dropped.
pub struct Evictions {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Evictions {
    pub fn start(ring: RingBuf<MapData>) -> Result<Self, DatapathError> {
        let waiter = Waiter::new(ring.as_raw_fd())?;
        let shared = Arc::new(Shared {
            ring: Mutex::new(ring),
            queue: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tf-evictions".into())
            .spawn(move || {
                while !s.stop.load(Ordering::Acquire) {
                    waiter.wait(IDLE_WAIT);
                    let room = QUEUE_MAX.saturating_sub(lock(&s.queue).len());
                    // A new vector each time, moved into the queue when that is empty:
                    // neither keeps the capacity of a burst once it has been taken.
                    let mut copied = Vec::new();
                    copy_out(&mut lock(&s.ring), &mut copied, room);
                    if !copied.is_empty() {
                        let mut queue = lock(&s.queue);
                        if queue.is_empty() {
                            *queue = copied;
                        } else {
                            queue.append(&mut copied);
                        }
                    }
                }
            })
            .map_err(DatapathError::Thread)?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Every record not yet taken, oldest first: those the thread copied out, then what
    /// is still in the ring (emptied here too, so a harvest never waits for the thread).
    /// The queue's vector itself is taken, so its capacity goes with it.
    pub fn take(&self) -> Vec<Evicted> {
        let mut out = std::mem::take(&mut *lock(&self.shared.queue));
        copy_out(&mut lock(&self.shared.ring), &mut out, usize::MAX);
        out
    }
}

impl Drop for Evictions {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A poisoned lock only means the other side panicked mid-copy; the records it holds are
/// whole (pushed one at a time), so keep them.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Up to `room` records from the ring onto `out`.
fn copy_out(ring: &mut RingBuf<MapData>, out: &mut Vec<Evicted>, room: usize) {
    let mut n = 0;
    while n < room {
        let Some(item) = ring.next() else { break };
        n += 1;
        if item.len() < size_of::<Evicted>() {
            continue;
        }
        // SAFETY: the kernel wrote an `Evicted` (repr(C), every bit pattern valid) at the
        // start of the record; read_unaligned makes no alignment assumption.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
    }
}

/// Edge-triggered epoll on the ring: a ring buffer's fd polls readable whenever anything
/// is in it, but the kernel only sends a wakeup when a record is submitted with one (the
/// programs do so once an eighth of the ring is waiting), and edge triggering waits for
/// exactly that.
struct Waiter {
    epoll: std::os::fd::OwnedFd,
}

impl Waiter {
    fn new(fd: RawFd) -> Result<Self, DatapathError> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscalls; the fd returned is owned here and closed on drop.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(DatapathError::Thread(std::io::Error::last_os_error()));
        }
        // SAFETY: `epoll` was just created and is owned by nothing else.
        let epoll = unsafe { std::os::fd::OwnedFd::from_raw_fd(epoll) };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both fds are open; `ev` outlives the call.
        if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(DatapathError::Thread(std::io::Error::last_os_error()));
        }
        Ok(Self { epoll })
    }

    /// Until the kernel wakes us or `timeout` passes (an interrupted wait just returns).
    fn wait(&self, timeout: Duration) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: one event buffer of length 1, valid for the call.
        unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                &mut ev,
                1,
                timeout.as_millis() as i32,
            )
        };
    }
}
