//! A fixed pool of staging buffers that loader workers write batches into
//! and the consumer copies out of: page-locked for a GPU, so that the copy
//! is queued without blocking, and bounded, so that pinned memory does not
//! grow with the number of cores.
//!
//! Each worker owns its slots, so a worker can always make progress on the
//! batch the consumer waits for. A slot goes back to its worker when the
//! [`Lease`] on it is dropped; for a GPU the lease carries the event of the
//! copy out of it, and the worker waits for that event (on its own thread)
//! before it writes the slot again. Free slots are queued in the order they
//! came back, and a worker takes the first whose copy has finished (else
//! the oldest): the slot handed back last is the one whose copy is least
//! likely to be done.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::base::device::memory::{pinned_empty, Event};
use crate::base::error::{Error, Result};

/// The cap of page-locked memory for batches: `pinned_memory_mib` holds for
/// the whole machine, and each of its `local_processes` workers (one per
/// GPU: `LOCAL_WORLD_SIZE`) gets an equal share, so that 8 workers of a node
/// lock no more memory than one would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedCap {
    /// The cap for the machine, in bytes.
    pub node_bytes: usize,
    /// Processes of this machine that share it (at least 1).
    pub local_processes: usize,
}

impl PinnedCap {
    /// `node_mib` MiB for the machine, shared by `local_processes` workers.
    pub fn new(node_mib: usize, local_processes: usize) -> PinnedCap {
        PinnedCap {
            node_bytes: node_mib << 20,
            local_processes: local_processes.max(1),
        }
    }

    /// This process's share, in bytes.
    pub fn process_bytes(&self) -> usize {
        self.node_bytes / self.local_processes.max(1)
    }
}

impl std::fmt::Display for PinnedCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        if self.local_processes > 1 {
            write!(
                f,
                "{:.1} MiB per process ({:.0} MiB for the machine ÷ {} local processes)",
                mib(self.process_bytes()),
                mib(self.node_bytes),
                self.local_processes
            )
        } else {
            write!(f, "{:.0} MiB", mib(self.node_bytes))
        }
    }
}

/// How a pool is laid out under its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPlan {
    /// Workers that get slots (at most the loader's threads).
    pub workers: usize,
    /// Slots per worker: up to the prefetch depth plus the one being written
    /// and the one being copied out.
    pub slots_per_worker: usize,
    /// Bytes per slot (one whole batch).
    pub slot_bytes: usize,
}

impl PoolPlan {
    /// The largest pool within this process's share of `cap` for `threads`
    /// workers with `prefetch` batches ahead each, slots of `slot_bytes`:
    /// fewer slots per worker first, then fewer workers; an error naming
    /// `pinned_memory_mib` when not even one batch fits.
    pub fn new(
        threads: usize,
        prefetch: usize,
        slot_bytes: usize,
        cap: PinnedCap,
    ) -> Result<PoolPlan> {
        let slot_bytes = slot_bytes.max(1);
        let cap_bytes = cap.process_bytes();
        if slot_bytes > cap_bytes {
            return Err(Error::config(
                "pinned_memory_mib",
                format!(
                    "{cap} cannot hold one batch of {:.1} MiB; raise it or lower batch_size",
                    slot_bytes as f64 / (1 << 20) as f64
                ),
            ));
        }
        let fit = cap_bytes / slot_bytes;
        let threads = threads.max(1);
        let workers = threads.min(fit);
        let slots_per_worker = (prefetch + 2).min(fit / workers).max(1);
        Ok(PoolPlan {
            workers,
            slots_per_worker,
            slot_bytes,
        })
    }

    /// Bytes of the whole pool.
    pub fn total_bytes(&self) -> usize {
        self.workers * self.slots_per_worker * self.slot_bytes
    }
}

impl std::fmt::Display for PoolPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "{} worker(s) × {} batch(es) × {:.1} MiB = {:.1} MiB",
            self.workers,
            self.slots_per_worker,
            mib(self.slot_bytes),
            mib(self.total_bytes())
        )
    }
}

/// A slot: a float32 buffer of one batch, and the event of the last copy
/// out of it (GPU only).
struct Slot {
    buffer: Tensor,
    copied: Option<Event>,
}

impl Slot {
    /// Whether the copy out of it has finished (or there was none). An
    /// event that cannot be asked counts as finished: waiting on it then
    /// reports the error.
    fn ready(&self) -> bool {
        self.copied
            .as_ref()
            .is_none_or(|e| e.query().unwrap_or(true))
    }
}

/// One worker's free slots, in the order they came back.
struct SlotQueue {
    free: Mutex<VecDeque<Slot>>,
    returned: Condvar,
}

impl SlotQueue {
    fn put(&self, slot: Slot) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(slot);
        self.returned.notify_one();
    }
}

/// The slot to write next: the first (oldest returned) whose copy has
/// finished, else the oldest.
fn pick(free: &mut VecDeque<Slot>) -> Option<Slot> {
    let at = free.iter().position(Slot::ready).unwrap_or(0);
    free.remove(at)
}

/// The pool: each worker's slots.
pub struct StagingPool {
    plan: PoolPlan,
    slot_len: usize,
    queues: Vec<Arc<SlotQueue>>,
}

impl StagingPool {
    /// The slots of `plan` for batches of `slot_len` floats: page-locked for
    /// a GPU `device`, plain host memory otherwise.
    pub fn new(plan: PoolPlan, slot_len: usize, device: Device) -> Result<StagingPool> {
        let mut queues = Vec::with_capacity(plan.workers);
        for _ in 0..plan.workers {
            let mut free = VecDeque::with_capacity(plan.slots_per_worker);
            for _ in 0..plan.slots_per_worker {
                let buffer = if device.is_cuda() {
                    pinned_empty(slot_len, Kind::Float)?
                } else {
                    Tensor::empty([slot_len as i64], (Kind::Float, Device::Cpu))
                };
                free.push_back(Slot {
                    buffer,
                    copied: None,
                });
            }
            queues.push(Arc::new(SlotQueue {
                free: Mutex::new(free),
                returned: Condvar::new(),
            }));
        }
        Ok(StagingPool {
            plan,
            slot_len,
            queues,
        })
    }

    /// The layout.
    pub fn plan(&self) -> PoolPlan {
        self.plan
    }

    /// Floats per slot.
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// Bytes held by the pool's buffers.
    pub fn bytes(&self) -> usize {
        self.queues.len() * self.plan.slots_per_worker * self.slot_len * 4
    }

    /// A free slot of `worker` ([`pick`]), once the copy out of it has
    /// finished; waits while all of them are in use, and gives `None` once
    /// `stop` is set.
    pub fn take(&self, worker: usize, stop: &AtomicBool) -> Result<Option<Lease>> {
        let home = &self.queues[worker];
        let mut free = home.free.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if let Some(mut slot) = pick(&mut free) {
                drop(free);
                if let Some(copied) = slot.copied.take() {
                    copied.synchronize()?;
                }
                return Ok(Some(Lease {
                    slot: Some(slot),
                    home: home.clone(),
                }));
            }
            free = home
                .returned
                .wait_timeout(free, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A slot in use; dropping it gives the slot back to its worker.
pub struct Lease {
    slot: Option<Slot>,
    home: Arc<SlotQueue>,
}

impl Lease {
    /// The slot's buffer (1-D float32).
    pub fn buffer(&self) -> &Tensor {
        &self
            .slot
            .as_ref()
            .expect("a lease holds its slot until dropped")
            .buffer
    }

    /// Gives the slot back; its next writer first waits for `copied`.
    pub fn release_after(mut self, copied: Event) {
        if let Some(slot) = self.slot.as_mut() {
            slot.copied = Some(copied);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.home.put(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// A cap of `bytes` for a process alone on its machine.
    fn alone(bytes: usize) -> PinnedCap {
        PinnedCap {
            node_bytes: bytes,
            local_processes: 1,
        }
    }

    #[test]
    fn the_plan_fits_under_the_cap() {
        // Room for everything: prefetch + 2 slots per worker.
        let p = PoolPlan::new(4, 2, MIB, alone(64 * MIB)).unwrap();
        assert_eq!((p.workers, p.slots_per_worker), (4, 4));
        // Tighter: fewer slots per worker first.
        let p = PoolPlan::new(4, 2, MIB, alone(9 * MIB)).unwrap();
        assert_eq!((p.workers, p.slots_per_worker), (4, 2));
        assert!(p.total_bytes() <= 9 * MIB);
        // Tighter still: fewer workers, one slot each.
        let p = PoolPlan::new(16, 2, 147 * MIB, alone(1024 * MIB)).unwrap();
        assert_eq!((p.workers, p.slots_per_worker), (6, 1));
        assert!(p.total_bytes() <= 1024 * MIB);
        for threads in 1..40 {
            for cap in [1, 3, 7, 50, 4096] {
                let p = PoolPlan::new(threads, 2, 3 * MIB, alone(cap * MIB + MIB / 2));
                match p {
                    Ok(p) => {
                        assert!(p.total_bytes() <= cap * MIB + MIB / 2, "{threads} {cap}");
                        assert!(p.workers >= 1 && p.workers <= threads && p.slots_per_worker >= 1);
                    }
                    Err(e) => {
                        assert!(cap < 3, "{threads} {cap}");
                        assert!(e.to_string().contains("`pinned_memory_mib`"), "{e}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_cap_holds_for_the_machine_and_is_shared_by_its_processes() {
        // The default 4096 MiB on a node of 8 GPU workers: 512 MiB each, so
        // the node locks 4096 MiB in all, not 8 × 4096.
        let node = PinnedCap::new(4096, 8);
        assert_eq!(node.process_bytes(), 512 * MIB);
        let slot = 147 * MIB;
        let shared = PoolPlan::new(16, 2, slot, node).unwrap();
        assert!(8 * shared.total_bytes() <= 4096 * MIB, "{shared}");
        assert_eq!((shared.workers, shared.slots_per_worker), (3, 1));
        let single = PoolPlan::new(16, 2, slot, PinnedCap::new(4096, 1)).unwrap();
        assert_eq!((single.workers, single.slots_per_worker), (16, 1));
        // Zero local processes (never from the launcher) count as one.
        assert_eq!(PinnedCap::new(64, 0).process_bytes(), 64 * MIB);
        // A share too small for one batch: the error says how it was divided.
        let e = PoolPlan::new(2, 2, 300 * MIB, PinnedCap::new(2048, 8)).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("`pinned_memory_mib`")
                && m.contains("256.0 MiB per process")
                && m.contains("÷ 8 local processes"),
            "{m}"
        );
        assert!(PoolPlan::new(2, 2, 300 * MIB, PinnedCap::new(2048, 1)).is_ok());
    }

    #[test]
    fn slots_are_written_again_in_the_order_they_came_back() {
        let plan = PoolPlan::new(1, 1, 4 * 10, alone(4 * 10 * 3)).unwrap();
        assert_eq!((plan.workers, plan.slots_per_worker), (1, 3));
        let pool = StagingPool::new(plan, 10, Device::Cpu).unwrap();
        let stop = AtomicBool::new(false);
        let take = || pool.take(0, &stop).unwrap().unwrap();
        let at = |l: &Lease| l.buffer().data_ptr() as usize;
        let (a, b, c) = (take(), take(), take());
        let (pa, pb, pc) = (at(&a), at(&b), at(&c));
        assert!(pa != pb && pb != pc && pa != pc);
        // Handed back b, c, a: written again b, c, a (first in, first out),
        // not a first (the one handed back last, whose copy on a GPU is the
        // least likely to be done).
        drop(b);
        drop(c);
        drop(a);
        let again: Vec<Lease> = (0..3).map(|_| take()).collect();
        assert_eq!(again.iter().map(at).collect::<Vec<_>>(), vec![pb, pc, pa]);
        // One back at a time: the queue keeps its order across takes.
        let mut again = again.into_iter();
        let (x, y, z) = (
            again.next().unwrap(),
            again.next().unwrap(),
            again.next().unwrap(),
        );
        drop(z);
        drop(x);
        assert_eq!(at(&take()), pa);
        drop(y);
        assert_eq!(at(&take()), pb);
    }

    #[test]
    fn the_pool_holds_what_the_plan_says_and_slots_come_back() {
        let plan = PoolPlan::new(2, 1, 4 * 100, alone(4 * 100 * 4)).unwrap();
        assert_eq!((plan.workers, plan.slots_per_worker), (2, 2));
        let pool = StagingPool::new(plan, 100, Device::Cpu).unwrap();
        assert_eq!(pool.bytes(), plan.total_bytes());
        let stop = AtomicBool::new(false);
        let a = pool.take(0, &stop).unwrap().unwrap();
        let b = pool.take(0, &stop).unwrap().unwrap();
        assert_eq!(a.buffer().size(), vec![100]);
        // Worker 0's two slots are out: a third take waits until one is back.
        let pool = Arc::new(pool);
        let stop = Arc::new(stop);
        let waiter = {
            let (pool, stop) = (pool.clone(), stop.clone());
            std::thread::spawn(move || pool.take(0, &stop).unwrap().is_some())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "no free slot: it waits");
        drop(a);
        assert!(waiter.join().unwrap(), "the returned slot is taken");
        // Worker 1's slots are its own.
        assert!(pool.take(1, &stop).unwrap().is_some());
        // A stop ends a wait.
        let _keep = b;
        let _c = pool.take(0, &stop).unwrap();
        let waiter = {
            let (pool, stop) = (pool.clone(), stop.clone());
            std::thread::spawn(move || pool.take(0, &stop).unwrap().is_none())
        };
        stop.store(true, Ordering::Relaxed);
        assert!(waiter.join().unwrap());
    }
}
