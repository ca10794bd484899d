//! SGD with momentum and weight decay, as `torch.optim.SGD` (no dampening,
//! no Nesterov): `b ← μ·b + (g + λ·θ)`, `θ ← θ − lr·b`. Written here rather
//! than taken from libtorch so that its momentum buffers can be checkpointed
//! and a run resumed exactly.

use tch::nn::VarStore;
use tch::Tensor;

use crate::error::{Error, Result};

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

    /// Clears the parameters' gradients.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr` from the accumulated gradients.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for ((_, p), buf) in self.params.iter_mut().zip(&mut self.buffers) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let d = if self.weight_decay != 0.0 {
                    &g + &*p * self.weight_decay
                } else {
                    g
                };
                let b = match buf {
                    Some(b) => {
                        let _ = b.g_mul_scalar_(self.momentum).g_add_(&d);
                        b.shallow_clone()
                    }
                    None => {
                        let b = d.copy();
                        *buf = Some(b.shallow_clone());
                        b
                    }
                };
                let _ = p.g_sub_(&(b * lr));
            }
        });
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

    /// Restores the buffers from `optim.<param>` entries.
    pub fn load_state(&mut self, state: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for ((n, p), buf) in self.params.iter().zip(&mut self.buffers) {
            *buf = match state.get(&format!("optim.{n}")) {
                Some(b) if b.size() == p.size() => Some(b.to_device(p.device()).copy()),
                Some(b) => {
                    return Err(Error::Internal(format!(
                        "checkpoint's optim.{n} is {:?}, the parameter {:?}",
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
}
