//! Pre- and post-processing kernels (`kernels/preprocess.cu`,
//! `kernels/postprocess.cu`), their CPU reference implementations, and
//! launch wrappers. (Being written.)
