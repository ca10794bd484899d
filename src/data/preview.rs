//! A PNG grid of augmented view pairs, to look at what a recipe does.

use image::{imageops, RgbImage};

use super::{Image, Loader, Recipe};
use crate::base::error::{Error, Result};

/// A normalised CHW view back to an RGB image (de-normalised, clamped).
pub fn view_to_rgb(view: &[f32], recipe: &Recipe) -> RgbImage {
    let side = recipe.size();
    let plane = (side * side) as usize;
    let c = recipe.channels as usize;
    let n = &recipe.normalize;
    RgbImage::from_fn(side, side, |x, y| {
        let i = (y * side + x) as usize;
        let px = |ch: usize| {
            let ch = ch.min(c - 1);
            let v = view[ch * plane + i] * n.std[ch] + n.mean[ch];
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        };
        image::Rgb([px(0), px(1), px(2)])
    })
}

fn to_rgb(img: &Image) -> RgbImage {
    let rgb = img.to_rgb();
    RgbImage::from_raw(rgb.width, rgb.height, rgb.data).expect("sizes match")
}

/// One row per image: the original, then its two views, each scaled
/// (nearest neighbour) to `cell` pixels, with 4-pixel white gutters; rows
/// are laid out in `columns` groups side by side.
pub fn grid(rows: &[(Image, RgbImage, RgbImage)], cell: u32, columns: u32) -> RgbImage {
    let gap = 4;
    let columns = columns.max(1);
    let per_col = (rows.len() as u32).div_ceil(columns).max(1);
    let group_w = 3 * (cell + gap) + 3 * gap;
    let mut out = RgbImage::from_pixel(
        columns * group_w + gap,
        per_col * (cell + gap) + gap,
        image::Rgb([255, 255, 255]),
    );
    let scale = |img: &RgbImage| imageops::resize(img, cell, cell, imageops::FilterType::Nearest);
    for (k, (orig, a, b)) in rows.iter().enumerate() {
        let (col, row) = (k as u32 / per_col, k as u32 % per_col);
        let y = gap + row * (cell + gap);
        let x0 = gap + col * group_w;
        let orig = imageops::resize(&to_rgb(orig), cell, cell, imageops::FilterType::Triangle);
        for (j, tile) in [orig, scale(a), scale(b)].iter().enumerate() {
            let x = x0 + j as u32 * (cell + gap) + if j > 0 { gap } else { 0 };
            imageops::overlay(&mut out, tile, x as i64, y as i64);
        }
    }
    out
}

/// What `eqco data inspect` draws, as PNG bytes with the image's width and
/// height: the first `pairs` images of `loader`'s epoch-0 order, each with
/// the two views the loader makes of it in epoch 0 (two groups of rows side
/// by side past 6 images).
pub fn view_pairs_png(loader: &Loader, pairs: usize) -> Result<(Vec<u8>, u32, u32)> {
    let recipe = loader.recipe();
    let mut rows = Vec::new();
    for &i in loader.order(0).iter().take(pairs) {
        let (a, b) = loader.views(0, i)?;
        rows.push((
            loader.dataset().image(i)?,
            view_to_rgb(&a, recipe),
            view_to_rgb(&b, recipe),
        ));
    }
    let cell = recipe.size().max(96);
    let png = grid(&rows, cell, if rows.len() > 6 { 2 } else { 1 });
    let mut bytes = Vec::new();
    png.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::Internal(format!("encoding the view grid as PNG: {e}")))?;
    Ok((bytes, png.width(), png.height()))
}
