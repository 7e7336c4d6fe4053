//! Pre- and post-processing around a model: a u8 HWC image to normalised f32
//! NCHW before it, softmax and top-k over the logits after it. Each op exists
//! twice with the same semantics, on the GPU (`kernels/preprocess.cu`,
//! `kernels/postprocess.cu`) and on the CPU, and both take the same
//! validated arguments ([`PreprocessParams`], [`SoftmaxTopkParams`]): a bad
//! size, channel count, `k` or `std` is a typed error before anything runs.
//!
//! | module | holds |
//! |---|---|
//! | [`reference`](mod@reference) | the CPU implementations: the definition the kernels are tested against, and the CPU mode's ops |
//! | [`launch`] | [`Preprocess`], [`Postprocess`], [`Stage`] (the input staging copy of `SessionSpec::stage_input`): the kernels loaded on a GPU, launched on a stream into raw device pointers (capturable in a CUDA graph) |
//!
//! What the ops compute:
//!
//! - **preprocess**: `dst[ch][y][x] = (src[y][x][ch] / 255 - mean[ch]) * (1 / std[ch])`,
//!   `src` u8 `H×W×C` row-major (`C` in `1..=4`), `dst` f32 `1×C×H×W`. The
//!   reciprocal of `std` is taken once, in f32, on the host; CPU and GPU then
//!   do the same IEEE operations and agree bit for bit (the result is within
//!   about one ulp of dividing by `std`).
//! - **softmax + top-k**: per row of logits `[rows, classes]`,
//!   `probs = exp(x - max) / sum(exp(x - max))`; the `k` (≤ [`MAX_TOP_K`])
//!   best classes by logit, ties to the lower index, NaN first (as libtorch's
//!   `topk`), with their probabilities. Ranking by the logits rather than the
//!   rounded probabilities makes the indices identical on CPU and GPU.
//!   Non-finite logits give NaN probabilities in their row, as libtorch.

pub mod launch;
pub mod reference;

pub use launch::{Postprocess, Preprocess, Stage};

use crate::error::{Error, Result};

/// Most channels a preprocessed image may have (gray, gray+alpha, RGB, RGBA).
pub const MAX_CHANNELS: usize = 4;

/// Largest `k` of the top-k.
pub const MAX_TOP_K: usize = 64;

/// Largest element count or dimension the kernels index (they use 32-bit `int`s).
const MAX_KERNEL_LEN: usize = i32::MAX as usize;

/// Validated arguments of the preprocess op: image shape, per-channel mean
/// and reciprocal standard deviation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreprocessParams {
    height: usize,
    width: usize,
    channels: usize,
    mean: [f32; MAX_CHANNELS],
    inv_std: [f32; MAX_CHANNELS],
}

impl PreprocessParams {
    /// Checks an image of `height × width × channels` u8 with one `mean` and
    /// one `std` per channel: `channels` in `1..=4`, nonzero sizes whose
    /// product fits the kernels' 32-bit indices, finite `mean`, finite
    /// nonzero `std` with a finite reciprocal. Errors are
    /// [`Error::Argument`] naming what was expected.
    pub fn new(height: usize, width: usize, channels: usize, mean: &[f32], std: &[f32]) -> Result<Self> {
        if !(1..=MAX_CHANNELS).contains(&channels) {
            return Err(Error::Argument(format!(
                "preprocess: {channels} channels; expected 1 to {MAX_CHANNELS} (gray, gray+alpha, RGB, RGBA)"
            )));
        }
        if height == 0 || width == 0 {
            return Err(Error::Argument(format!("preprocess: image of {height}×{width} pixels; both sides must be at least 1")));
        }
        let elements = height.checked_mul(width).and_then(|p| p.checked_mul(channels));
        if elements.is_none_or(|n| n > MAX_KERNEL_LEN) {
            return Err(Error::Argument(format!(
                "preprocess: image of {height}×{width}×{channels} is too large; at most {MAX_KERNEL_LEN} elements"
            )));
        }
        for (what, values) in [("mean", mean), ("std", std)] {
            if values.len() != channels {
                return Err(Error::Argument(format!(
                    "preprocess: {} {what} values for {channels} channels; expected one per channel",
                    values.len()
                )));
            }
        }
        let mut params = Self { height, width, channels, mean: [0.0; MAX_CHANNELS], inv_std: [0.0; MAX_CHANNELS] };
        for (ch, (&m, &s)) in mean.iter().zip(std).enumerate() {
            let inv = 1.0 / s;
            if !m.is_finite() || !s.is_finite() || !inv.is_finite() {
                return Err(Error::Argument(format!(
                    "preprocess: channel {ch} has mean {m} and std {s}; expected a finite mean and a finite, nonzero std \
                     whose reciprocal is finite"
                )));
            }
            params.mean[ch] = m;
            params.inv_std[ch] = inv;
        }
        Ok(params)
    }

    /// Image height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Image width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Channels per pixel (1 to 4).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// `height × width`.
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }

    /// Elements of the source (u8) and of the destination (f32): `height × width × channels`.
    pub fn len(&self) -> usize {
        self.pixels() * self.channels
    }

    /// Always false: an image has at least one pixel and one channel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The destination tensor's shape, `[1, channels, height, width]`.
    pub fn output_shape(&self) -> [i64; 4] {
        [1, self.channels as i64, self.height as i64, self.width as i64]
    }

    /// The per-channel means (`channels` of them).
    pub fn mean(&self) -> &[f32] {
        &self.mean[..self.channels]
    }

    /// The per-channel reciprocals `1 / std` (`channels` of them).
    pub fn inv_std(&self) -> &[f32] {
        &self.inv_std[..self.channels]
    }
}

/// Validated arguments of the softmax + top-k op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftmaxTopkParams {
    rows: usize,
    classes: usize,
    k: usize,
}

impl SoftmaxTopkParams {
    /// Checks `rows × classes` logits and a top-`k`: nonzero `rows` and
    /// `classes` that fit the kernels' 32-bit indices, `k ≤ classes` and
    /// `k ≤` [`MAX_TOP_K`] (`k = 0`: softmax only). Errors are
    /// [`Error::Argument`] naming what was expected.
    pub fn new(rows: usize, classes: usize, k: usize) -> Result<Self> {
        if rows == 0 || classes == 0 || rows > MAX_KERNEL_LEN || classes > MAX_KERNEL_LEN {
            return Err(Error::Argument(format!(
                "softmax: logits of {rows}×{classes}; expected 1 to {MAX_KERNEL_LEN} rows and classes"
            )));
        }
        if rows.checked_mul(classes).is_none() {
            return Err(Error::Argument(format!("softmax: logits of {rows}×{classes} overflow usize")));
        }
        if k > classes || k > MAX_TOP_K {
            return Err(Error::Argument(format!(
                "top-k: k = {k} with {classes} classes; expected k ≤ classes and k ≤ {MAX_TOP_K}"
            )));
        }
        Ok(Self { rows, classes, k })
    }

    /// Rows of logits (the batch).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Classes per row.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Entries of the top-k per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Elements of the logits and of the probabilities: `rows × classes`.
    pub fn len(&self) -> usize {
        self.rows * self.classes
    }

    /// Always false: there is at least one row and one class.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements of the top-k values and of the top-k indices: `rows × k`.
    pub fn top_len(&self) -> usize {
        self.rows * self.k
    }
}
