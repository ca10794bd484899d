//! Choosing where tensors live: `cpu`, `cuda` or `cuda:N`.

use tch::{Cuda, Device};

use crate::error::{Error, Result};

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

extern "C" {
    fn eqco_set_cuda_autocast_bf16(bf16: std::os::raw::c_int);
    fn eqco_cuda_autocast_is_bf16() -> std::os::raw::c_int;
}

/// Chooses bfloat16 (`true`) or float16 as the reduced type of CUDA autocast.
pub fn set_cuda_autocast_bf16(bf16: bool) {
    // SAFETY: sets a plain libtorch setting; no pointers cross.
    unsafe { eqco_set_cuda_autocast_bf16(bf16 as std::os::raw::c_int) }
}

/// Whether CUDA autocast's reduced type is bfloat16.
pub fn cuda_autocast_is_bf16() -> bool {
    // SAFETY: reads a plain libtorch setting.
    unsafe { eqco_cuda_autocast_is_bf16() != 0 }
}

/// Runs `f` under CUDA autocast with bfloat16 when `bf16` is set and
/// `device` is a GPU (mixed precision: matrix products and convolutions in
/// bfloat16, reductions and the loss in float32); else runs it plainly.
pub fn autocast_bf16<T>(bf16: bool, device: Device, f: impl FnOnce() -> T) -> T {
    if bf16 && device.is_cuda() {
        set_cuda_autocast_bf16(true);
        tch::autocast(true, f)
    } else {
        f()
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
    fn the_autocast_type_can_be_set_to_bfloat16() {
        set_cuda_autocast_bf16(true);
        assert!(cuda_autocast_is_bf16());
        set_cuda_autocast_bf16(false);
        assert!(!cuda_autocast_is_bf16());
        // Off a GPU the closure simply runs.
        assert_eq!(autocast_bf16(true, Device::Cpu, || 3), 3);
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
}
