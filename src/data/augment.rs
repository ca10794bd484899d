//! Contrastive augmentations, following torchvision's definitions, and the
//! recipes of the paper's frameworks.
//!
//! A [`Recipe`] maps an 8-bit [`Image`] to a normalised float32 CHW view:
//! geometry on bytes (crop + bilinear antialiased resize with
//! fast_image_resize, like PIL), then photometry on floats in [0, 1] (colour
//! jitter, grayscale, blur, as torchvision's tensor functions), then
//! normalisation. All randomness comes from the RNG passed in, so a seed fixes
//! the output.

use std::cell::RefCell;

use fast_image_resize::images::{Image as FirImage, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Image;
use crate::base::error::{Error, Result};

/// torchvision's RandomResizedCrop: a crop of random area fraction in `scale`
/// and aspect ratio (log-uniform) in `ratio`, resized to `size × size`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomResizedCrop {
    /// Output side in pixels.
    pub size: u32,
    /// Range of the crop's area as a fraction of the image's.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio w/h.
    pub ratio: (f64, f64),
}

/// A crop box in source pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

impl RandomResizedCrop {
    /// The crop for an image of `width × height` (torchvision's `get_params`:
    /// ten tries, then a central crop with the ratio clamped).
    pub fn params(&self, width: u32, height: u32, rng: &mut impl Rng) -> CropBox {
        let (wf, hf) = (width as f64, height as f64);
        let area = wf * hf;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.random_range(self.scale.0..=self.scale.1);
            let aspect = rng.random_range(lr0..=lr1).exp();
            let w = (target * aspect).sqrt().round() as u32;
            let h = (target / aspect).sqrt().round() as u32;
            if w > 0 && h > 0 && w <= width && h <= height {
                let y = rng.random_range(0..=height - h);
                let x = rng.random_range(0..=width - w);
                return CropBox { x, y, w, h };
            }
        }
        let in_ratio = wf / hf;
        let (w, h) = if in_ratio < self.ratio.0 {
            (width, ((wf / self.ratio.0).round() as u32).clamp(1, height))
        } else if in_ratio > self.ratio.1 {
            (((hf * self.ratio.1).round() as u32).clamp(1, width), height)
        } else {
            (width, height)
        };
        CropBox {
            x: (width - w) / 2,
            y: (height - h) / 2,
            w,
            h,
        }
    }
}

/// torchvision's ColorJitter, applied with probability `p` (RandomApply):
/// brightness, contrast, saturation and hue adjustments in a random order,
/// with factors uniform in `[max(0, 1 − b), 1 + b]` (hue: `[−h, h]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ColorJitter {
    /// Brightness strength b.
    pub brightness: f32,
    /// Contrast strength.
    pub contrast: f32,
    /// Saturation strength.
    pub saturation: f32,
    /// Hue strength, at most 0.5.
    pub hue: f32,
    /// Probability of applying the jitter at all.
    pub p: f64,
}

impl ColorJitter {
    /// Brightness, contrast and saturation of strength `s`, hue `h`,
    /// applied with probability `p` (torchvision's `ColorJitter(s, s, s, h)`
    /// in a `RandomApply`).
    fn uniform(s: f32, h: f32, p: f64) -> Option<ColorJitter> {
        Some(ColorJitter {
            brightness: s,
            contrast: s,
            saturation: s,
            hue: h,
            p,
        })
    }
}

/// torchvision's GaussianBlur with σ uniform in `sigma`, applied with
/// probability `p`; the kernel side is the odd number nearest
/// `kernel_fraction` of the image side (at least 3), with reflect padding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GaussianBlur {
    /// Range of σ in pixels.
    pub sigma: (f32, f32),
    /// Kernel side as a fraction of the image side (0.1 in SimCLR/MoCo v2).
    pub kernel_fraction: f32,
    /// Probability of blurring.
    pub p: f64,
}

/// Per-channel `(x − mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    /// One mean per output channel.
    pub mean: Vec<f32>,
    /// One standard deviation per output channel.
    pub std: Vec<f32>,
}

impl Normalize {
    /// ImageNet's statistics (3 channels).
    pub fn imagenet() -> Self {
        Normalize {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    /// The statistics for `dataset` with `channels` output channels: measured
    /// on (up to 10,000 of) its images when they are in memory, ImageNet's
    /// for an ImageFolder. Grayscale statistics are replicated for 3 output
    /// channels; RGB ones are averaged for 1.
    pub fn for_dataset(dataset: &super::Dataset, channels: u8) -> Self {
        let (mean, std) = dataset.channel_stats(10_000).unwrap_or_else(|| {
            let n = Normalize::imagenet();
            let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect();
            (widen(n.mean), widen(n.std))
        });
        let pick = |v: &[f64]| -> Vec<f32> {
            let avg = (v.iter().sum::<f64>() / v.len() as f64) as f32;
            match (v.len(), channels) {
                (n, c) if n == c as usize => v.iter().map(|&x| x as f32).collect(),
                _ => vec![avg; channels as usize],
            }
        };
        Normalize {
            mean: pick(&mean),
            std: pick(&std),
        }
    }

    /// The same `mean`/`std` for each of `channels` channels (a grayscale
    /// dataset's statistics, replicated when its images are made RGB).
    pub fn uniform(mean: f32, std: f32, channels: u8) -> Self {
        Normalize {
            mean: vec![mean; channels as usize],
            std: vec![std; channels as usize],
        }
    }
}

/// The geometric part of a recipe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Crop {
    /// RandomResizedCrop.
    RandomResized(RandomResizedCrop),
    /// Resize the shorter side to `resize`, then take the central `size × size`.
    Center {
        /// Output side.
        size: u32,
        /// Shorter side after the resize.
        resize: u32,
    },
}

/// The named recipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RecipeName {
    /// MoCo v1: crop (0.2–1), grayscale 0.2, jitter 0.4 ×4, flip.
    Mocov1,
    /// MoCo v2's "aug+" (also SiMo's): crop (0.2–1), jitter (0.4, 0.4, 0.4, 0.1)
    /// with p 0.8, grayscale 0.2, blur σ 0.1–2 with p 0.5, flip.
    Mocov2,
    /// SimCLR: crop (0.08–1), flip, jitter (0.8, 0.8, 0.8, 0.2) with p 0.8,
    /// grayscale 0.2, blur σ 0.1–2 with p 0.5.
    Simclr,
    /// Evaluation: resize (side/0.875 for large images) and centre crop.
    Eval,
    /// Supervised training and the linear protocol's classifier training
    /// (torchvision's ImageNet recipe, MoCo's `main_lincls`): crop (0.08–1), flip.
    Supervised,
}

/// A full augmentation pipeline producing `channels × size × size` floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Crop and resize.
    pub crop: Crop,
    /// Probability of a horizontal flip.
    pub flip: f64,
    /// Colour jitter, if any.
    pub jitter: Option<ColorJitter>,
    /// Probability of converting to grayscale (RGB only).
    pub grayscale: f64,
    /// Gaussian blur, if any.
    pub blur: Option<GaussianBlur>,
    /// Normalisation, one entry per output channel.
    pub normalize: Normalize,
    /// Output channels: 3 (grayscale inputs replicated) or 1 (grayscale kept).
    pub channels: u8,
}

/// Checks a recipe's output: its side, its channels and a normalisation
/// of one positive std per channel.
fn check_output(size: u32, channels: u8, normalize: &Normalize) -> Result<()> {
    if size == 0 {
        return Err(Error::config("image_size", "0 (must be ≥ 1)"));
    }
    if channels != 1 && channels != 3 {
        return Err(Error::config(
            "channels",
            format!("{channels} (must be 1 or 3)"),
        ));
    }
    if normalize.mean.len() != channels as usize || normalize.std.len() != channels as usize {
        return Err(Error::config(
            "normalize",
            format!(
                "{} means and {} stds for {channels} channel(s)",
                normalize.mean.len(),
                normalize.std.len()
            ),
        ));
    }
    if normalize.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(Error::config("normalize", "every std must be > 0"));
    }
    Ok(())
}

/// torchvision's `RandomResizedCrop(size, scale=(lo, 1))` with ratios 3/4 to 4/3.
fn random_resized(size: u32, lo: f64) -> Crop {
    Crop::RandomResized(RandomResizedCrop {
        size,
        scale: (lo, 1.0),
        ratio: (3.0 / 4.0, 4.0 / 3.0),
    })
}

impl Recipe {
    /// The named recipe at output side `size`, with `channels` output
    /// channels and the normalisation `normalize`.
    pub fn named(
        name: RecipeName,
        size: u32,
        channels: u8,
        normalize: Normalize,
    ) -> Result<Recipe> {
        check_output(size, channels, &normalize)?;
        let base = Recipe {
            crop: random_resized(size, 0.2),
            flip: 0.5,
            jitter: None,
            grayscale: 0.0,
            blur: None,
            normalize,
            channels,
        };
        let blur = Some(GaussianBlur {
            sigma: (0.1, 2.0),
            kernel_fraction: 0.1,
            p: 0.5,
        });
        Ok(match name {
            RecipeName::Mocov1 => Recipe {
                jitter: ColorJitter::uniform(0.4, 0.4, 1.0),
                grayscale: 0.2,
                ..base
            },
            RecipeName::Mocov2 => Recipe {
                jitter: ColorJitter::uniform(0.4, 0.1, 0.8),
                grayscale: 0.2,
                blur,
                ..base
            },
            RecipeName::Simclr => Recipe {
                crop: random_resized(size, 0.08),
                jitter: ColorJitter::uniform(0.8, 0.2, 0.8),
                grayscale: 0.2,
                blur,
                ..base
            },
            RecipeName::Supervised => Recipe {
                crop: random_resized(size, 0.08),
                ..base
            },
            RecipeName::Eval => Recipe {
                crop: Crop::Center {
                    size,
                    resize: match size >= 128 {
                        true => (size as f64 / 0.875).round() as u32,
                        false => size,
                    },
                },
                flip: 0.0,
                ..base
            },
        })
    }

    /// Output side in pixels.
    pub fn size(&self) -> u32 {
        match self.crop {
            Crop::RandomResized(c) => c.size,
            Crop::Center { size, .. } => size,
        }
    }

    /// Floats per view: `channels · size²`.
    pub fn view_len(&self) -> usize {
        self.channels as usize * (self.size() as usize).pow(2)
    }

    /// One augmented view of `img`, written as CHW floats into `out`
    /// (`view_len()` long).
    pub fn apply(&self, img: &Image, rng: &mut impl Rng, out: &mut [f32]) -> Result<()> {
        self.apply_as(img, rng, out, false)
    }

    /// One augmented view of `img`, written into `out` (`view_len()` long)
    /// as HWC floats when `hwc` (a channels-last batch), else CHW; the same
    /// values and random draws either way.
    pub fn apply_as(
        &self,
        img: &Image,
        rng: &mut impl Rng,
        out: &mut [f32],
        hwc: bool,
    ) -> Result<()> {
        if hwc && self.channels > 1 {
            PLANAR.with(|scratch| {
                let mut planar = scratch.borrow_mut();
                planar.resize(self.view_len(), 0.0);
                self.planar(img, rng, &mut planar)?;
                self.normalize_hwc(&planar, out);
                Ok(())
            })
        } else {
            // One channel: CHW and HWC are the same memory.
            self.planar(img, rng, out)?;
            self.normalize_planar(out);
            Ok(())
        }
    }

    /// The view before normalisation, CHW floats in [0, 1].
    fn planar(&self, img: &Image, rng: &mut impl Rng, out: &mut [f32]) -> Result<()> {
        let size = self.size();
        assert_eq!(out.len(), self.view_len(), "output buffer length");
        let bx = match self.crop {
            Crop::RandomResized(c) => {
                let b = c.params(img.width, img.height, rng);
                [b.x, b.y, b.w, b.h].map(f64::from)
            }
            Crop::Center { size, resize } => center_box(img.width, img.height, size, resize),
        };
        let resized = resize(img, bx, size)?;
        let flip = self.flip > 0.0 && rng.random_bool(self.flip);
        to_planar(&resized, size as usize, self.channels, flip, out);
        let plane = (size * size) as usize;
        let rgb = self.channels == 3;
        if let Some(j) = self.jitter {
            if rng.random_bool(j.p) {
                apply_jitter(&j, out, plane, rgb, rng);
            }
        }
        if rgb && self.grayscale > 0.0 && rng.random_bool(self.grayscale) {
            grayscale(out, plane);
        }
        if let Some(b) = self.blur {
            if rng.random_bool(b.p) {
                let sigma = rng.random_range(b.sigma.0..=b.sigma.1);
                let k = kernel_size(size, b.kernel_fraction);
                gaussian_blur(out, size as usize, sigma, k);
            }
        }
        Ok(())
    }

    /// Normalises CHW floats in place.
    fn normalize_planar(&self, x: &mut [f32]) {
        let plane = x.len() / self.channels as usize;
        for (c, chan) in x.chunks_exact_mut(plane).enumerate() {
            let (m, inv) = (self.normalize.mean[c], 1.0 / self.normalize.std[c]);
            chan.iter_mut().for_each(|v| *v = (*v - m) * inv);
        }
    }

    /// Normalises CHW floats `planar` into HWC `out` (the same arithmetic
    /// as [`Recipe::normalize_planar`], in another order).
    fn normalize_hwc(&self, planar: &[f32], out: &mut [f32]) {
        let c = self.channels as usize;
        let plane = planar.len() / c;
        for (ch, chan) in planar.chunks_exact(plane).enumerate() {
            let (m, inv) = (self.normalize.mean[ch], 1.0 / self.normalize.std[ch]);
            for (px, &v) in chan.iter().enumerate() {
                out[px * c + ch] = (v - m) * inv;
            }
        }
    }
}

/// The source region `[x, y, w, h]` (fractional) that torchvision's
/// `Resize(resize)` then `CenterCrop(size)` read: the shorter side scaled
/// to `resize` and the longer to `⌊resize·long/short⌋` (an image whose
/// shorter side is `resize` already is left as it is), then the central
/// `size × size`, its offsets rounded half to even as Python's `round`.
/// Resampling this region to `size × size` in one pass gives the pixels of
/// the two steps (the filter reads beyond the region, as PIL's does).
fn center_box(width: u32, height: u32, size: u32, resize: u32) -> [f64; 4] {
    let (w, h, size) = (width as f64, height as f64, size as f64);
    let r = resize as f64;
    let (new_w, new_h) = match (width.min(height) == resize, width <= height) {
        (true, _) => (w, h),
        (false, true) => (r, (r * h / w).floor()),
        (false, false) => ((r * w / h).floor(), r),
    };
    let (sx, sy) = (w / new_w, h / new_h);
    let left = ((new_w - size) / 2.0).round_ties_even().max(0.0);
    let top = ((new_h - size) / 2.0).round_ties_even().max(0.0);
    [
        left * sx,
        top * sy,
        size.min(new_w) * sx,
        size.min(new_h) * sy,
    ]
}

thread_local! {
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
    /// A CHW view being made before it is written out as HWC.
    static PLANAR: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Resamples the region `[x, y, w, h]` of `img` (fractional) to `size ×
/// size` (bilinear with antialiasing, as PIL), keeping the channel count.
fn resize(img: &Image, [x, y, w, h]: [f64; 4], size: u32) -> Result<Image> {
    let pt = if img.channels == 3 {
        PixelType::U8x3
    } else {
        PixelType::U8
    };
    let src = ImageRef::new(img.width, img.height, &img.data, pt).map_err(|e| {
        Error::config(
            "image",
            format!("{}×{}×{}: {e}", img.width, img.height, img.channels),
        )
    })?;
    let mut dst = FirImage::new(size, size, pt);
    let opts = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(x, y, w, h);
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &opts))
        .map_err(|e| Error::config("image", format!("resize failed: {e}")))?;
    Ok(Image::new(size, size, img.channels, dst.into_vec()))
}

/// Bytes HWC → floats CHW in [0, 1], mirrored if `flip`, with `channels`
/// output channels (a grayscale input replicated to 3; an RGB input to 1 by
/// luma).
fn to_planar(img: &Image, side: usize, channels: u8, flip: bool, out: &mut [f32]) {
    let plane = side * side;
    let cin = img.channels as usize;
    for y in 0..side {
        for x in 0..side {
            let sx = if flip { side - 1 - x } else { x };
            let px = &img.data[(y * side + sx) * cin..(y * side + sx + 1) * cin];
            let o = y * side + x;
            match (cin, channels) {
                (1, 1) => out[o] = px[0] as f32 / 255.0,
                (1, _) => {
                    let v = px[0] as f32 / 255.0;
                    out[o] = v;
                    out[plane + o] = v;
                    out[2 * plane + o] = v;
                }
                (_, 1) => out[o] = luma(px[0] as f32, px[1] as f32, px[2] as f32) / 255.0,
                _ => {
                    out[o] = px[0] as f32 / 255.0;
                    out[plane + o] = px[1] as f32 / 255.0;
                    out[2 * plane + o] = px[2] as f32 / 255.0;
                }
            }
        }
    }
}

/// ITU-R 601-2 luma, as torchvision's `rgb_to_grayscale`.
fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

fn apply_jitter(j: &ColorJitter, x: &mut [f32], plane: usize, rgb: bool, rng: &mut impl Rng) {
    let mut order = [0usize, 1, 2, 3];
    order.shuffle(rng);
    fn factor(s: f32, rng: &mut impl Rng) -> Option<f32> {
        (s > 0.0).then(|| rng.random_range((1.0 - s).max(0.0)..=1.0 + s))
    }
    let b = factor(j.brightness, rng);
    let c = factor(j.contrast, rng);
    let s = factor(j.saturation, rng);
    let h = (j.hue > 0.0).then(|| rng.random_range(-j.hue..=j.hue));
    for op in order {
        match op {
            0 => {
                if let Some(f) = b {
                    adjust_brightness(x, f)
                }
            }
            1 => {
                if let Some(f) = c {
                    adjust_contrast(x, plane, f)
                }
            }
            2 => {
                if let (Some(f), true) = (s, rgb) {
                    adjust_saturation(x, plane, f)
                }
            }
            _ => {
                if let (Some(f), true) = (h, rgb) {
                    adjust_hue(x, plane, f)
                }
            }
        }
    }
}

/// `x · f`, clamped to [0, 1] (torchvision `adjust_brightness`).
pub fn adjust_brightness(x: &mut [f32], f: f32) {
    x.iter_mut().for_each(|v| *v = (*v * f).clamp(0.0, 1.0));
}

/// Blend with the mean of the grayscale image (torchvision `adjust_contrast`).
pub fn adjust_contrast(x: &mut [f32], plane: usize, f: f32) {
    let mean = if x.len() == 3 * plane {
        let (r, rest) = x.split_at(plane);
        let (g, b) = rest.split_at(plane);
        r.iter()
            .zip(g)
            .zip(b)
            .map(|((&r, &g), &b)| luma(r, g, b) as f64)
            .sum::<f64>()
            / plane as f64
    } else {
        x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64
    } as f32;
    let offset = (1.0 - f) * mean;
    x.iter_mut()
        .for_each(|v| *v = (f * *v + offset).clamp(0.0, 1.0));
}

/// Blend each pixel with its grayscale value (torchvision `adjust_saturation`).
pub fn adjust_saturation(x: &mut [f32], plane: usize, f: f32) {
    let (r, rest) = x.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for i in 0..plane {
        let l = (1.0 - f) * luma(r[i], g[i], b[i]);
        r[i] = (f * r[i] + l).clamp(0.0, 1.0);
        g[i] = (f * g[i] + l).clamp(0.0, 1.0);
        b[i] = (f * b[i] + l).clamp(0.0, 1.0);
    }
}

/// Rotate the hue by `f` turns, f ∈ [−0.5, 0.5] (torchvision `adjust_hue`, via HSV).
pub fn adjust_hue(x: &mut [f32], plane: usize, f: f32) {
    let (r, rest) = x.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for i in 0..plane {
        let (h, s, v) = rgb_to_hsv(r[i], g[i], b[i]);
        let h = (h + f).rem_euclid(1.0);
        let (nr, ng, nb) = hsv_to_rgb(h, s, v);
        r[i] = nr;
        g[i] = ng;
        b[i] = nb;
    }
}

fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let cr = maxc - minc;
    let s = if maxc > 0.0 { cr / maxc } else { 0.0 };
    if cr == 0.0 {
        return (0.0, s, maxc);
    }
    let (rc, gc, bc) = ((maxc - r) / cr, (maxc - g) / cr, (maxc - b) / cr);
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    ((h / 6.0).rem_euclid(1.0), s, maxc)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match (i as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Every channel set to the luma of the pixel (torchvision `rgb_to_grayscale`, 3 outputs).
pub fn grayscale(x: &mut [f32], plane: usize) {
    let (r, rest) = x.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for i in 0..plane {
        let l = luma(r[i], g[i], b[i]);
        r[i] = l;
        g[i] = l;
        b[i] = l;
    }
}

/// The odd kernel side nearest `fraction · side`, at least 3.
pub fn kernel_size(side: u32, fraction: f32) -> usize {
    let k = (side as f32 * fraction).round() as usize;
    (if k % 2 == 0 { k + 1 } else { k }).max(3)
}

/// Separable Gaussian blur of each `side × side` plane with reflect padding
/// (torchvision `gaussian_blur`).
pub fn gaussian_blur(x: &mut [f32], side: usize, sigma: f32, k: usize) {
    let half = (k / 2) as isize;
    let mut w: Vec<f32> = (0..k)
        .map(|i| {
            let d = i as f32 - half as f32;
            (-0.5 * (d / sigma).powi(2)).exp()
        })
        .collect();
    let sum: f32 = w.iter().sum();
    w.iter_mut().for_each(|v| *v /= sum);
    // Reflect (no edge repeat), as torch's "reflect" padding; kernels wider
    // than the image fall back to clamping.
    let reflect = |i: isize| -> usize {
        let n = side as isize;
        let mut j = i;
        if n > 1 {
            while j < 0 || j >= n {
                j = if j < 0 { -j } else { 2 * (n - 1) - j };
            }
        }
        j.clamp(0, n - 1) as usize
    };
    let mut padded = vec![0f32; side + 2 * half as usize];
    let mut tmp = vec![0f32; side * side];
    for chan in x.chunks_exact_mut(side * side) {
        // Rows.
        for y in 0..side {
            let row = &chan[y * side..(y + 1) * side];
            for (i, p) in padded.iter_mut().enumerate() {
                *p = row[reflect(i as isize - half)];
            }
            let out = &mut tmp[y * side..(y + 1) * side];
            out.fill(0.0);
            for (t, &wt) in w.iter().enumerate() {
                for (o, &v) in out.iter_mut().zip(&padded[t..t + side]) {
                    *o += wt * v;
                }
            }
        }
        // Columns: the same on the transposed access pattern.
        chan.fill(0.0);
        for (t, &wt) in w.iter().enumerate() {
            let dy = t as isize - half;
            for y in 0..side {
                let src = reflect(y as isize + dy);
                let (o, s) = (
                    &mut chan[y * side..(y + 1) * side],
                    &tmp[src * side..(src + 1) * side],
                );
                for (ov, &sv) in o.iter_mut().zip(s) {
                    *ov += wt * sv;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::center_box;

    /// torchvision's `Resize(resize)` + `CenterCrop(size)`, worked by hand:
    /// the resized sides, the crop's offsets (Python's `round`, half to
    /// even), mapped back to the source.
    #[test]
    fn the_centre_box_is_torchvisions_resize_then_crop() {
        // 23×20 to 16: resized 18×16 (⌊16·23/20⌋ = 18), left round(1.0) = 1.
        let [x, y, w, h] = center_box(23, 20, 16, 16);
        let sx = 23.0 / 18.0;
        assert_eq!([x, y, w, h], [sx, 0.0, 16.0 * sx, 20.0]);
        // 20×30 to 18 then 16: resized 18×27, offsets round(1.0) = 1 and
        // round(5.5) = 6 (half to even).
        let [x, y, w, h] = center_box(20, 30, 16, 18);
        let (sx, sy) = (20.0 / 18.0, 30.0 / 27.0);
        assert_eq!([x, y, w, h], [sx, 6.0 * sy, 16.0 * sx, 16.0 * sy]);
        // A shorter side already at `resize` is not resampled: a plain crop,
        // offsets round(3.5) = 4 and 0.
        assert_eq!(center_box(23, 16, 16, 16), [4.0, 0.0, 16.0, 16.0]);
        assert_eq!(center_box(16, 16, 16, 16), [0.0, 0.0, 16.0, 16.0]);
    }
}
