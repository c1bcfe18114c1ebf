//! RandAugment's ops on small known images, with the expected pixels worked out by hand from
//! each op's definition (PIL's conventions; see `runtime/src/data/randaug.rs`).

use effnet_runtime::data::Image;
use effnet_runtime::data::randaug::{self, OPS, Op, RandAugment, apply_op, level};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// 4x4 gray, values 10..95 (so AutoContrast's scale is exactly 255 / 85 = 3).
fn img4() -> Image {
    Image::gray(
        4,
        4,
        vec![
            10, 20, 30, 40, //
            50, 60, 70, 80, //
            90, 95, 15, 25, //
            35, 45, 55, 65,
        ],
    )
}

const F: u8 = 7; // fill value

#[test]
fn identity() {
    assert_eq!(apply_op(Op::Identity, &img4(), 1.0, F), img4());
}

#[test]
fn auto_contrast_stretches_min_max_to_full_range() {
    let out = apply_op(Op::AutoContrast, &img4(), 1.0, F);
    assert_eq!(
        out.data,
        vec![
            0, 30, 60, 90, 120, 150, 180, 210, 240, 255, 15, 45, 75, 105, 135, 165
        ]
    );
    // A flat image is left alone.
    let flat = Image::filled(3, 3, 1, 42);
    assert_eq!(randaug::auto_contrast(&flat), flat);
}

#[test]
fn equalize_follows_pil() {
    // 255 pixels of 50, 255 of 100, 10 of 200 (26 x 20 = 520): step = (520 - 10) / 255 = 2,
    // lut[50] = 1 / 2 = 0, lut[100] = (1 + 255) / 2 = 128, lut[200] = (1 + 510) / 2 = 255.
    let mut data = vec![50u8; 255];
    data.extend(vec![100u8; 255]);
    data.extend(vec![200u8; 10]);
    let img = Image::gray(26, 20, data);
    let out = apply_op(Op::Equalize, &img, 1.0, F);
    assert!(out.data[..255].iter().all(|&v| v == 0));
    assert!(out.data[255..510].iter().all(|&v| v == 128));
    assert!(out.data[510..].iter().all(|&v| v == 255));
    // Fewer than 256 pixels beyond the top level: unchanged (step 0).
    assert_eq!(apply_op(Op::Equalize, &img4(), 1.0, F), img4());
}

#[test]
fn rotate_quarter_turn_counter_clockwise() {
    // The right column becomes the top row.
    let out = randaug::rotate(&img4(), 90.0, F);
    assert_eq!(
        out.data,
        vec![
            40, 80, 25, 65, //
            30, 70, 15, 55, //
            20, 60, 95, 45, //
            10, 50, 90, 35,
        ]
    );
    // Rotate's level: 30 degrees at full magnitude, both signs; level 0 is the identity.
    assert_eq!(apply_op(Op::Rotate, &img4(), 0.0, F), img4());
    assert_eq!(
        apply_op(Op::Rotate, &img4(), 1.0, F),
        randaug::rotate(&img4(), 30.0, F)
    );
    assert_eq!(
        apply_op(Op::Rotate, &img4(), -1.0, F),
        randaug::rotate(&img4(), -30.0, F)
    );
}

#[test]
fn shear_x_and_y_about_the_center() {
    // Output (u, v) reads input (u + 0.5 v, v): rows shift by floor(0.5 * (y - 1.5) + 0.5).
    assert_eq!(
        randaug::shear_x(&img4(), 0.5, F).data,
        vec![
            F, 10, 20, 30, //
            50, 60, 70, 80, //
            90, 95, 15, 25, //
            45, 55, 65, F,
        ]
    );
    assert_eq!(
        randaug::shear_y(&img4(), 0.5, F).data,
        vec![
            F, 20, 30, 80, //
            10, 60, 70, 25, //
            50, 95, 15, 65, //
            90, 45, 55, F,
        ]
    );
    // 0.3 at full magnitude.
    assert_eq!(
        apply_op(Op::ShearX, &img4(), 1.0, F),
        randaug::shear_x(&img4(), 0.3, F)
    );
}

#[test]
fn translate_moves_content_and_fills() {
    assert_eq!(
        randaug::translate(&img4(), 1, 0, F).data,
        vec![
            F, 10, 20, 30, //
            F, 50, 60, 70, //
            F, 90, 95, 15, //
            F, 35, 45, 55,
        ]
    );
    assert_eq!(
        randaug::translate(&img4(), 0, -1, F).data,
        vec![
            50, 60, 70, 80, //
            90, 95, 15, 25, //
            35, 45, 55, 65, //
            F, F, F, F,
        ]
    );
    // 0.45 * size at full magnitude: 0.45 * 4 = 1.8 -> 2 pixels.
    assert_eq!(
        apply_op(Op::TranslateX, &img4(), 1.0, F),
        randaug::translate(&img4(), 2, 0, F)
    );
    assert_eq!(
        apply_op(Op::TranslateY, &img4(), -1.0, F),
        randaug::translate(&img4(), 0, -2, F)
    );
}

#[test]
fn solarize_inverts_above_the_threshold() {
    // level 0.75: threshold 256 - 192 = 64.
    let out = apply_op(Op::Solarize, &img4(), 0.75, F);
    assert_eq!(
        out.data,
        vec![
            10, 20, 30, 40, 50, 60, 185, 175, 165, 160, 15, 25, 35, 45, 55, 190
        ]
    );
    // Level 0 inverts nothing; the sign does not matter.
    assert_eq!(apply_op(Op::Solarize, &img4(), 0.0, F), img4());
    assert_eq!(
        apply_op(Op::Solarize, &img4(), -0.75, F),
        apply_op(Op::Solarize, &img4(), 0.75, F)
    );
}

#[test]
fn posterize_keeps_the_top_bits() {
    // Full magnitude: 8 - 4 = 4 bits.
    let out = apply_op(Op::Posterize, &img4(), 1.0, F);
    assert_eq!(
        out.data,
        vec![0, 16, 16, 32, 48, 48, 64, 80, 80, 80, 0, 16, 32, 32, 48, 64]
    );
    assert_eq!(apply_op(Op::Posterize, &img4(), 0.0, F), img4());
}

#[test]
fn brightness_scales_and_rounds() {
    let out = randaug::brightness(&img4(), 1.5);
    assert_eq!(
        out.data,
        vec![
            15, 30, 45, 60, 75, 90, 105, 120, 135, 143, 23, 38, 53, 68, 83, 98
        ]
    );
    // Factor 1 - 0.9 = 0.1 at level -1.
    assert_eq!(
        apply_op(Op::Brightness, &img4(), -1.0, F),
        randaug::brightness(&img4(), 0.1)
    );
}

#[test]
fn contrast_blends_with_the_mean_gray() {
    // Mean 785 / 16 = 49.06 -> 49; 49 + 0.5 * (v - 49), rounded half away from zero.
    let out = randaug::contrast(&img4(), 0.5);
    assert_eq!(
        out.data,
        vec![
            30, 35, 40, 45, 50, 55, 60, 65, 70, 72, 32, 37, 42, 47, 52, 57
        ]
    );
}

#[test]
fn color_blends_with_gray_and_ignores_gray_images() {
    assert_eq!(randaug::color(&img4(), 1.9), img4());
    let px = Image {
        width: 1,
        height: 1,
        channels: 3,
        data: vec![200, 100, 50],
    };
    // PIL luma: (200 * 19595 + 100 * 38470 + 50 * 7471 + 32768) >> 16 = 124.
    assert_eq!(randaug::gray_level(200, 100, 50), 124);
    assert_eq!(randaug::color(&px, 0.0).data, vec![124, 124, 124]);
    assert_eq!(randaug::color(&px, 2.0).data, vec![255, 76, 0]);
}

#[test]
fn sharpness_blends_with_the_smoothed_interior() {
    // Interior pixels smoothed with [[1,1,1],[1,5,1],[1,1,1]] / 13: 680/13, 715/13, 895/13,
    // 570/13 -> 52, 55, 69, 44; the border keeps its values.
    let out = randaug::sharpness(&img4(), 0.0);
    assert_eq!(
        out.data,
        vec![
            10, 20, 30, 40, //
            50, 52, 55, 80, //
            90, 69, 44, 25, //
            35, 45, 55, 65,
        ]
    );
    assert_eq!(randaug::sharpness(&img4(), 1.0), img4());
}

#[test]
fn levels_are_capped_at_magnitude_ten() {
    assert_eq!(level(0.0), 0.0);
    assert_eq!(level(5.0), 0.5);
    assert_eq!(level(10.0), 1.0);
    assert_eq!(level(15.0), 1.0);
    assert_eq!(OPS.len(), 14);
}

#[test]
fn policy_is_deterministic_and_magnitude_zero_is_identity() {
    let img = img4();
    let ra = RandAugment {
        num_ops: 2,
        magnitude: 9.0,
        fill: 0,
    };
    let a = ra.apply(&img, &mut ChaCha8Rng::seed_from_u64(3));
    let b = ra.apply(&img, &mut ChaCha8Rng::seed_from_u64(3));
    assert_eq!(a, b);
    // Over many seeds some image changes.
    assert!((0..20).any(|s| ra.apply(&img, &mut ChaCha8Rng::seed_from_u64(s)) != img));
    let zero = RandAugment {
        num_ops: 2,
        magnitude: 0.0,
        fill: 0,
    };
    assert_eq!(zero.apply(&img, &mut ChaCha8Rng::seed_from_u64(3)), img);
}
