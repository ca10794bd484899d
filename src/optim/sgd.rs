//! SGD with momentum and weight decay, as `torch.optim.SGD` (no dampening,
//! no Nesterov): `b ← μ·b + (g + λ·θ)`, `θ ← θ − lr·b`. Written here rather
//! than taken from libtorch so that its momentum buffers can be checkpointed
//! and a run resumed exactly. Each step updates every parameter in a few
//! multi-tensor (`_foreach_*`) calls through the shim in `csrc/optim.cpp`,
//! with the same arithmetic, operation by operation, as a loop over the
//! parameters.

use std::ffi::c_void;

use tch::nn::VarStore;
use tch::Tensor;

use crate::base::error::{Error, Result};
use crate::base::shim;

/// Checks SGD's hyperparameters; errors name `lr`, `momentum` or `weight_decay`.
pub fn validate(lr: f64, momentum: f64, weight_decay: f64) -> Result<()> {
    if !(lr.is_finite() && lr > 0.0) {
        return Err(Error::config("lr", format!("{lr} (must be > 0)")));
    }
    if !(0.0..1.0).contains(&momentum) {
        return Err(Error::config(
            "momentum",
            format!("{momentum} (must be in [0, 1))"),
        ));
    }
    if !(weight_decay.is_finite() && weight_decay >= 0.0) {
        return Err(Error::config(
            "weight_decay",
            format!("{weight_decay} (must be ≥ 0)"),
        ));
    }
    Ok(())
}

/// SGD over the trainable variables of a var store.
pub struct Sgd {
    params: Vec<(String, Tensor)>,
    buffers: Vec<Option<Tensor>>,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    /// SGD over every trainable variable of `vs`, in name order.
    pub fn new(vs: &VarStore, momentum: f64, weight_decay: f64) -> Sgd {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let buffers = params.iter().map(|_| None).collect();
        Sgd {
            params,
            buffers,
            momentum,
            weight_decay,
        }
    }

    /// The parameters, `(name, tensor)` in name order.
    pub fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// The parameters' gradients that exist (after a backward pass), in
    /// name order: what data parallelism averages over ranks.
    pub fn gradients(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .collect()
    }

    /// 1 (a scalar float tensor on the parameters' device) when a gradient
    /// holds a NaN or an infinity, else 0; nothing is read to the host.
    pub fn nonfinite_gradients(&self) -> Result<Tensor> {
        nonfinite(&self.gradients())
    }

    /// 1 when a parameter holds a NaN or an infinity (after an update that
    /// diverged), else 0, as [`Sgd::nonfinite_gradients`].
    pub fn nonfinite_parameters(&self) -> Result<Tensor> {
        let params: Vec<Tensor> = self.params.iter().map(|(_, p)| p.shallow_clone()).collect();
        nonfinite(&params)
    }

    /// Clears the parameters' gradients (in one multi-tensor call).
    pub fn zero_grad(&mut self) {
        let grads = self.gradients();
        if grads.is_empty() {
            return;
        }
        let ptrs: Vec<*const c_void> = grads.iter().map(shim::ptr).collect();
        // SAFETY: pointers to live tensors, read during the call only.
        let err = unsafe { shim::eqco_zero(ptrs.as_ptr(), ptrs.len() as i64) };
        shim::check("zeroing gradients", err).expect("zeroing gradients cannot fail");
    }

    /// One update with learning rate `lr` from the accumulated gradients;
    /// parameters without a gradient are left alone.
    pub fn step(&mut self, lr: f64) {
        // Parameters whose buffer exists (b ← μ·b + d), and those whose
        // first step this is (b ← d, in a new buffer of the parameter's layout).
        let (mut running, mut first) = (Group::default(), Group::default());
        for ((_, p), buf) in self.params.iter().zip(&mut self.buffers) {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let group = if buf.is_some() {
                &mut running
            } else {
                &mut first
            };
            let b = buf.get_or_insert_with(|| p.zeros_like());
            group.push(p, g, b);
        }
        for (group, is_first) in [(running, false), (first, true)] {
            group.step(lr, self.momentum, self.weight_decay, is_first);
        }
    }

    /// The momentum buffers, named `optim.<param>` (absent before the first step).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .filter_map(|((n, _), b)| {
                b.as_ref()
                    .map(|b| (format!("optim.{n}"), b.shallow_clone()))
            })
            .collect()
    }

    /// Restores the buffers from `optim.<param>` entries (in the
    /// parameter's memory format: checkpoints hold NCHW copies).
    pub fn load_state(&mut self, state: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for ((n, p), buf) in self.params.iter().zip(&mut self.buffers) {
            *buf = match state.get(&format!("optim.{n}")) {
                Some(b) if b.size() == p.size() => {
                    let mut own = p.zeros_like();
                    tch::no_grad(|| own.copy_(b));
                    Some(own)
                }
                Some(b) => {
                    return Err(Error::Mismatch(format!(
                        "`optim.{n}` is {:?}, the parameter {:?}",
                        b.size(),
                        p.size()
                    )))
                }
                None => None,
            };
        }
        Ok(())
    }
}

/// 1 (a scalar float tensor on their device) when any element of `tensors`
/// is a NaN or an infinity, else 0, from their L1 norms in one fused pass
/// that reads them and writes nothing (csrc/optim.cpp), with nothing read to
/// the host; 0 on the CPU for none.
pub fn nonfinite(tensors: &[Tensor]) -> Result<Tensor> {
    let ptrs: Vec<*const c_void> = tensors.iter().map(shim::ptr).collect();
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: pointers to live tensors, read during the call; a new tensor comes back.
    let err = unsafe { shim::eqco_nonfinite(ptrs.as_ptr(), ptrs.len() as i64, &mut out) };
    shim::check("checking for non-finite values", err)?;
    // SAFETY: a fresh tensor made by the shim.
    Ok(unsafe { shim::tensor_from(out) })
}

/// Parameters, gradients and buffers updated by one multi-tensor call.
#[derive(Default)]
struct Group {
    params: Vec<Tensor>,
    grads: Vec<Tensor>,
    buffers: Vec<Tensor>,
}

impl Group {
    fn push(&mut self, p: &Tensor, g: Tensor, b: &Tensor) {
        self.params.push(p.shallow_clone());
        self.grads.push(g);
        self.buffers.push(b.shallow_clone());
    }

    fn step(&self, lr: f64, momentum: f64, weight_decay: f64, first: bool) {
        if self.params.is_empty() {
            return;
        }
        let ptrs = |ts: &[Tensor]| ts.iter().map(shim::ptr).collect::<Vec<_>>();
        let (p, g, b) = (ptrs(&self.params), ptrs(&self.grads), ptrs(&self.buffers));
        // SAFETY: pointers to live tensors of equal counts, used during the call only.
        let err = unsafe {
            shim::eqco_sgd_step(
                p.as_ptr(),
                g.as_ptr(),
                b.as_ptr(),
                p.len() as i64,
                lr,
                momentum,
                weight_decay,
                first as i32,
            )
        };
        // The shapes were fixed when the optimizer was made; a failure here is a bug.
        shim::check("SGD step", err).expect("the multi-tensor SGD step failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    #[test]
    fn matches_the_torch_sgd_recurrence() {
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2], nn::Init::Const(1.0));
        let mut opt = Sgd::new(&vs, 0.9, 0.1);
        // Loss Σ w² has gradient 2w.
        let mut expect = [1.0f64, 1.0];
        let mut b = [0.0f64, 0.0];
        for step in 0..3 {
            opt.zero_grad();
            (&w * &w).sum(Kind::Float).backward();
            opt.step(0.5);
            for i in 0..2 {
                let d = 2.0 * expect[i] + 0.1 * expect[i];
                b[i] = if step == 0 { d } else { 0.9 * b[i] + d };
                expect[i] -= 0.5 * b[i];
            }
            let got = Vec::<f32>::try_from(&w).unwrap();
            assert!(
                (got[0] as f64 - expect[0]).abs() < 1e-5,
                "step {step}: {got:?} vs {expect:?}"
            );
        }
    }

    #[test]
    fn the_nonfinite_flag_finds_a_nan_or_an_infinity_and_changes_nothing() {
        let finite = Tensor::from_slice(&[1.5f32, -0.0, 3e38, 1e-45]);
        let big = Tensor::from_slice(&[2.0f64, -7.25]).view([2, 1]);
        let flag = |ts: &[Tensor]| nonfinite(ts).unwrap().double_value(&[]);
        let before = finite.copy();
        assert_eq!(flag(&[]), 0.0);
        assert_eq!(flag(&[finite.shallow_clone(), big.shallow_clone()]), 0.0);
        assert!(finite.equal(&before), "the values are left as they were");
        // A tensor whose elements share one memory location cannot be
        // written in place: the check only reads.
        let shared = Tensor::from_slice(&[2.0f32]).expand([1000], false);
        assert_eq!(flag(&[shared]), 0.0);
        let shared_nan = Tensor::from_slice(&[f32::NAN]).expand([1000], false);
        assert_eq!(flag(&[shared_nan]), 1.0);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let t = Tensor::from_slice(&[0.0f32, 1.0, bad]);
            assert_eq!(flag(&[finite.shallow_clone(), t]), 1.0, "{bad}");
        }
        let bf16 = Tensor::from_slice(&[1.0f32, f32::NAN]).to_kind(Kind::BFloat16);
        assert_eq!(flag(&[bf16]), 1.0);
    }

    /// The per-parameter loop the multi-tensor step replaced.
    fn reference_step(
        params: &[Tensor],
        buffers: &mut [Option<Tensor>],
        lr: f64,
        mu: f64,
        wd: f64,
    ) {
        tch::no_grad(|| {
            for (p, buf) in params.iter().zip(buffers.iter_mut()) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let d = if wd != 0.0 { &g + p * wd } else { g };
                let b = match buf {
                    Some(b) => {
                        let _ = b.g_mul_scalar_(mu).g_add_(&d);
                        b.shallow_clone()
                    }
                    None => {
                        let b = d.copy();
                        *buf = Some(b.shallow_clone());
                        b
                    }
                };
                let _ = p.shallow_clone().g_sub_(&(b * lr));
            }
        });
    }

    #[test]
    fn the_multi_tensor_step_equals_the_per_parameter_loop_bit_for_bit() {
        for (wd, channels_last) in [(1e-4, false), (0.0, true), (1e-4, true)] {
            let make = || {
                let vs = VarStore::new(Device::Cpu);
                let root = vs.root();
                let (conv, lin, bias) = crate::base::seed::with_torch_seed(1, || {
                    let conv = root.randn("conv", &[8, 4, 3, 3], 0.0, 0.5);
                    let lin = root.randn("lin", &[5, 8], 0.0, 0.5);
                    let bias = root.randn("bias", &[5], 0.0, 0.5);
                    // Never used by the loss: no gradient, no update.
                    let _unused = root.randn("unused", &[3], 0.0, 1.0);
                    (conv, lin, bias)
                });
                if channels_last {
                    crate::base::device::Compute {
                        channels_last: true,
                        ..crate::base::device::Compute::plain(Device::Cpu)
                    }
                    .prepare(&vs);
                }
                (vs, conv, lin, bias)
            };
            let loss = |conv: &Tensor, lin: &Tensor, bias: &Tensor, step: i64| {
                let x = Tensor::ones([2, 4, 6, 6], (Kind::Float, Device::Cpu)) * (step + 1) as f64;
                let h = x
                    .conv2d(conv, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
                    .mean_dim([2, 3].as_slice(), false, Kind::Float);
                (h.matmul(&lin.tr()) + bias)
                    .pow_tensor_scalar(2)
                    .sum(Kind::Float)
            };
            let (a_vs, ac, al, ab) = make();
            let (mut b_vs, bc, bl, bb) = make();
            b_vs.copy(&a_vs).unwrap();
            let mut ours = Sgd::new(&a_vs, 0.9, wd);
            let b_params: Vec<Tensor> = Sgd::new(&b_vs, 0.9, wd)
                .params
                .iter()
                .map(|(_, t)| t.shallow_clone())
                .collect();
            let mut b_bufs: Vec<Option<Tensor>> = b_params.iter().map(|_| None).collect();
            for step in 0..4 {
                ours.zero_grad();
                loss(&ac, &al, &ab, step).backward();
                ours.step(0.05);
                for p in &b_params {
                    p.shallow_clone().zero_grad();
                }
                loss(&bc, &bl, &bb, step).backward();
                reference_step(&b_params, &mut b_bufs, 0.05, 0.9, wd);
                for (name, t) in a_vs.variables() {
                    assert!(t.equal(&b_vs.variables()[&name]), "{name} at step {step}");
                }
            }
            assert_eq!(ours.state().len(), 3, "no buffer for the unused parameter");
        }
    }
}
