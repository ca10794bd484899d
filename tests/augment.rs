//! Augmentations: shapes and ranges, determinism, identities, the crop
//! distribution, and the photometric formulas against hand values.

mod common;

use eqco::data::augment::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, gaussian_blur, grayscale,
    kernel_size, ColorJitter, Crop, Normalize, RandomResizedCrop, Recipe, RecipeName,
};
use eqco::data::Image;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn rgb_image(w: u32, h: u32) -> Image {
    let img = common::rgb(3, w, h);
    Image::new(w, h, 3, img.into_raw())
}

fn gray_image(w: u32, h: u32) -> Image {
    let data = (0..w * h).map(|i| (i * 37 % 256) as u8).collect();
    Image::new(w, h, 1, data)
}

fn identity_norm(c: u8) -> Normalize {
    Normalize::uniform(0.0, 1.0, c)
}

fn view(recipe: &Recipe, img: &Image, seed: u64) -> Vec<f32> {
    let mut out = vec![0f32; recipe.view_len()];
    recipe
        .apply(img, &mut ChaCha8Rng::seed_from_u64(seed), &mut out)
        .unwrap();
    out
}

/// A recipe that only resizes to the image's own size: the identity on pixels.
fn plain(size: u32, channels: u8) -> Recipe {
    Recipe {
        crop: Crop::Center { size, resize: size },
        flip: 0.0,
        jitter: None,
        grayscale: 0.0,
        blur: None,
        normalize: identity_norm(channels),
        channels,
    }
}

#[test]
fn every_recipe_gives_the_right_shape_and_range() {
    let img = rgb_image(50, 40);
    for name in [
        RecipeName::Mocov1,
        RecipeName::Mocov2,
        RecipeName::Simclr,
        RecipeName::Eval,
    ] {
        for size in [24, 32] {
            let r = Recipe::named(name, size, 3, identity_norm(3)).unwrap();
            for seed in 0..20 {
                let v = view(&r, &img, seed);
                assert_eq!(v.len(), 3 * (size * size) as usize);
                assert!(
                    v.iter().all(|x| (0.0..=1.0).contains(x)),
                    "{name:?}: out of [0, 1]"
                );
            }
        }
    }
    // Normalisation is applied last.
    let r = Recipe::named(RecipeName::Eval, 32, 3, Normalize::imagenet()).unwrap();
    let v = view(&r, &img, 0);
    let raw = view(
        &Recipe::named(RecipeName::Eval, 32, 3, identity_norm(3)).unwrap(),
        &img,
        0,
    );
    let i = 32 * 32 + 5;
    assert!((v[i] - (raw[i] - 0.456) / 0.224).abs() < 1e-5);
}

#[test]
fn a_seed_fixes_the_view() {
    let img = rgb_image(64, 48);
    let r = Recipe::named(RecipeName::Mocov2, 32, 3, Normalize::imagenet()).unwrap();
    assert_eq!(view(&r, &img, 7), view(&r, &img, 7));
    assert_ne!(view(&r, &img, 7), view(&r, &img, 8));
}

#[test]
fn the_identity_pipeline_returns_the_pixels() {
    let img = rgb_image(16, 16);
    let v = view(&plain(16, 3), &img, 0);
    for (x, y, c) in [(0, 0, 0), (15, 3, 1), (7, 15, 2)] {
        let got = v[c * 256 + y * 16 + x];
        assert!((got - img.at(x as u32, y as u32, c as u8) as f32 / 255.0).abs() < 1e-6);
    }
}

#[test]
fn zero_strength_jitter_is_the_identity() {
    let img = rgb_image(16, 16);
    let base = plain(16, 3);
    let jitter = Recipe {
        jitter: Some(ColorJitter {
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
            p: 1.0,
        }),
        ..base.clone()
    };
    assert_eq!(view(&base, &img, 1), view(&jitter, &img, 1));
    // And factor 1 of each adjustment is the identity too.
    let mut x = view(&base, &img, 1);
    let orig = x.clone();
    adjust_brightness(&mut x, 1.0);
    adjust_contrast(&mut x, 256, 1.0);
    adjust_saturation(&mut x, 256, 1.0);
    adjust_hue(&mut x, 256, 0.0);
    for (a, b) in x.iter().zip(&orig) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn two_flips_are_the_identity() {
    let img = rgb_image(20, 20);
    let mirrored = Image::new(
        20,
        20,
        3,
        (0..20u32)
            .flat_map(|y| (0..20u32).flat_map(move |x| (0..3u8).map(move |c| (x, y, c))))
            .map(|(x, y, c)| img.at(19 - x, y, c))
            .collect(),
    );
    let flip = Recipe {
        flip: 1.0,
        ..plain(20, 3)
    };
    assert_eq!(view(&flip, &mirrored, 0), view(&plain(20, 3), &img, 0));
}

#[test]
fn crop_areas_and_ratios_follow_the_configuration() {
    let rrc = RandomResizedCrop {
        size: 32,
        scale: (0.2, 1.0),
        ratio: (3.0 / 4.0, 4.0 / 3.0),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (n, side) = (20_000, 1000u32);
    let (mut area_sum, mut log_ratio_sum) = (0.0, 0.0);
    let mut in_first_half = 0;
    for _ in 0..n {
        let b = rrc.params(side, side, &mut rng);
        assert!(b.x + b.w <= side && b.y + b.h <= side);
        let area = (b.w * b.h) as f64 / (side * side) as f64;
        let ratio = b.w as f64 / b.h as f64;
        assert!((0.199..=1.0).contains(&area), "area {area}");
        assert!((0.749..=1.335).contains(&ratio), "ratio {ratio}");
        area_sum += area;
        log_ratio_sum += ratio.ln();
        if area < 0.6 {
            in_first_half += 1;
        }
    }
    // Large areas at extreme ratios do not fit in the image and are redrawn,
    // which pulls the areas below U(0.2, 1)'s: torchvision's get_params,
    // simulated with the same 20k draws on 1000×1000, gives a mean area of
    // 0.539 and P(area < 0.6) = 0.595.
    let mean_area = area_sum / n as f64;
    assert!((0.525..0.553).contains(&mean_area), "mean area {mean_area}");
    assert!(
        (log_ratio_sum / n as f64).abs() < 0.01,
        "log-ratio is symmetric"
    );
    let frac = in_first_half as f64 / n as f64;
    assert!((0.58..0.61).contains(&frac), "P(area < 0.6) = {frac}");
    // A very wide image falls back to a central crop with the ratio clamped.
    let b = rrc.params(1000, 10, &mut rng);
    assert!(b.w as f64 / b.h as f64 <= 4.0 / 3.0 + 0.1);
}

#[test]
fn photometric_formulas_match_hand_values() {
    // One pixel (r, g, b) = (0.5, 0.25, 1.0), planes of one pixel.
    let px = || vec![0.5f32, 0.25, 1.0];
    let mut x = px();
    adjust_brightness(&mut x, 1.5);
    assert_eq!(x, vec![0.75, 0.375, 1.0]);

    let l = 0.299 * 0.5 + 0.587 * 0.25 + 0.114 * 1.0;
    let mut x = px();
    adjust_saturation(&mut x, 1, 0.0);
    assert!(
        x.iter().all(|v| (v - l).abs() < 1e-6),
        "saturation 0 is gray: {x:?}"
    );
    let mut x = px();
    grayscale(&mut x, 1);
    assert!(x.iter().all(|v| (v - l).abs() < 1e-6));

    // Contrast blends towards the mean luma of the image.
    let mut x = vec![0.2f32, 0.6, 0.2, 0.6, 0.2, 0.6]; // 2 pixels, gray 0.2 and 0.6
    adjust_contrast(&mut x, 2, 0.5);
    let want = [0.3f32, 0.5];
    for (i, w) in want.iter().enumerate() {
        assert!((x[i] - w).abs() < 1e-5, "{x:?}");
    }

    // A hue shift of 1/3 turn takes pure red to pure green, and 1 turn is the identity.
    let mut x = vec![1.0f32, 0.0, 0.0];
    adjust_hue(&mut x, 1, 1.0 / 3.0);
    assert!(
        (x[0]).abs() < 1e-5 && (x[1] - 1.0).abs() < 1e-5 && x[2].abs() < 1e-5,
        "{x:?}"
    );
    let mut x = px();
    adjust_hue(&mut x, 1, 0.5);
    adjust_hue(&mut x, 1, 0.5);
    for (a, b) in x.iter().zip(px()) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn blur_keeps_constants_and_mass() {
    assert_eq!(kernel_size(224, 0.1), 23);
    assert_eq!(kernel_size(32, 0.1), 3);
    assert_eq!(kernel_size(96, 0.1), 11);
    let side = 16;
    let mut flat = vec![0.4f32; side * side];
    gaussian_blur(&mut flat, side, 1.5, 5);
    assert!(flat.iter().all(|v| (v - 0.4).abs() < 1e-6));
    // A single bright pixel in the middle spreads out but keeps its mass.
    let mut dot = vec![0f32; side * side];
    dot[8 * side + 8] = 1.0;
    gaussian_blur(&mut dot, side, 1.0, 7);
    let sum: f32 = dot.iter().sum();
    assert!((sum - 1.0).abs() < 1e-5, "{sum}");
    assert!(dot[8 * side + 8] < 0.2 && dot[8 * side + 9] > 0.05);
    assert!(
        (dot[8 * side + 9] - dot[8 * side + 7]).abs() < 1e-6,
        "symmetric"
    );
}

#[test]
fn grayscale_inputs_are_kept_or_replicated() {
    let img = gray_image(28, 28);
    let one = plain(28, 1);
    let three = plain(28, 3);
    let a = view(&one, &img, 0);
    let b = view(&three, &img, 0);
    assert_eq!(a.len(), 784);
    assert_eq!(b.len(), 3 * 784);
    assert_eq!(&b[..784], &a[..]);
    assert_eq!(&b[784..1568], &a[..]);
    assert_eq!(&b[1568..], &a[..]);
    assert!((a[29] - img.at(1, 1, 0) as f32 / 255.0).abs() < 1e-6);
    // Every recipe runs on 1-channel images (saturation, hue, grayscale are no-ops).
    for name in [RecipeName::Mocov1, RecipeName::Mocov2, RecipeName::Simclr] {
        let r = Recipe::named(name, 28, 1, Normalize::uniform(0.286, 0.353, 1)).unwrap();
        assert_eq!(view(&r, &img, 3).len(), 784);
    }
}

#[test]
fn impossible_recipes_are_rejected() {
    let e = Recipe::named(RecipeName::Mocov2, 32, 2, identity_norm(2)).unwrap_err();
    assert!(e.to_string().contains("`channels`"), "{e}");
    let e = Recipe::named(RecipeName::Mocov2, 32, 3, identity_norm(1)).unwrap_err();
    assert!(e.to_string().contains("`normalize`"), "{e}");
    let e = Recipe::named(RecipeName::Mocov2, 0, 3, identity_norm(3)).unwrap_err();
    assert!(e.to_string().contains("`image_size`"), "{e}");
}
