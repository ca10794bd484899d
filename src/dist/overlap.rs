//! The gradient all-reduce overlapped with backward, as DDP does it
//! (`csrc/dist_overlap.cpp`): the parameters go into buckets in reverse
//! order (the order backward reaches them), a hook on each parameter's
//! gradient accumulator starts its bucket's all-reduce as soon as the last
//! of the bucket's gradients is accumulated, and [`Overlap::finish`], after
//! backward, launches what is left, waits and divides by the world size:
//! the same sums and the same division as [`Group::average`]. After the
//! first step the buckets are rebuilt in the order backward produced the
//! gradients, rank 0's order for every rank (DDP's `rebuild_buckets`).

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void, CString};
use std::sync::Arc;

use tch::{Device, Tensor};

use super::Group;
use crate::base::error::{Error, Result};
use crate::base::shim;

/// The first bucket's cap, as DDP's (`_DEFAULT_FIRST_BUCKET_BYTES`): small,
/// so that the first all-reduce starts early in backward.
pub const FIRST_BUCKET_BYTES: usize = 1 << 20;

/// The other buckets' cap, as DDP's `bucket_cap_mb = 25`.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Hooks on a set of parameters that average their gradients over a group
/// while backward runs (removed when dropped).
pub struct Overlap {
    ptr: *mut c_void,
    group: Arc<Group>,
    /// Each parameter's gradient as sent, in bytes (float32).
    sizes: Vec<usize>,
    /// The first bucket's cap and the others', in bytes.
    caps: (usize, usize),
    /// The parameters' device, where the agreed order is broadcast.
    device: Device,
    /// The buckets in launch order, each a list of indices into the
    /// parameters given.
    buckets: RefCell<Vec<Vec<usize>>>,
    /// Whether the buckets follow the first step's gradient order yet.
    rebuilt: Cell<bool>,
    /// Buckets launched during backward, and in all, over the steps so far.
    launched: Cell<(u64, u64)>,
}

// SAFETY: used from the training loop's thread; the hooks it registers run
// on autograd's threads and lock the shim's state.
unsafe impl Send for Overlap {}

impl Overlap {
    /// Hooks `params` (`(name, tensor)`, leaves that require a gradient, in
    /// the order the model defines them): buckets are filled from the last
    /// parameter backwards, the first up to [`FIRST_BUCKET_BYTES`], the
    /// others up to [`BUCKET_BYTES`], and refilled after the first step in
    /// the order its gradients came.
    pub fn new(group: Arc<Group>, params: &[(String, Tensor)]) -> Result<Overlap> {
        Overlap::with_caps(group, params, FIRST_BUCKET_BYTES, BUCKET_BYTES)
    }

    /// As [`Overlap::new`], with the first bucket capped at `first` bytes
    /// and the others at `rest`.
    pub fn with_caps(
        group: Arc<Group>,
        params: &[(String, Tensor)],
        first: usize,
        rest: usize,
    ) -> Result<Overlap> {
        let sizes: Vec<usize> = params.iter().map(|(_, t)| 4 * t.numel()).collect();
        let bucket_of = buckets(&sizes, first, rest);
        let device = params.first().map_or(Device::Cpu, |(_, t)| t.device());
        let names = params
            .iter()
            .map(|(n, _)| CString::new(n.as_str()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| Error::Internal("a parameter name holds a NUL byte".into()))?;
        let name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
        let tensors: Vec<*const c_void> = params.iter().map(|(_, t)| shim::ptr(t)).collect();
        let indices: Vec<i64> = bucket_of.iter().map(|&b| b as i64).collect();
        let mut ptr: *mut c_void = std::ptr::null_mut();
        // SAFETY: arrays of equal length, read during the call; the shim
        // keeps its own references to the tensors.
        let err = unsafe {
            shim::eqco_overlap_new(
                group.ptr,
                tensors.as_ptr(),
                name_ptrs.as_ptr(),
                indices.as_ptr(),
                params.len() as i64,
                &mut ptr,
            )
        };
        shim::check("hooking the gradient accumulators", err)?;
        Ok(Overlap {
            ptr,
            group,
            sizes,
            caps: (first, rest),
            device,
            buckets: RefCell::new(members(&bucket_of)),
            rebuilt: Cell::new(false),
            launched: Cell::new((0, 0)),
        })
    }

    /// The buckets, in launch order, as indices into the parameters given.
    pub fn buckets(&self) -> Vec<Vec<usize>> {
        self.buckets.borrow().clone()
    }

    /// Arms the hooks for the next backward pass.
    pub fn prepare(&self) -> Result<()> {
        // SAFETY: a live overlap.
        let err = unsafe { shim::eqco_overlap_prepare(self.ptr) };
        shim::check("arming the gradient hooks", err).map_err(|e| self.group.failed(e))
    }

    /// After backward: the buckets not yet launched (a parameter without a
    /// gradient this step) launched with the gradients that exist, every
    /// all-reduce waited for, each gradient set to its sum ÷ world size.
    /// The wait counts as time in collectives (timed in the shim, as every
    /// collective is).
    pub fn finish(&self) -> Result<()> {
        let mut early = 0i64;
        // SAFETY: a live overlap; a count comes back.
        let err = unsafe { shim::eqco_overlap_finish(self.ptr, &mut early) };
        shim::check("averaging the gradients", err).map_err(|e| self.group.failed(e))?;
        let (e, all) = self.launched.get();
        let count = self.buckets.borrow().len() as u64;
        self.launched.set((e + early as u64, all + count));
        if !self.rebuilt.get() {
            self.rebuild()?;
        }
        Ok(())
    }

    /// The buckets refilled in the order backward produced the gradients in
    /// the step just finished (DDP's rebuilt buckets): rank 0's order,
    /// broadcast so that every rank launches the same buckets, with the
    /// parameters that had no gradient after the others, last first.
    fn rebuild(&self) -> Result<()> {
        let n = self.sizes.len();
        let mut seen = vec![0i64; n];
        let mut count = 0i64;
        // SAFETY: a live overlap between steps; `seen` holds `n` slots.
        let err = unsafe {
            shim::eqco_overlap_ready_order(self.ptr, seen.as_mut_ptr(), n as i64, &mut count)
        };
        shim::check("reading the gradients' order", err)?;
        seen.truncate(count as usize);
        let mine = launch_order(&seen, n);
        let agreed = Tensor::from_slice(&mine).to_device(self.device);
        self.group.broadcast(&agreed, 0)?;
        let order: Vec<i64> = Vec::try_from(agreed.to_device(Device::Cpu))?;
        let order = as_permutation(&order, n).ok_or_else(|| {
            Error::Dist(format!(
                "rank {}: rank 0's gradient order does not match this rank's {n} parameters",
                self.group.rank
            ))
        })?;
        let bucket_of = fill(&order, &self.sizes, self.caps.0, self.caps.1);
        let indices: Vec<i64> = bucket_of.iter().map(|&b| b as i64).collect();
        // SAFETY: a live overlap between steps; one bucket per parameter.
        let err = unsafe { shim::eqco_overlap_rebuild(self.ptr, indices.as_ptr()) };
        shim::check("rebuilding the gradient buckets", err)?;
        self.buckets.replace(members(&bucket_of));
        self.rebuilt.set(true);
        Ok(())
    }

    /// The share of buckets whose all-reduce began during backward, over
    /// the steps so far (a parameter without a gradient holds its bucket,
    /// and every later one, until backward ends); `None` before a step.
    pub fn overlapped_share(&self) -> Option<f64> {
        let (early, all) = self.launched.get();
        (all > 0).then(|| early as f64 / all as f64)
    }
}

impl Drop for Overlap {
    fn drop(&mut self) {
        // SAFETY: made by `new`, freed once; the group outlives it (held here).
        unsafe { shim::eqco_overlap_free(self.ptr) }
    }
}

/// The bucket of each of `sizes` (bytes, in model order): filled from the
/// last backwards, a bucket closed when the next would pass its cap
/// (`first` for bucket 0, `rest` after); every bucket holds at least one.
pub fn buckets(sizes: &[usize], first: usize, rest: usize) -> Vec<usize> {
    let backwards: Vec<usize> = (0..sizes.len()).rev().collect();
    fill(&backwards, sizes, first, rest)
}

/// The bucket of each of `sizes` (bytes, in model order) when the
/// parameters are taken in `order` (a permutation of their indices), as
/// [`buckets`] takes them last first.
pub fn fill(order: &[usize], sizes: &[usize], first: usize, rest: usize) -> Vec<usize> {
    let mut out = vec![0; sizes.len()];
    let (mut bucket, mut bytes, mut empty) = (0, 0, true);
    for &i in order {
        let cap = if bucket == 0 { first } else { rest };
        if !empty && bytes + sizes[i] > cap {
            bucket += 1;
            bytes = 0;
        }
        out[i] = bucket;
        bytes += sizes[i];
        empty = false;
    }
    out
}

/// The launch order from the gradients `seen` in a step (indices in the
/// order they came): those, then the `n` parameters' others, last first.
fn launch_order(seen: &[i64], n: usize) -> Vec<i64> {
    let mut order = seen.to_vec();
    order.extend((0..n as i64).rev().filter(|i| !seen.contains(i)));
    order
}

/// `order` as indices when it holds each of 0..n once.
fn as_permutation(order: &[i64], n: usize) -> Option<Vec<usize>> {
    let mut hit = vec![false; n];
    for &i in order {
        let slot = hit.get_mut(usize::try_from(i).ok()?)?;
        if std::mem::replace(slot, true) {
            return None;
        }
    }
    (order.len() == n).then(|| order.iter().map(|&i| i as usize).collect())
}

/// Each bucket's parameters from the bucket of each parameter.
fn members(bucket_of: &[usize]) -> Vec<Vec<usize>> {
    let mut grouped = vec![Vec::new(); bucket_of.iter().max().map_or(0, |m| m + 1)];
    for (i, &b) in bucket_of.iter().enumerate() {
        grouped[b].push(i);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::{Backend, Env, Timeouts};
    use std::time::Duration;
    use tch::{nn, Device, Kind};

    /// A Gloo group of one process on loopback.
    fn group_of_one() -> Arc<Group> {
        let env = Env::alone().unwrap();
        let t = Timeouts {
            join: Duration::from_secs(20),
            collective: Duration::from_secs(20),
        };
        Arc::new(Group::join(&env, Backend::Gloo, t, Device::Cpu).unwrap())
    }

    #[test]
    fn hooks_send_each_bucket_once_its_gradients_are_in_and_keep_undefined_ones() {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        // Model order: `unused` never gets a gradient, `stale` keeps a
        // zeroed one from an earlier step; `a` and `b` (used twice) get theirs.
        let unused = root.var("unused", &[3], nn::Init::Const(1.0));
        let stale = root.var("stale", &[2], nn::Init::Const(1.0));
        let a = root.var("a", &[4], nn::Init::Const(2.0));
        let b = root.var("b", &[5], nn::Init::Const(3.0));
        stale.sum(Kind::Float).backward();
        let _ = stale.grad().zero_();
        let params: Vec<(String, Tensor)> =
            [("unused", &unused), ("stale", &stale), ("a", &a), ("b", &b)]
                .iter()
                .map(|(n, t)| (n.to_string(), t.shallow_clone()))
                .collect();
        // One bucket each: b, a, stale, unused, in that order.
        let o = Overlap::with_caps(group_of_one(), &params, 4, 4).unwrap();
        assert_eq!(o.buckets(), [vec![3], vec![2], vec![1], vec![0]]);
        assert_eq!(o.overlapped_share(), None);
        // Hooks do nothing until armed.
        (&a * 1.0).sum(Kind::Float).backward();
        let _ = a.grad().zero_();
        for step in 1..=2 {
            o.prepare().unwrap();
            let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
            let y = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 1.0, 1.0]);
            let loss = (&a * &x).sum(Kind::Float)
                + (&b * &y).sum(Kind::Float)
                + (&b * &b).sum(Kind::Float);
            loss.backward();
            o.finish().unwrap();
            // A world of one: the sums are the gradients themselves.
            let want_b = (&y + &b * 2.0) * step as f64;
            assert!(a.grad().equal(&(&x * step as f64)), "step {step}");
            assert!(b.grad().equal(&want_b), "step {step}");
            assert!(!unused.grad().defined(), "no gradient stays none");
            assert_eq!(Vec::<f32>::try_from(stale.grad()).unwrap(), [0.0, 0.0]);
        }
        // b's hook fired once although b is used twice; b's and a's buckets
        // began during backward, the other two after.
        assert_eq!(o.overlapped_share(), Some(0.5));
    }

    #[test]
    fn buckets_follow_the_first_steps_gradient_order_after_it() {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        // Model order: `unused`, `a`, `b`; backward reaches `a` before `b`
        // (`a` multiplies the last result of the forward pass).
        let unused = root.var("unused", &[4], nn::Init::Const(1.0));
        let a = root.var("a", &[4], nn::Init::Const(2.0));
        let b = root.var("b", &[4], nn::Init::Const(3.0));
        let params: Vec<(String, Tensor)> = [("unused", &unused), ("a", &a), ("b", &b)]
            .iter()
            .map(|(n, t)| (n.to_string(), t.shallow_clone()))
            .collect();
        // One parameter (16 bytes) per bucket, last first: b, a, unused.
        let o = Overlap::with_caps(group_of_one(), &params, 16, 16).unwrap();
        assert_eq!(o.buckets(), [vec![2], vec![1], vec![0]]);
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
        for step in 1..=2 {
            o.prepare().unwrap();
            let inner = (&b * &x).sum(Kind::Float);
            (&a * inner).sum(Kind::Float).backward();
            o.finish().unwrap();
            // a's gradient came first, then b's; `unused` had none.
            assert_eq!(o.buckets(), [vec![1], vec![2], vec![0]], "step {step}");
            let want_a = Tensor::full([4], 30.0 * step as f64, (Kind::Float, Device::Cpu));
            assert!(a.grad().equal(&want_a), "step {step}");
            assert!(b.grad().equal(&(&x * 8.0 * step as f64)), "step {step}");
        }
    }

    #[test]
    fn the_launch_order_puts_the_parameters_without_a_gradient_last() {
        assert_eq!(launch_order(&[2, 0], 4), vec![2, 0, 3, 1]);
        assert_eq!(launch_order(&[], 2), vec![1, 0]);
        assert_eq!(as_permutation(&[2, 0, 1], 3), Some(vec![2, 0, 1]));
        assert_eq!(as_permutation(&[2, 0, 0], 3), None);
        assert_eq!(as_permutation(&[2, 0], 3), None);
        assert_eq!(as_permutation(&[3, 0, 1], 3), None);
        assert_eq!(as_permutation(&[-1, 0, 1], 3), None);
        // Two 8-byte parameters fit the first bucket in the given order.
        assert_eq!(fill(&[1, 2, 0], &[8, 8, 8], 16, 16), vec![1, 0, 0]);
    }

    #[test]
    fn buckets_fill_from_the_last_parameter_with_a_small_first_one() {
        // Model order; the last two fit the first bucket's 10 bytes.
        let b = buckets(&[30, 8, 12, 40, 4, 6], 10, 50);
        assert_eq!(b, vec![2, 2, 2, 1, 0, 0]);
        assert_eq!(
            buckets(&[30, 8, 13, 40, 4, 6], 10, 50),
            vec![3, 2, 2, 1, 0, 0]
        );
        // A parameter larger than a cap has a bucket of its own.
        assert_eq!(buckets(&[100, 100], 10, 50), vec![1, 0]);
        assert!(buckets(&[], 10, 50).is_empty());
    }
}
