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

use crate::base::device::memory::{pinned_empty, release_cached_pinned, Event};
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

/// The largest power of two not above `bytes` (0 for 0): the largest block
/// the CUDA caching host allocator pins without rounding it past `bytes`
/// (it rounds every request up to a power of two and keeps that much).
pub fn pow2_floor(bytes: usize) -> usize {
    match bytes {
        0 => 0,
        b => 1 << (usize::BITS - 1 - b.leading_zeros()),
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
    /// The largest pool for a process alone with its share of `cap`
    /// ([`PoolPlan::within`] with nothing held).
    pub fn new(
        threads: usize,
        prefetch: usize,
        slot_bytes: usize,
        cap: PinnedCap,
    ) -> Result<PoolPlan> {
        Self::within(threads, prefetch, slot_bytes, cap, 0)
    }

    /// The largest pool for `threads` workers with `prefetch` batches ahead
    /// each, slots of `slot_bytes`, whose one block, rounded up to a power
    /// of two, fits in this process's share of `cap` beside the `held`
    /// bytes its other pinned memory takes: fewer slots per worker first,
    /// then fewer workers; an error naming `pinned_memory_mib` when not
    /// even one batch fits.
    pub fn within(
        threads: usize,
        prefetch: usize,
        slot_bytes: usize,
        cap: PinnedCap,
        held: usize,
    ) -> Result<PoolPlan> {
        let slot_bytes = slot_bytes.max(1);
        let block = pow2_floor(cap.process_bytes().saturating_sub(held));
        if slot_bytes > block {
            return Err(too_small(cap, held, block, slot_bytes));
        }
        let fit = block / slot_bytes;
        let workers = threads.max(1).min(fit);
        let slots_per_worker = (prefetch + 2).min(fit / workers).max(1);
        Ok(PoolPlan {
            workers,
            slots_per_worker,
            slot_bytes,
        })
    }

    /// The pool `threads` workers with `prefetch` batches ahead each would
    /// have with no cap: for pageable memory, which the cap does not bound.
    pub fn unbounded(threads: usize, prefetch: usize, slot_bytes: usize) -> PoolPlan {
        PoolPlan {
            workers: threads.max(1),
            slots_per_worker: prefetch + 2,
            slot_bytes: slot_bytes.max(1),
        }
    }

    /// Bytes of the whole pool.
    pub fn total_bytes(&self) -> usize {
        self.workers * self.slots_per_worker * self.slot_bytes
    }

    /// Bytes its block takes once page-locked: the total rounded up to a
    /// power of two, as the caching host allocator does.
    pub fn pinned_bytes(&self) -> usize {
        self.total_bytes().next_power_of_two()
    }
}

/// The error for a share of `cap` (less `held`, rounded down to the
/// `block` a power of two allows) that cannot hold one batch of `slot_bytes`.
fn too_small(cap: PinnedCap, held: usize, block: usize, slot_bytes: usize) -> Error {
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let held = match held {
        0 => String::new(),
        h => format!(", less {:.1} MiB this process has pinned already", mib(h)),
    };
    Error::config(
        "pinned_memory_mib",
        format!(
            "{cap}{held} cannot hold one batch of {:.1} MiB: pinned blocks come in powers of two, \
             so the largest is {:.1} MiB; raise it or lower batch_size",
            mib(slot_bytes),
            mib(block)
        ),
    )
}

impl std::fmt::Display for PoolPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "{} worker(s) × {} batch(es) × {:.1} MiB = {:.1} MiB in one block of {:.1} MiB",
            self.workers,
            self.slots_per_worker,
            mib(self.slot_bytes),
            mib(self.total_bytes()),
            mib(self.pinned_bytes())
        )
    }
}

/// The one allocation a pool's slots are slices of: page-locked for a GPU.
/// When the last slice is gone, a page-locked block goes back to the
/// driver, not to the caching allocator's free list, which would keep it
/// locked (and counted against the cap) for a request of its size.
struct Block {
    /// Behind a lock only so that slots on several threads may share the
    /// block: nothing reads it after the slots are cut.
    memory: Mutex<Option<Tensor>>,
    /// The GPU it was pinned for; `None` for plain memory.
    pinned_for: Option<Device>,
}

impl Block {
    /// `len` floats: page-locked for the GPU `pinned_for`, plain memory
    /// for none.
    fn new(len: usize, pinned_for: Option<Device>) -> Result<Block> {
        let memory = match pinned_for {
            Some(_) => pinned_empty(len, Kind::Float)?,
            None => Tensor::empty([len as i64], (Kind::Float, Device::Cpu)),
        };
        Ok(Block {
            memory: Mutex::new(Some(memory)),
            pinned_for,
        })
    }

    /// Floats `[at, at + len)` (a view: the same memory).
    fn slice(&self, at: usize, len: usize) -> Tensor {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .expect("a block holds its memory until dropped")
            .narrow(0, at as i64, len as i64)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        drop(
            self.memory
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        if let Some(device) = self.pinned_for {
            // Best effort: a block left cached is reused or released when
            // the next pool is planned.
            let _ = release_cached_pinned(device);
        }
    }
}

/// A slot: a float32 buffer of one batch, and the event of the last copy
/// out of it (GPU only).
struct Slot {
    buffer: Tensor,
    copied: Option<Event>,
    /// Keeps the block alive (declared after `buffer`, so dropped after it).
    _block: Arc<Block>,
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
    /// The slots of `plan` for batches of `slot_len` floats, slices of one
    /// block: page-locked for the GPU `pinned_for`, plain host memory for
    /// none.
    pub fn new(plan: PoolPlan, slot_len: usize, pinned_for: Option<Device>) -> Result<StagingPool> {
        let block = Arc::new(Block::new(
            plan.workers * plan.slots_per_worker * slot_len,
            pinned_for,
        )?);
        let queues = (0..plan.workers)
            .map(|w| {
                let free = (0..plan.slots_per_worker)
                    .map(|i| Slot {
                        buffer: block.slice((w * plan.slots_per_worker + i) * slot_len, slot_len),
                        copied: None,
                        _block: block.clone(),
                    })
                    .collect();
                Arc::new(SlotQueue {
                    free: Mutex::new(free),
                    returned: Condvar::new(),
                })
            })
            .collect();
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
        assert!(p.pinned_bytes() <= 9 * MIB);
        // Tighter still: fewer workers, one slot each.
        let p = PoolPlan::new(16, 2, 147 * MIB, alone(1024 * MIB)).unwrap();
        assert_eq!((p.workers, p.slots_per_worker), (6, 1));
        assert!(p.total_bytes() <= 1024 * MIB);
        for threads in 1..40 {
            for cap in [1, 3, 7, 50, 4096] {
                let p = PoolPlan::new(threads, 2, 3 * MIB, alone(cap * MIB + MIB / 2));
                match p {
                    Ok(p) => {
                        assert!(p.pinned_bytes() <= cap * MIB + MIB / 2, "{threads} {cap}");
                        assert!(p.workers >= 1 && p.workers <= threads && p.slots_per_worker >= 1);
                    }
                    Err(e) => {
                        // 3.5 MiB rounds down to a 2 MiB block: no 3 MiB slot.
                        assert!(cap < 4, "{threads} {cap}");
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
        let plan = PoolPlan::new(1, 1, 4 * 10, alone(4 * 10 * 4)).unwrap();
        assert_eq!((plan.workers, plan.slots_per_worker), (1, 3));
        let pool = StagingPool::new(plan, 10, None).unwrap();
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
        let plan = PoolPlan::new(2, 1, 4 * 100, alone(2048)).unwrap();
        assert_eq!((plan.workers, plan.slots_per_worker), (2, 2));
        let pool = StagingPool::new(plan, 100, None).unwrap();
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

    #[test]
    fn the_block_is_planned_at_its_rounded_size() {
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 1023, 1024, 1025].map(pow2_floor),
            [0, 1, 2, 2, 4, 4, 512, 1024, 1024]
        );
        // A 38.5 MiB batch under a 200 MiB cap: 200 MiB would hold 5, but a
        // block of 5 (192.5 MiB) is pinned as 256 MiB. Planned in the
        // 128 MiB block that 200 MiB allows: 3 slots, pinned as 128 MiB.
        let slot = 77 * MIB / 2;
        let p = PoolPlan::new(8, 2, slot, alone(200 * MIB)).unwrap();
        assert_eq!((p.workers, p.slots_per_worker), (3, 1));
        assert_eq!(p.pinned_bytes(), 128 * MIB);
        // Every plan's rounded block fits its cap.
        for cap in (1..300).map(|m| m * MIB / 3) {
            for slot in [MIB / 7, MIB, 5 * MIB, 77 * MIB / 2] {
                if let Ok(p) = PoolPlan::new(6, 2, slot, alone(cap)) {
                    assert!(p.pinned_bytes() <= cap, "{p} under {cap}");
                }
            }
        }
        // What the process holds already comes off its share: the monitor's
        // pool beside the trainer's 128 MiB block.
        let p = PoolPlan::within(8, 2, slot, alone(200 * MIB), 128 * MIB).unwrap();
        assert_eq!(
            (p.workers, p.slots_per_worker, p.pinned_bytes()),
            (1, 1, 64 * MIB)
        );
        let e = PoolPlan::within(8, 2, slot, alone(200 * MIB), 150 * MIB).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("`pinned_memory_mib`")
                && m.contains("less 150.0 MiB this process has pinned already")
                && m.contains("the largest is 32.0 MiB"),
            "{m}"
        );
    }

    #[test]
    fn the_slots_are_disjoint_slices_of_one_block() {
        let plan = PoolPlan::new(3, 1, 4 * 100, alone(4096)).unwrap();
        assert_eq!((plan.workers, plan.slots_per_worker), (3, 3));
        let pool = StagingPool::new(plan, 100, None).unwrap();
        let stop = AtomicBool::new(false);
        let leases: Vec<Lease> = (0..3)
            .flat_map(|w| (0..3).map(move |_| w))
            .map(|w| pool.take(w, &stop).unwrap().unwrap())
            .collect();
        let mut starts: Vec<usize> = leases
            .iter()
            .map(|l| l.buffer().data_ptr() as usize)
            .collect();
        starts.sort_unstable();
        // Nine slots of 400 bytes, back to back in one allocation.
        let first = starts[0];
        assert_eq!(starts, (0..9).map(|i| first + 400 * i).collect::<Vec<_>>());
        // Each slot writes only its own floats.
        for (i, l) in leases.iter().enumerate() {
            let _ = l.buffer().shallow_clone().fill_(i as f64);
        }
        for (i, l) in leases.iter().enumerate() {
            let b = l.buffer();
            assert_eq!(b.size(), vec![100]);
            assert!(b.eq(i as f64).all().int64_value(&[]) == 1, "slot {i}");
        }
    }
}
