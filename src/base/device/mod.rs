//! Where and how a model computes: the device (`cpu`, `cuda`, `cuda:N`),
//! the precision of the forward pass (bfloat16 autocast where the hardware
//! computes it natively) and the memory format of images and convolution
//! weights (channels-last by default).

use std::ffi::{c_char, c_int};

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Cuda, Device, Kind, Tensor};

use crate::base::error::{Error, Result};
use crate::base::shim;

pub mod config;
pub mod memory;

pub use config::ComputeConfig;

/// Parses `--device` (`cpu`, `cuda`, `cuda:N`) and checks that the GPU exists.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let index = match spec.as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => {
                return Err(Error::config(
                    "device",
                    format!("'{other}' (expected cpu, cuda or cuda:N)"),
                ))
            }
        },
    };
    if !Cuda::is_available() {
        return Err(Error::config(
            "device",
            format!(
                "'{spec}' requested, but no CUDA GPU is visible to libtorch on this machine; use --device cpu"
            ),
        ));
    }
    let count = Cuda::device_count() as usize;
    if index >= count {
        return Err(Error::config(
            "device",
            format!(
                "'{spec}' requested, but this machine has {count} CUDA GPU(s): cuda:0..cuda:{}",
                count - 1
            ),
        ));
    }
    Ok(Device::Cuda(index))
}

/// The precision of the forward pass (the `precision` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 where the hardware computes bfloat16 natively (CPU: AVX-512
    /// BF16 or AMX; GPU: compute capability ≥ 8.0), else fp32.
    Auto,
    /// float32 throughout.
    Fp32,
    /// bfloat16 autocast for the encoders' forward passes (mixed precision).
    Bf16,
}

/// The layout of images and convolution weights (the `memory_format` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum MemoryFormat {
    /// NHWC in memory (what oneDNN and tensor cores want), seen as NCHW.
    #[value(name = "channels_last")]
    ChannelsLast,
    /// NCHW in memory.
    Contiguous,
}

/// Why the hardware computes bfloat16 natively (e.g. "CPU has avx512_bf16"),
/// or `None` when it does not.
pub fn native_bf16(device: Device) -> Option<String> {
    match device {
        Device::Cuda(i) => {
            // SAFETY: reads a property of device i; no pointers cross.
            let ok = unsafe { shim::eqco_cuda_native_bf16(i as c_int) } != 0;
            ok.then(|| format!("cuda:{i} has compute capability ≥ 8.0"))
        }
        _ => {
            let flags = cpu_bf16_flags();
            (!flags.is_empty()).then(|| format!("CPU has {flags}"))
        }
    }
}

/// The CPU's bfloat16 instruction sets as ATen's cpuinfo reports them
/// (e.g. "avx512_bf16,amx_bf16"); empty when there are none.
pub fn cpu_bf16_flags() -> String {
    let mut out: *mut c_char = std::ptr::null_mut();
    // SAFETY: the shim writes a malloc'ed string to `out` on success.
    let err = unsafe { shim::eqco_cpu_bf16_flags(&mut out) };
    if shim::check("cpu capabilities", err).is_err() || out.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated string from malloc, read then freed once.
    let text = unsafe { std::ffi::CStr::from_ptr(out) }
        .to_string_lossy()
        .into_owned();
    unsafe { libc::free(out.cast()) };
    text
}

/// How a model computes: device, precision and memory format, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compute {
    /// Where tensors live.
    pub device: Device,
    /// Encoders' forward passes run under bfloat16 autocast.
    pub bf16: bool,
    /// Images and 4-D weights are channels-last.
    pub channels_last: bool,
}

impl Compute {
    /// float32, NCHW, on `device`.
    pub fn plain(device: Device) -> Compute {
        Compute {
            device,
            bf16: false,
            channels_last: false,
        }
    }

    /// Resolves the configured precision and memory format for `device`;
    /// also returns the line the run's start prints about the precision
    /// (`bf16 (auto: CPU has avx512_bf16)`), and a warning for bf16 on
    /// hardware without native support.
    pub fn resolve(
        precision: Precision,
        format: MemoryFormat,
        device: Device,
    ) -> (Compute, String, Option<String>) {
        Self::resolve_with(precision, format, device, native_bf16(device))
    }

    /// As [`Compute::resolve`], given what the hardware can do: `native` is
    /// why `device` computes bfloat16 natively, or `None` where it does not.
    pub fn resolve_with(
        precision: Precision,
        format: MemoryFormat,
        device: Device,
        native: Option<String>,
    ) -> (Compute, String, Option<String>) {
        let (bf16, line, warning) = match (precision, &native) {
            (Precision::Auto, Some(why)) => (true, format!("bf16 (auto: {why})"), None),
            (Precision::Auto, None) => (
                false,
                format!("fp32 (auto: {})", no_native_bf16(device)),
                None,
            ),
            (Precision::Fp32, _) => (false, "fp32".to_string(), None),
            (Precision::Bf16, Some(why)) => (true, format!("bf16 ({why})"), None),
            (Precision::Bf16, None) => (
                true,
                "bf16 (emulated)".to_string(),
                Some(format!(
                    "precision = \"bf16\": {}, so bfloat16 is emulated and will be much slower than fp32",
                    no_native_bf16(device)
                )),
            ),
        };
        let compute = Compute {
            device,
            bf16,
            channels_last: format == MemoryFormat::ChannelsLast,
        };
        (compute, line, warning)
    }

    /// Runs `f` (a forward pass) under bfloat16 autocast when `bf16` is set:
    /// convolutions and matrix products in bfloat16, what autocast keeps in
    /// float32 (reductions, BN statistics) in float32. Else runs it plainly.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        if !self.bf16 {
            return f();
        }
        let _guard = AutocastGuard::enter(self.device);
        f()
    }

    /// `x` in this layout: channels-last for 4-D images when configured
    /// (a no-op for batches the loader already wrote as NHWC).
    pub fn layout(&self, x: &Tensor) -> Tensor {
        if self.channels_last && x.dim() == 4 && !is_channels_last(x) {
            to_channels_last(x)
        } else {
            x.shallow_clone()
        }
    }

    /// Converts every 4-D variable of `vs` (convolution weights) to the
    /// layout; optimizer state made from them with `zeros_like` follows.
    pub fn prepare(&self, vs: &VarStore) {
        if !self.channels_last {
            return;
        }
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                if v.dim() == 4 && !is_channels_last(&v) {
                    let cl = to_channels_last(&v);
                    v.set_data(&cl);
                }
            }
        });
    }
}

fn no_native_bf16(device: Device) -> &'static str {
    if device.is_cuda() {
        "this GPU's compute capability is below 8.0"
    } else {
        "this CPU has neither AVX-512 BF16 nor AMX"
    }
}

/// Restores the autocast state of a device type when dropped.
struct AutocastGuard {
    cuda: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
}

impl AutocastGuard {
    fn enter(device: Device) -> AutocastGuard {
        let cuda = device.is_cuda() as c_int;
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        // SAFETY: plain integers cross; the shim catches every exception.
        let err = unsafe { shim::eqco_autocast_enter(cuda, 1, &mut prev_enabled, &mut prev_dtype) };
        shim::check("autocast", err).expect("setting libtorch's autocast state cannot fail");
        AutocastGuard {
            cuda,
            prev_enabled,
            prev_dtype,
        }
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: as in `enter`.
        let err =
            unsafe { shim::eqco_autocast_exit(self.cuda, self.prev_enabled, self.prev_dtype) };
        let _ = shim::check("autocast", err);
    }
}

/// Whether autocast is on for `device`'s type in this thread, and with bfloat16.
pub fn autocast_state(device: Device) -> (bool, bool) {
    // SAFETY: reads two flags.
    let s = unsafe { shim::eqco_autocast_state(device.is_cuda() as c_int) };
    (s & 1 != 0, s & 2 != 0)
}

/// `t` `[N, C, H, W]` copied into NHWC memory, seen as NCHW: exactly the
/// strides of PyTorch's `to(memory_format=torch.channels_last)`, also for
/// one channel (where `permute(…).contiguous()` would keep the old strides).
pub fn to_channels_last(t: &Tensor) -> Tensor {
    let s = t.size();
    let mut out =
        Tensor::empty([s[0], s[2], s[3], s[1]], (t.kind(), t.device())).permute([0, 3, 1, 2]);
    out.copy_(t);
    out
}

/// Whether a 4-D tensor has exactly the strides of [`to_channels_last`].
///
/// Dimensions of size 1 are not ignored: PyTorch tells the two layouts of
/// a one-channel image apart by their strides (`[HW, 1, W, 1]` is
/// channels-last, `[HW, HW, W, 1]` is not), and picks its convolution
/// kernels by that.
pub fn is_channels_last(t: &Tensor) -> bool {
    let (size, stride) = (t.size(), t.stride());
    if size.len() != 4 {
        return false;
    }
    // Innermost first: C, W, H, N.
    let mut expected = 1;
    for d in [1, 3, 2, 0] {
        if stride[d] != expected {
            return false;
        }
        expected *= size[d];
    }
    true
}

/// Float32 of any floating tensor (autocast outputs are bfloat16).
pub fn float32(t: &Tensor) -> Tensor {
    if t.kind() == Kind::Float {
        t.shallow_clone()
    } else {
        t.to_kind(Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_malformed_names() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device(" CPU ").unwrap(), Device::Cpu);
        let e = parse_device("gpu").unwrap_err().to_string();
        assert!(e.contains("`device`") && e.contains("cuda:N"), "{e}");
        assert!(parse_device("cuda:x").is_err());
    }

    #[test]
    fn cuda_without_a_gpu_says_so() {
        if Cuda::is_available() {
            return; // Only meaningful on machines without a GPU (CI has none).
        }
        let e = parse_device("cuda").unwrap_err();
        assert!(e.is_usage());
        assert!(e.to_string().contains("no CUDA GPU"), "{e}");
    }

    #[test]
    fn cpu_autocast_runs_convolutions_in_bfloat16_and_is_restored() {
        let c = Compute {
            device: Device::Cpu,
            bf16: true,
            channels_last: false,
        };
        let (x, w) = crate::base::seed::with_torch_seed(1, || {
            (
                Tensor::randn([2, 3, 8, 8], tch::kind::FLOAT_CPU),
                Tensor::randn([4, 3, 3, 3], tch::kind::FLOAT_CPU),
            )
        });
        let (kind, state) = c.run(|| {
            let y = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
            (y.kind(), autocast_state(Device::Cpu))
        });
        assert_eq!(kind, Kind::BFloat16);
        assert_eq!(state, (true, true));
        assert!(!autocast_state(Device::Cpu).0, "restored after the region");
        let y = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        assert_eq!(y.kind(), Kind::Float);
        // Nested regions restore the outer state.
        c.run(|| {
            c.run(|| ());
            assert!(autocast_state(Device::Cpu).0);
        });
        assert!(!autocast_state(Device::Cpu).0);
    }

    #[test]
    fn channels_last_has_pytorchs_strides() {
        let x = Tensor::arange(2 * 3 * 4 * 5, tch::kind::FLOAT_CPU).view([2, 3, 4, 5]);
        let cl = to_channels_last(&x);
        assert_eq!(cl.stride(), vec![60, 1, 15, 3]);
        assert!(is_channels_last(&cl) && !is_channels_last(&x));
        assert_eq!(cl, x, "same values");
        // One channel: the same memory, but PyTorch reads the layout from
        // the strides, so only the converted tensor counts as channels-last.
        let g = Tensor::zeros([2, 1, 4, 4], tch::kind::FLOAT_CPU);
        assert!(!is_channels_last(&g));
        let gl = to_channels_last(&g);
        assert_eq!(gl.stride(), vec![16, 1, 4, 1]);
        assert!(is_channels_last(&gl));
    }

    /// Every (precision, capability) pair, with the capability injected, so
    /// that both of `auto`'s branches run on every machine.
    #[test]
    fn resolving_precision_says_why_for_either_capability() {
        let native = || Some("CPU has avx512_bf16".to_string());
        let resolve = |p, native| {
            let (c, line, warn) =
                Compute::resolve_with(p, MemoryFormat::ChannelsLast, Device::Cpu, native);
            (c.bf16, line, warn.is_some())
        };
        let cases = [
            (
                Precision::Auto,
                native(),
                true,
                "bf16 (auto: CPU has avx512_bf16)",
                false,
            ),
            (
                Precision::Auto,
                None,
                false,
                "fp32 (auto: this CPU has neither AVX-512 BF16 nor AMX)",
                false,
            ),
            (Precision::Fp32, native(), false, "fp32", false),
            (Precision::Fp32, None, false, "fp32", false),
            (
                Precision::Bf16,
                native(),
                true,
                "bf16 (CPU has avx512_bf16)",
                false,
            ),
            (Precision::Bf16, None, true, "bf16 (emulated)", true),
        ];
        for (p, cap, bf16, line, warns) in cases {
            let what = format!("{p:?} with {cap:?}");
            assert_eq!(resolve(p, cap), (bf16, line.to_string(), warns), "{what}");
        }
        let (c, _, _) =
            Compute::resolve_with(Precision::Fp32, MemoryFormat::Contiguous, Device::Cpu, None);
        assert!(!c.channels_last);
        // This machine's own answer goes through the same function.
        let (c, _, _) = Compute::resolve(Precision::Auto, MemoryFormat::ChannelsLast, Device::Cpu);
        assert_eq!(c.bf16, native_bf16(Device::Cpu).is_some());
    }

    #[test]
    fn the_gpu_asked_about_is_the_one_named() {
        // A device beyond the visible ones has no capability to report (on
        // a machine without CUDA, every index is beyond): no answer, no error.
        let visible = tch::Cuda::device_count() as usize;
        for i in [visible, visible + 3] {
            assert_eq!(native_bf16(Device::Cuda(i)), None, "cuda:{i}");
        }
        // Each visible GPU is asked about itself, and named in the answer.
        for i in 0..visible {
            if let Some(why) = native_bf16(Device::Cuda(i)) {
                assert!(why.starts_with(&format!("cuda:{i} ")), "{why}");
            }
        }
    }
}
