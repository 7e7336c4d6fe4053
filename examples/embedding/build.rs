fn main() {
    // rpath to libtorch and its CUDA libraries, and --no-as-needed so that
    // libtorch_cuda stays linked (cargo does not pass uminfer's own link
    // flags on to the crates that depend on it).
    uminfer_build::link();
}
