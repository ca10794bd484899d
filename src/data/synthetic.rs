//! Synthetic images in the on-disk formats, for benchmarks: smooth colour
//! fields with edges and noise, so that JPEG decoding and the photometric
//! augmentations do realistic work.

use std::path::Path;

use image::RgbImage;
use rayon::prelude::*;

use crate::base::error::{Error, Result};
use crate::base::seed::splitmix64;

/// A `w × h` RGB image, different for each `i`.
pub fn image(i: usize, w: u32, h: u32) -> RgbImage {
    let phase = (i % 97) as f32 * 0.37;
    let (fw, fh) = (w as f32, h as f32);
    RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = (x as f32 / fw, y as f32 / fh);
        let noise = (splitmix64((i as u64) << 32 ^ (y as u64) << 16 ^ x as u64) % 41) as f32 - 20.0;
        let disc = if (u - 0.5).powi(2) + (v - 0.45).powi(2) < 0.05 + 0.03 * (phase.sin()) {
            60.0
        } else {
            0.0
        };
        let c = |k: f32| {
            let base = 128.0 + 90.0 * (6.0 * u + k * v * 5.0 + phase + k).sin() + disc;
            (base + noise).clamp(0.0, 255.0) as u8
        };
        image::Rgb([c(0.0), c(2.1), c(4.2)])
    })
}

/// A CIFAR-10 binary folder: `n` 32×32 images in `data_batch_1.bin` and
/// `n / 4` others in `test_batch.bin`, labels `i % 10`.
pub fn write_cifar10(dir: &Path, n: usize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (name, images) in [("data_batch_1.bin", 0..n), ("test_batch.bin", n..n + n / 4)] {
        let mut out = Vec::with_capacity(images.len() * 3073);
        for i in images {
            let img = image(i, 32, 32);
            out.push((i % 10) as u8);
            for c in 0..3 {
                out.extend(img.pixels().map(|p| p.0[c]));
            }
        }
        let path = dir.join(name);
        std::fs::write(&path, out).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// An ImageFolder of `n` JPEG images (quality 90) of `w × h` in 10 classes.
pub fn write_image_folder(root: &Path, n: usize, w: u32, h: u32) -> Result<()> {
    (0..n).into_par_iter().try_for_each(|i| {
        let dir = root.join(format!("class{}", i % 10));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join(format!("img{i:06}.jpg"));
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut enc =
            image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 90);
        enc.encode_image(&image(i, w, h))
            .map_err(|e| Error::io(&path, std::io::Error::other(e)))
    })
}
