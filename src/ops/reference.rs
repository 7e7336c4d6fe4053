//! CPU implementations of the ops, with the semantics of the kernels
//! (`kernels/preprocess.cu`, `kernels/postprocess.cu`; see [`crate::ops`]):
//! the definition the kernels are tested against, and what the CPU mode runs.
//!
//! Bad arguments (sizes, channel count, `k`, `std`) and buffers of the wrong
//! length are [`Error::Argument`] errors; nothing here panics on its input.

use super::{PreprocessParams, SoftmaxTopkParams};
use crate::error::{Error, Result};

/// u8 HWC image (`h × w × c`, row-major) → f32 NCHW with batch 1, normalised
/// per channel: `dst[ch][y][x] = (src[y][x][ch] / 255 - mean[ch]) * (1 / std[ch])`.
///
/// `src` must hold exactly `h·w·c` bytes and `dst` exactly `h·w·c` floats;
/// `mean` and `std` one value per channel (see [`PreprocessParams::new`]).
pub fn preprocess_u8_hwc(src: &[u8], h: usize, w: usize, c: usize, mean: &[f32], std: &[f32], dst: &mut [f32]) -> Result<()> {
    preprocess(&PreprocessParams::new(h, w, c, mean, std)?, src, dst)
}

/// [`preprocess_u8_hwc`] with already validated parameters (what a session holds).
pub fn preprocess(params: &PreprocessParams, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let c = params.channels();
    check_len("preprocess source (u8, H×W×C)", src.len(), params.len())?;
    check_len("preprocess destination (f32, 1×C×H×W)", dst.len(), params.len())?;
    let pixels = params.pixels();
    for (ch, (plane, (&m, &inv))) in dst.chunks_exact_mut(pixels).zip(params.mean().iter().zip(params.inv_std())).enumerate() {
        for (out, &byte) in plane.iter_mut().zip(src.iter().skip(ch).step_by(c)) {
            // The kernel's operations, in its order (Rust never fuses them).
            *out = (f32::from(byte) / 255.0 - m) * inv;
        }
    }
    Ok(())
}

/// Softmax over each row of `logits` (`rows × classes`, row-major) into
/// `probs`, and each row's top `k` into `top_values` (probabilities) and
/// `top_indices` (classes), both `rows × k`, best first.
///
/// Softmax subtracts the row's maximum before `exp`. Ranking: higher logit
/// first, equal logits by lower class index, NaN above every number; see
/// [`crate::ops`]. `k` may be 0 (softmax only, empty top-k buffers).
pub fn softmax_topk(
    logits: &[f32],
    rows: usize,
    classes: usize,
    k: usize,
    probs: &mut [f32],
    top_values: &mut [f32],
    top_indices: &mut [i32],
) -> Result<()> {
    let params = SoftmaxTopkParams::new(rows, classes, k)?;
    check_len("softmax logits (f32, rows×classes)", logits.len(), params.len())?;
    check_len("softmax probabilities (f32, rows×classes)", probs.len(), params.len())?;
    check_len("top-k values (f32, rows×k)", top_values.len(), params.top_len())?;
    check_len("top-k indices (i32, rows×k)", top_indices.len(), params.top_len())?;
    for r in 0..rows {
        let x = &logits[r * classes..(r + 1) * classes];
        let p = &mut probs[r * classes..(r + 1) * classes];
        softmax_row(x, p);
        top_k_row(x, p, &mut top_values[r * k..(r + 1) * k], &mut top_indices[r * k..(r + 1) * k]);
    }
    Ok(())
}

fn check_len(what: &str, got: usize, expected: usize) -> Result<()> {
    if got != expected {
        return Err(Error::Argument(format!("{what} holds {got} elements; expected {expected}")));
    }
    Ok(())
}

fn softmax_row(x: &[f32], p: &mut [f32]) {
    // f32::max ignores NaN, as the kernel's fmaxf does.
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f32 = x.iter().map(|&v| (v - max).exp()).sum();
    for (out, &v) in p.iter_mut().zip(x) {
        *out = (v - max).exp() / sum;
    }
}

/// Whether class `ia` with logit `a` ranks before class `ib` with logit `b`.
fn ranks_before(a: f32, ia: usize, b: f32, ib: usize) -> bool {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => ia < ib,
        (true, false) => true,
        (false, true) => false,
        (false, false) if a != b => a > b,
        (false, false) => ia < ib,
    }
}

/// Selection by insertion into the output itself (sorted, best first): no
/// allocation, `O(classes · k)` at worst, about `O(classes)` on typical rows.
fn top_k_row(x: &[f32], p: &[f32], values: &mut [f32], indices: &mut [i32]) {
    let k = indices.len();
    let mut best: usize = 0; // entries of `indices` filled so far
    let logit_at = |i: i32| x[i as usize];
    for (j, &v) in x.iter().enumerate() {
        // Position of class j among the best so far, scanning from the worst.
        let mut pos = best;
        while pos > 0 && ranks_before(v, j, logit_at(indices[pos - 1]), indices[pos - 1] as usize) {
            pos -= 1;
        }
        if pos == k {
            continue;
        }
        let end = (best + 1).min(k);
        indices.copy_within(pos..end - 1, pos + 1);
        // j < classes ≤ i32::MAX (checked by SoftmaxTopkParams): lossless.
        indices[pos] = j as i32;
        best = end;
    }
    for (value, &i) in values.iter_mut().zip(indices.iter()) {
        *value = p[i as usize];
    }
}
