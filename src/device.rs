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
}
