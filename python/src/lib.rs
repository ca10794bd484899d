//! `eqco._eqco`: the Rust library reached from Python. The package
//! `eqco` (python/eqco/) wraps these functions in a typed API; tensors
//! cross as `torch.Tensor`s over the same libtorch (pyo3-tch), so autograd
//! and autocast see the Rust ops as their own.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::nn::{ModuleT, VarStore};

use eqco::base::device::parse_device;
use eqco::base::signals;
use eqco::data::Split;
use eqco::eval::embed::{embed, EmbedSettings, Layer};
use eqco::job::{self, Ended, Request};
use eqco::loss::infonce::{info_nce, info_nce_from_similarities, split_diagonal, Negatives};
use eqco::loss::LossConfig;
use eqco::model::export::{torchvision_metadata, torchvision_state};
use eqco::run::checkpoint::{self, RunCheckpoint};
use eqco::run::folder::StartRequest;
use eqco::Error;

/// eqco's error as Python's: a configuration error is a `ValueError`
/// naming the key, a run stopped by a signal a `KeyboardInterrupt` saying
/// where it stopped, anything else a `RuntimeError`.
fn py_err(e: impl Into<anyhow::Error>) -> PyErr {
    let e: anyhow::Error = e.into();
    let text = format!("{e:#}");
    match e.downcast_ref::<Error>() {
        Some(err) if err.is_usage() => PyValueError::new_err(text),
        Some(Error::Stopped { .. }) => PyKeyboardInterrupt::new_err(text),
        _ => PyRuntimeError::new_err(text),
    }
}

/// The EqCo margin `m = τ·ln(α/K)` (Eq. 5).
#[pyfunction]
fn margin(tau: f64, alpha: f64, k: usize) -> PyResult<f64> {
    let cfg = LossConfig::eqco(tau, alpha);
    cfg.validate().map_err(py_err)?;
    cfg.margin_for(k).map_err(py_err)
}

/// InfoNCE with a margin (Eq. 1), the mean over the queries: `q`, `k_pos`
/// `[N, D]` (L2-normalised), negatives `[K, D]` (shared), `[N, K, D]` (per
/// query) or none (in-batch: each query's negatives are the other
/// queries' positive keys, K = N − 1); EqCo's margin when `alpha` is given.
#[pyfunction]
#[pyo3(signature = (q, k_pos, negatives, tau, alpha))]
fn info_nce_loss(
    q: PyTensor,
    k_pos: PyTensor,
    negatives: Option<PyTensor>,
    tau: f64,
    alpha: Option<f64>,
) -> PyResult<PyTensor> {
    let cfg = match alpha {
        Some(a) => LossConfig::eqco(tau, a),
        None => LossConfig::infonce(tau),
    };
    cfg.validate().map_err(py_err)?;
    let out = match negatives.as_ref().map(|n| (n.dim(), &n.0)) {
        None => {
            let scores = q.matmul(&k_pos.tr());
            let (pos, neg) = split_diagonal(&scores).map_err(py_err)?;
            info_nce_from_similarities(&pos, &neg, &cfg)
        }
        Some((2, keys)) => info_nce(&q, &k_pos, Negatives::Shared(keys), &cfg),
        Some((3, keys)) => info_nce(&q, &k_pos, Negatives::PerQuery(keys), &cfg),
        Some((d, _)) => {
            return Err(PyValueError::new_err(format!(
                "negatives: {d} dimensions; expected [K, D] (shared), [N, K, D] (per query) or None (in-batch)"
            )))
        }
    }
    .map_err(py_err)?;
    Ok(PyTensor(out.loss))
}

/// Pretrains as `eqco pretrain` does (`config`, `--set` overrides `sets`,
/// `--out`, `--resume`, device, threads), without the GIL; returns the
/// run's summary as JSON (empty when this process is not rank 0). A stop
/// signal (Ctrl-C) ends the run at a checkpoint and raises
/// `KeyboardInterrupt`; the process's own signal handlers come back after.
#[pyfunction]
#[pyo3(signature = (config, out, sets, resume, device, threads))]
fn pretrain(
    py: Python<'_>,
    config: Option<String>,
    out: Option<PathBuf>,
    sets: Vec<String>,
    resume: Option<PathBuf>,
    device: String,
    threads: Option<usize>,
) -> PyResult<String> {
    let start = StartRequest {
        config,
        sets,
        out,
        resume,
    };
    let ended = py.allow_threads(|| {
        signals::restored_after(|| -> anyhow::Result<Ended> {
            let run = job::resolve_run(&start)?;
            let req = Request {
                device,
                threads,
                nproc_per_node: None,
            };
            job::pretrain(&run, &req)
        })
    });
    match ended.map_err(py_err)? {
        Ended::Trained {
            summary,
            main: true,
        } => serde_json::to_string(&summary).map_err(|e| PyRuntimeError::new_err(e.to_string())),
        _ => Ok(String::new()),
    }
}

/// Embeddings of a dataset's images (`dataset`, or the run's) by a
/// checkpoint's frozen backbone (or its head), as `eqco embed` computes
/// them; `[n, D]` float32 on the CPU.
#[pyfunction]
#[pyo3(signature = (checkpoint, dataset, split, head, normalize, device, threads))]
#[allow(clippy::too_many_arguments)] // Python's keyword arguments, one by one.
fn embed_dataset(
    py: Python<'_>,
    checkpoint: PathBuf,
    dataset: Option<PathBuf>,
    split: &str,
    head: bool,
    normalize: bool,
    device: &str,
    threads: usize,
) -> PyResult<PyTensor> {
    let split = match split {
        "train" => Split::Train,
        "test" => Split::Test,
        "unlabeled" => Split::Unlabeled,
        other => {
            return Err(PyValueError::new_err(format!(
                "split: '{other}' (one of train, test, unlabeled)"
            )))
        }
    };
    let settings = EmbedSettings {
        dataset,
        split,
        layer: if head { Layer::Head } else { Layer::Backbone },
        normalize,
        batch_size: 256,
        threads,
        device: parse_device(device).map_err(py_err)?,
        progress: false,
    };
    let e = py
        .allow_threads(|| embed(&checkpoint, &settings))
        .map_err(py_err)?;
    Ok(PyTensor(e.tensor()))
}

/// The pooled backbone features of a checkpoint for a batch `images`
/// `[N, C, H, W]`, already sized and normalised as the run's views were
/// (`eqco.embed` does that for files); float32, on the images' device.
#[pyfunction]
fn embed_batch(checkpoint: PathBuf, images: PyTensor) -> PyResult<PyTensor> {
    let size = images.size();
    if size.len() != 4 {
        return Err(PyValueError::new_err(format!(
            "images: shape {size:?}; expected [N, C, H, W]"
        )));
    }
    let run = RunCheckpoint::open(&checkpoint, None).map_err(py_err)?;
    let device = images.device();
    let (compute, _, _) = run.compute(device);
    let vs = VarStore::new(device);
    let backbone = run.backbone(&vs, size[1] as u8, compute).map_err(py_err)?;
    let x = images.to_kind(tch::Kind::Float);
    let f = tch::no_grad(|| compute.run(|| backbone.forward_t(&x, false)));
    Ok(PyTensor(f.to_kind(tch::Kind::Float)))
}

/// A checkpoint's backbone under torchvision's names, with the metadata
/// that says which ResNet to build (`arch`, `stem`, `width`,
/// `in_channels`, `step`), as `eqco export` writes them.
#[pyfunction]
fn backbone_state(
    checkpoint: PathBuf,
) -> PyResult<(HashMap<String, PyTensor>, HashMap<String, String>)> {
    let (state, pos) = checkpoint::load(&checkpoint).map_err(py_err)?;
    let tensors = torchvision_state(&state, pos.step).map_err(|e| {
        py_err(Error::Data {
            path: checkpoint.clone(),
            message: e.to_string(),
        })
    })?;
    let meta = torchvision_metadata(&tensors, pos.step).map_err(py_err)?;
    let tensors = tensors.into_iter().map(|(n, t)| (n, PyTensor(t))).collect();
    Ok((tensors, meta))
}

/// The `eqco` command line on `argv` (the program's name first); returns
/// its exit code.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<String>) -> i32 {
    let args: Vec<OsString> = argv.into_iter().map(OsString::from).collect();
    py.allow_threads(|| eqco::cli::main_with(args))
}

/// The module `eqco._eqco`.
#[pymodule]
fn _eqco(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(margin, m)?)?;
    m.add_function(wrap_pyfunction!(info_nce_loss, m)?)?;
    m.add_function(wrap_pyfunction!(pretrain, m)?)?;
    m.add_function(wrap_pyfunction!(embed_dataset, m)?)?;
    m.add_function(wrap_pyfunction!(embed_batch, m)?)?;
    m.add_function(wrap_pyfunction!(backbone_state, m)?)?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    Ok(())
}
