//! [`HostTensor`]: a named tensor of any dtype in plain host memory, owned;
//! what the command line reads from and writes to `.npy` / `.npz` files,
//! the bench draws its inputs as, and reference results are compared in.
//! Not a request path: sessions read and write their regions in place.

use crate::dtype::{Bool, DType};
use crate::error::{Error, Result};
use crate::memory::Element;
use std::path::Path;

/// A named tensor in host memory: `data` holds `numel × dtype.size()`
/// bytes in native (little-endian) order, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
    data: Vec<u8>,
}

/// Elements of `shape`, or why it has none that fit memory.
pub fn numel(shape: &[i64]) -> Result<usize> {
    crate::memory::region::checked_numel(shape)
}

impl HostTensor {
    /// A tensor over `data`, checked to hold exactly `shape`'s elements of `dtype`.
    pub fn new(name: impl Into<String>, dtype: DType, shape: &[i64], data: Vec<u8>) -> Result<Self> {
        let name = name.into();
        let want = numel(shape)?.checked_mul(dtype.size()).ok_or_else(|| Error::Shape(format!("{name}: shape {shape:?} overflows")))?;
        if data.len() != want {
            return Err(Error::Shape(format!("{name}: {} bytes for {dtype} {shape:?}, which takes {want}", data.len())));
        }
        if dtype == DType::Bool {
            if let Some(b) = data.iter().find(|&&b| b > 1) {
                return Err(Error::Argument(format!("{name}: bool elements are 0 or 1, found the byte {b}")));
            }
        }
        Ok(Self { name, dtype, shape: shape.to_vec(), data })
    }

    /// A tensor of `values`.
    pub fn from_values<T: Element>(name: impl Into<String>, shape: &[i64], values: &[T]) -> Result<Self> {
        // SAFETY: `values` is a slice of plain elements without padding
        // (Element); its bytes are initialised and readable for its length.
        let bytes = unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) };
        Self::new(name, T::DTYPE, shape, bytes.to_vec())
    }

    /// Zeros of `dtype` and `shape`.
    pub fn zeros(name: impl Into<String>, dtype: DType, shape: &[i64]) -> Result<Self> {
        let n = numel(shape)?.checked_mul(dtype.size()).ok_or_else(|| Error::Shape(format!("shape {shape:?} overflows")))?;
        Self::new(name, dtype, shape, vec![0; n])
    }

    /// The elements' bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The elements' bytes, writable (a bool tensor's stay 0 or 1 only if the
    /// caller keeps them so: [`HostTensor::new`] checks, this does not).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// The elements as `T`, checking the dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::Argument(format!("{} holds {}, not {}", self.name, self.dtype, T::DTYPE)));
        }
        // SAFETY: `data` holds exactly numel() elements of T (checked at
        // construction); every bit pattern is a valid T (Element); the read
        // is unaligned-safe.
        Ok((0..self.numel()).map(|i| unsafe { std::ptr::read_unaligned(self.data.as_ptr().cast::<T>().add(i)) }).collect())
    }

    /// Every element as f64 (bools 0/1): for comparisons across dtypes.
    pub fn to_f64(&self) -> Vec<f64> {
        macro_rules! conv {
            ($($d:ident => $t:ty, $f:expr);*) => {
                match self.dtype {
                    $(DType::$d => self.to_vec::<$t>().map(|v| v.into_iter().map($f).collect()),)*
                }
            };
        }
        conv! {
            F32 => f32, f64::from; F64 => f64, |x| x; F16 => half::f16, f64::from; Bf16 => half::bf16, f64::from;
            I64 => i64, |x| x as f64; I32 => i32, f64::from; I16 => i16, f64::from; I8 => i8, f64::from;
            U8 => u8, f64::from; Bool => Bool, |b: Bool| f64::from(u8::from(b.get()))
        }
        .expect("to_vec of the tensor's own dtype")
    }

    /// This tensor converted to `dtype` (through libtorch's `to`, as
    /// PyTorch would convert it; a float32 file for a bf16 input).
    pub fn converted(&self, dtype: DType) -> Result<Self> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        Self::from_tensor(&self.name, &self.to_tensor()?.f_to_kind(dtype.kind())?)
    }

    /// A CPU libtorch tensor holding a copy.
    pub fn to_tensor(&self) -> Result<tch::Tensor> {
        Ok(tch::Tensor::f_from_data_size(&self.data, &self.shape, self.dtype.kind())?)
    }

    /// A copy of `t` (any device, any layout), named `name`.
    pub fn from_tensor(name: &str, t: &tch::Tensor) -> Result<Self> {
        let dtype = DType::from_kind(t.kind()).ok_or_else(|| Error::Argument(format!("{name}: dtype {:?} is not one uminfer carries", t.kind())))?;
        let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        let n = t.numel();
        let mut data = vec![0u8; n * dtype.size()];
        t.f_copy_data_u8(&mut data, n)?;
        Self::new(name, dtype, &t.size(), data)
    }

    /// Whether `self` matches `want` (same name aside): same dtype and
    /// shape, floats within `tol` relative to `want`'s largest magnitude,
    /// everything else exactly. The error says where they differ.
    pub fn check_close(&self, want: &HostTensor, tol: f64) -> std::result::Result<(), String> {
        if self.dtype != want.dtype || self.shape != want.shape {
            return Err(format!("{}: {} {:?}, expected {} {:?}", want.name, self.dtype, self.shape, want.dtype, want.shape));
        }
        let err = max_rel_err(&self.to_f64(), &want.to_f64());
        let limit = if want.dtype.is_float() { tol } else { 0.0 };
        if err > limit {
            return Err(format!("{}: relative error {err:e} (limit {limit:e})", want.name));
        }
        Ok(())
    }
}

/// Largest absolute difference relative to `want`'s largest magnitude; a
/// NaN or a length mismatch is an infinite error.
pub fn max_rel_err(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(1e-12f64, |m, x| m.max(x.abs()));
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).map(|d| if d.is_nan() { f64::INFINITY } else { d }).fold(0.0, f64::max) / scale
}

/// Fills `bytes` (elements of `dtype`) with pseudo-random values from
/// `seed`: floats in [0, 1), integers in `range` ([low, high); default
/// [0, 2), valid for masks and any index), bools 0 or 1.
pub fn fill_random(dtype: DType, range: Option<(i64, i64)>, seed: u64, bytes: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (lo, hi) = range.unwrap_or((0, 2));
    let span = (hi.saturating_sub(lo)).max(1) as u64;
    for e in bytes.chunks_exact_mut(dtype.size()) {
        let r = next();
        let unit = (r >> 40) as f32 / (1u64 << 24) as f32;
        let int = lo.saturating_add((r % span) as i64);
        match dtype {
            DType::F32 => e.copy_from_slice(&unit.to_ne_bytes()),
            DType::F64 => e.copy_from_slice(&f64::from(unit).to_ne_bytes()),
            DType::F16 => e.copy_from_slice(&half::f16::from_f32(unit).to_ne_bytes()),
            DType::Bf16 => e.copy_from_slice(&half::bf16::from_f32(unit).to_ne_bytes()),
            DType::I64 => e.copy_from_slice(&int.to_ne_bytes()),
            DType::I32 => e.copy_from_slice(&(int as i32).to_ne_bytes()),
            DType::I16 => e.copy_from_slice(&(int as i16).to_ne_bytes()),
            DType::I8 => e.copy_from_slice(&(int as i8).to_ne_bytes()),
            DType::U8 => e[0] = int as u8,
            DType::Bool => e[0] = (r >> 63) as u8,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// The tensor of one `.npy` stream named `name`. bf16 has no NumPy dtype:
/// such tensors are written and read as float32 (see [`HostTensor::converted`]).
fn read_npy_from<R: std::io::Read>(name: &str, npy: npyz::NpyFile<R>, path: &Path) -> Result<HostTensor> {
    let bad = |what: String| Error::Argument(format!("{} ({name}): {what}", path.display()));
    if npy.order() == npyz::Order::Fortran {
        return Err(bad("Fortran-ordered arrays are not read; save it C-ordered (np.ascontiguousarray)".into()));
    }
    let descr = npy.dtype().descr();
    let shape: Vec<i64> = npy.shape().iter().map(|&d| i64::try_from(d).map_err(|_| bad(format!("dimension {d} too large")))).collect::<Result<_>>()?;
    macro_rules! read {
        ($t:ty, $d:ident) => {{
            let v: Vec<$t> = npy.into_vec().map_err(io_err(path))?;
            HostTensor::from_values(name, &shape, &v)
        }};
    }
    match descr.trim_matches('\'') {
        "<f4" => read!(f32, F32),
        "<f8" => read!(f64, F64),
        "<f2" => read!(half::f16, F16),
        "<i8" => read!(i64, I64),
        "<i4" => read!(i32, I32),
        "<i2" => read!(i16, I16),
        "|i1" => read!(i8, I8),
        "|u1" => read!(u8, U8),
        "|b1" => {
            let v: Vec<bool> = npy.into_vec().map_err(io_err(path))?;
            let v: Vec<Bool> = v.into_iter().map(Bool::from).collect();
            HostTensor::from_values(name, &shape, &v)
        }
        other => Err(bad(format!(
            "dtype {other} is not one uminfer reads (float32, float64, float16, int64, int32, int16, int8, uint8, bool, little-endian; bfloat16 as float32)"
        ))),
    }
}

/// Reads a `.npy` file; the tensor is named after the file's stem.
pub fn read_npy(path: &Path) -> Result<HostTensor> {
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(f)).map_err(io_err(path))?;
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    read_npy_from(&name, npy, path)
}

/// Reads every array of a `.npz` file, in the archive's order.
pub fn read_npz(path: &Path) -> Result<Vec<HostTensor>> {
    let mut npz = npyz::npz::NpzArchive::open(path).map_err(io_err(path))?;
    // In the archive's order (`array_names` has a hash map's).
    let zip = npz.zip_archive();
    let mut names = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let member = zip.by_index(i).map_err(|e| Error::Argument(format!("{}: {e}", path.display())))?;
        names.extend(npyz::npz::array_name_from_file_name(member.name()).map(str::to_string));
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let npy = npz.by_name(&name).map_err(io_err(path))?.ok_or_else(|| Error::Argument(format!("{}: array {name} vanished", path.display())))?;
        out.push(read_npy_from(&name, npy, path)?);
    }
    Ok(out)
}

/// Where a `.npy` array goes: a file of its own or a member of a `.npz`.
trait NpyDest {
    fn write<T: npyz::AutoSerialize + Copy>(self, shape: &[u64], values: &[T]) -> std::io::Result<()>;
}

struct NpyFileDest<'a>(&'a Path);

impl NpyDest for NpyFileDest<'_> {
    fn write<T: npyz::AutoSerialize + Copy>(self, shape: &[u64], values: &[T]) -> std::io::Result<()> {
        use npyz::WriterBuilder;
        let f = std::io::BufWriter::new(std::fs::File::create(self.0)?);
        let mut w = npyz::WriteOptions::new().default_dtype().shape(shape).writer(f).begin_nd()?;
        w.extend(values.iter().copied())?;
        w.finish()
    }
}

struct NpzMemberDest<'a, W: std::io::Write + std::io::Seek>(&'a mut npyz::npz::NpzWriter<W>, &'a str);

impl<W: std::io::Write + std::io::Seek> NpyDest for NpzMemberDest<'_, W> {
    fn write<T: npyz::AutoSerialize + Copy>(self, shape: &[u64], values: &[T]) -> std::io::Result<()> {
        use npyz::WriterBuilder;
        let mut w = self.0.array::<T>(self.1, Default::default())?.default_dtype().shape(shape).begin_nd()?;
        w.extend(values.iter().copied())?;
        w.finish()
    }
}

/// Writes `t` as one `.npy` array; bf16 (which NumPy lacks) as float32.
fn write_npy_to(t: &HostTensor, dest: impl NpyDest) -> std::io::Result<()> {
    let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
    let own = "the tensor's own dtype";
    match t.dtype {
        DType::F32 => dest.write(&shape, &t.to_vec::<f32>().expect(own)),
        DType::F64 => dest.write(&shape, &t.to_vec::<f64>().expect(own)),
        DType::F16 => dest.write(&shape, &t.to_vec::<half::f16>().expect(own)),
        DType::Bf16 => dest.write(&shape, &t.to_vec::<half::bf16>().expect(own).into_iter().map(f32::from).collect::<Vec<_>>()),
        DType::I64 => dest.write(&shape, &t.to_vec::<i64>().expect(own)),
        DType::I32 => dest.write(&shape, &t.to_vec::<i32>().expect(own)),
        DType::I16 => dest.write(&shape, &t.to_vec::<i16>().expect(own)),
        DType::I8 => dest.write(&shape, &t.to_vec::<i8>().expect(own)),
        DType::U8 => dest.write(&shape, &t.to_vec::<u8>().expect(own)),
        DType::Bool => dest.write(&shape, &t.to_vec::<Bool>().expect(own).into_iter().map(Bool::get).collect::<Vec<_>>()),
    }
}

/// Writes `t` to a `.npy` file (bf16 as float32).
pub fn write_npy(path: &Path, t: &HostTensor) -> Result<()> {
    write_npy_to(t, NpyFileDest(path)).map_err(io_err(path))
}

/// Writes `tensors` to a `.npz` file, each under its name (bf16 as float32).
pub fn write_npz(path: &Path, tensors: &[HostTensor]) -> Result<()> {
    let mut npz = npyz::npz::NpzWriter::create(path).map_err(io_err(path))?;
    for t in tensors {
        write_npy_to(t, NpzMemberDest(&mut npz, &t.name)).map_err(io_err(path))?;
    }
    drop(npz);
    Ok(())
}

/// A tensor file as the command line names one: `NAME=FILE.npy` (a named
/// `.npy`), `FILE.npy` (named after its stem; a one-input model takes it
/// whatever the name), or `FILE.npz` (every tensor under its own name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorFile {
    /// The name given before `=`, if any.
    pub name: Option<String>,
    /// The `.npy` or `.npz` file.
    pub path: std::path::PathBuf,
}

impl std::str::FromStr for TensorFile {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s.split_once('=') {
            Some((name, path)) if !name.is_empty() && !name.contains('/') => Self { name: Some(name.into()), path: path.into() },
            _ => Self { name: None, path: s.into() },
        })
    }
}

/// The tensors of `files`, in order: a named `.npy` under its name, a lone
/// `.npy` under its stem, an `.npz`'s tensors under theirs.
pub fn read_tensor_files(files: &[TensorFile]) -> Result<Vec<HostTensor>> {
    let mut out = Vec::new();
    for f in files {
        if f.path.extension().is_some_and(|e| e == "npz") {
            if let Some(name) = &f.name {
                return Err(Error::Argument(format!("{name}={}: an .npz holds its tensors under their own names; give it without NAME=", f.path.display())));
            }
            out.extend(read_npz(&f.path)?);
        } else {
            let mut t = read_npy(&f.path)?;
            if let Some(n) = &f.name {
                t.name.clone_from(n);
            }
            out.push(t);
        }
    }
    Ok(out)
}

/// Writes `tensors` to `path`: an `.npz` holds any number (each under its
/// name), any other path one tensor as `.npy` (bf16 as float32 in both).
pub fn write_tensor_file(path: &Path, tensors: &[HostTensor]) -> Result<()> {
    if path.extension().is_some_and(|e| e == "npz") {
        write_npz(path, tensors)?;
    } else {
        let [only] = tensors else {
            let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
            return Err(Error::Argument(format!("{} tensors ({}) do not fit one .npy file {}: give an .npz path", tensors.len(), names.join(", "), path.display())));
        };
        write_npy(path, only)?;
    }
    for t in tensors.iter().filter(|t| t.dtype == DType::Bf16) {
        tracing::info!("output `{}` is bf16: written as float32 (NumPy has no bfloat16)", t.name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_dtype() -> Vec<HostTensor> {
        DType::ALL
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let mut t = HostTensor::zeros(format!("t_{d}"), d, &[2, 3]).unwrap();
                fill_random(d, Some((-3, 4)), i as u64 + 1, t.bytes_mut());
                t
            })
            .collect()
    }

    #[test]
    fn every_dtype_round_trips_through_npz_and_npy_bf16_as_float32() {
        let dir = std::env::temp_dir().join(format!("uminfer-npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ts = every_dtype();
        let npz = dir.join("all.npz");
        write_npz(&npz, &ts).unwrap();
        let back = read_npz(&npz).unwrap();
        assert_eq!(back.len(), ts.len());
        for (want, got) in ts.iter().zip(&back) {
            assert_eq!(got.name, want.name);
            let want = if want.dtype == DType::Bf16 { want.converted(DType::F32).unwrap() } else { want.clone() };
            assert_eq!(got, &HostTensor { name: got.name.clone(), ..want });
            let npy = dir.join(format!("{}.npy", got.name));
            write_npy(&npy, got).unwrap();
            assert_eq!(read_npy(&npy).unwrap().bytes(), got.bytes());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn random_fill_keeps_integers_in_range_and_bools_0_or_1() {
        for t in every_dtype() {
            let v = t.to_f64();
            match t.dtype {
                d if d.is_float() => assert!(v.iter().all(|x| (0.0..1.0).contains(x)), "{d}: {v:?}"),
                DType::Bool => assert!(v.iter().all(|&x| x == 0.0 || x == 1.0)),
                DType::U8 => assert!(v.iter().all(|&x| !(4.0..253.0).contains(&x)), "u8 wraps negatives: {v:?}"),
                d => assert!(v.iter().all(|x| (-3.0..4.0).contains(x)), "{d}: {v:?}"),
            }
        }
    }

    #[test]
    fn wrong_lengths_bool_bytes_and_dtypes_are_refused() {
        assert!(HostTensor::new("x", DType::F32, &[2, 2], vec![0; 15]).unwrap_err().to_string().contains("15 bytes for f32 [2, 2], which takes 16"));
        assert!(HostTensor::new("m", DType::Bool, &[2], vec![1, 2]).unwrap_err().to_string().contains("found the byte 2"));
        let t = HostTensor::from_values("x", &[2], &[1i64, 2]).unwrap();
        assert!(t.to_vec::<f32>().is_err());
        assert_eq!(t.to_vec::<i64>().unwrap(), [1, 2]);
    }

    #[test]
    fn close_floats_pass_and_integers_must_be_equal() {
        let a = HostTensor::from_values("y", &[2], &[1.0f32, 2.0]).unwrap();
        let b = HostTensor::from_values("y", &[2], &[1.0f32, 2.000001]).unwrap();
        assert!(a.check_close(&b, 1e-5).is_ok());
        assert!(a.check_close(&b, 1e-9).unwrap_err().contains("relative error"));
        let i = HostTensor::from_values("k", &[2], &[1i64, 2]).unwrap();
        let j = HostTensor::from_values("k", &[2], &[1i64, 3]).unwrap();
        assert!(i.check_close(&j, 1.0).is_err());
        assert!(a.check_close(&i, 1.0).unwrap_err().contains("expected i64"));
    }
}
