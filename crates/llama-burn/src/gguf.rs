//! Reader and dequantiser for GGUF (v2 and v3) files, the llama.cpp checkpoint format.
//!
//! A GGUF file is: the magic `GGUF`, a version, the tensor and key-value counts, the metadata
//! key-value pairs, the tensor infos (name, dims, ggml type, offset), padding up to
//! `general.alignment` (default 32), then the data section that the tensor offsets point into.
//! Everything is little endian. The file is memory-mapped; [`GgufFile::tensor_f32`] dequantises
//! one tensor at a time, so only the header is held in memory.
//!
//! Dims are kept in GGUF `ne` order (`ne[0]` varies fastest); [`GgufTensorInfo::row_major_shape`]
//! gives the usual row-major shape. llama.cpp permutes the rows of `attn_q` / `attn_k` for its
//! RoPE layout; [`unpermute_rope_rows`] restores the Hugging Face one.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

/// `"GGUF"` read as a little-endian `u32`.
const MAGIC: u32 = 0x4655_4747;
/// Alignment of the data section when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml supports at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Nesting limit for metadata arrays of arrays (guards the recursion against crafted files).
const MAX_ARRAY_DEPTH: u32 = 8;

/// Why a GGUF file or one of its tensors could not be read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read GGUF file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error(
        "{path} is not a GGUF file: magic is {found:#010x}, expected {MAGIC:#010x} (\"GGUF\")"
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first four bytes, as a little-endian `u32`.
        found: u32,
    },
    /// The GGUF version is not 2 or 3.
    #[error("{path}: unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the header.
        version: u32,
    },
    /// The header ends before a field it announces.
    #[error("{path}: truncated: need {needed} bytes at offset {offset}, file has {len}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where the missing field starts.
        offset: u64,
        /// How many bytes the field needs.
        needed: u64,
        /// Length of the file.
        len: u64,
    },
    /// A metadata value has a type id outside 0..=12.
    #[error("{path}: metadata key `{key}` has unknown value type {value_type}")]
    UnknownValueType {
        /// The file.
        path: PathBuf,
        /// The key whose value (or array element) has the bad type.
        key: String,
        /// The type id found.
        value_type: u32,
    },
    /// The tensor's ggml type cannot be dequantised by this reader.
    #[error("{path}: tensor `{tensor}` has ggml type {ggml_type}, which is not supported")]
    UnsupportedGgmlType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its ggml type.
        ggml_type: GgmlType,
    },
    /// No tensor of that name is in the file.
    #[error("{path}: no tensor named `{tensor}`")]
    TensorNotFound {
        /// The file.
        path: PathBuf,
        /// The name looked for.
        tensor: String,
    },
    /// A tensor's data would extend past the end of the file.
    #[error("{path}: tensor `{tensor}` occupies bytes {start}..{end}, file has {len}")]
    DataOutOfBounds {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Absolute start of its data.
        start: u64,
        /// Absolute end of its data (exclusive).
        end: u64,
        /// Length of the file.
        len: u64,
    },
    /// The header is structurally invalid in some other way.
    #[error("{path}: malformed GGUF: {detail}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key or tensor.
        detail: String,
    },
}

/// A metadata value. Type ids 0..=12 of the GGUF spec, in that order.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // The variants are the GGUF scalar types they are named after.
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// Any integer that is non-negative, as `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any number (integer or float) as `f64`; 64-bit integers may round.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if this is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// Storage type of a tensor (ggml `ggml_type`). Only F32, F16, BF16, Q4_0, Q4_1 and Q8_0 can be
/// dequantised; the others are recognised so errors can name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, missing_docs)] // ggml's own names.
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    /// Any other type id (IQ*, integer types, ...).
    Other(u32),
}

impl GgmlType {
    /// The type for a ggml type id.
    pub fn from_id(id: u32) -> Self {
        use GgmlType::*;
        match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            30 => BF16,
            other => Other(other),
        }
    }

    /// `(elements, bytes)` of one block, for the types this reader can dequantise.
    fn block_layout(self) -> Option<(u64, u64)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::BF16 => Some((1, 2)),
            Self::Q4_0 => Some((32, 18)),
            Self::Q4_1 => Some((32, 20)),
            Self::Q8_0 => Some((32, 34)),
            _ => None,
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(id) => write!(f, "type id {id}"),
            named => fmt::Debug::fmt(named, f),
        }
    }
}

/// One entry of the tensor-info table.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// The GGUF tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// How the data is stored.
    pub ggml_type: GgmlType,
    /// Dimensions in GGUF `ne` order: `ne[0]` is the fastest-varying (the row length).
    pub dims: Vec<u64>,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// The row-major shape, i.e. `dims` reversed: `ne = [576, 49152]` gives `[49152, 576]`.
    pub fn row_major_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements (the product of `dims`; checked not to overflow when the file was opened).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An open, memory-mapped GGUF file with its parsed header.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    /// Tensor name to its index in `tensors`.
    index: BTreeMap<String, usize>,
    data_start: u64,
}

impl GgufFile {
    /// Maps `path` and parses its header. Tensor data is only read by [`GgufFile::tensor_f32`].
    ///
    /// The file must not be modified while the returned value is alive (it is memory-mapped).
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; like every mmap-based loader we rely on the file not
        // being truncated or rewritten while it is open (documented above).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let mut r = Reader {
            buf: &mmap,
            pos: 0,
            path,
        };
        let malformed = |detail| malformed(path, detail);
        let (version, n_tensors, n_kv) = r.header()?;
        let metadata = r.metadata(n_kv)?;
        let mut tensors = Vec::new();
        let mut index = BTreeMap::new();
        for _ in 0..n_tensors {
            let info = r.tensor_info()?;
            if index.insert(info.name.clone(), tensors.len()).is_some() {
                return Err(malformed(format!("duplicate tensor `{}`", info.name)));
            }
            tensors.push(info);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => return Err(malformed(format!("general.alignment = {v:?}"))),
            },
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        Ok(Self {
            path: path.to_owned(),
            mmap,
            version,
            metadata,
            tensors,
            index,
            data_start,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Absolute file offset of the data section (tensor offsets are relative to it).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// All metadata key-value pairs.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// The tensor infos, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The info of the tensor called `name`.
    pub fn tensor_info(&self, name: &str) -> Result<&GgufTensorInfo, GgufError> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::TensorNotFound {
                path: self.path.clone(),
                tensor: name.to_owned(),
            })
    }

    /// The raw (still quantised) bytes of tensor `name`, for the types [`GgufFile::tensor_f32`]
    /// supports.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self.tensor_info(name)?;
        let layout = info.ggml_type.block_layout();
        let (block_elems, block_bytes) = layout.ok_or_else(|| self.unsupported(info))?;
        let row_len = info.dims.first().copied().unwrap_or(1);
        if !row_len.is_multiple_of(block_elems) {
            let detail =
                format!("tensor `{name}`: row length {row_len} is not a multiple of {block_elems}");
            return Err(malformed(&self.path, detail));
        }
        let size = (info.n_elements() / block_elems).saturating_mul(block_bytes);
        let start = self.data_start.saturating_add(info.offset);
        let end = start.saturating_add(size);
        usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| self.mmap.get(s..e))
            .ok_or_else(|| GgufError::DataOutOfBounds {
                path: self.path.clone(),
                tensor: name.to_owned(),
                start,
                end,
                len: self.mmap.len() as u64,
            })
    }

    /// Tensor `name` dequantised to `f32`, row-major with shape
    /// [`GgufTensorInfo::row_major_shape`] (GGUF row order: `attn_q` / `attn_k` stay permuted).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let bytes = self.tensor_bytes(name)?;
        let info = self.tensor_info(name)?;
        let mut out = Vec::with_capacity(info.n_elements() as usize);
        let le_f16 = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
        match info.ggml_type {
            GgmlType::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(le_f16)),
            GgmlType::BF16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            GgmlType::Q8_0 => {
                for block in bytes.chunks_exact(34) {
                    let d = le_f16(block);
                    out.extend(block[2..].iter().map(|&q| d * f32::from(q as i8)));
                }
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let q4_1 = info.ggml_type == GgmlType::Q4_1;
                let (block_bytes, qs_start) = if q4_1 { (20, 4) } else { (18, 2) };
                for block in bytes.chunks_exact(block_bytes) {
                    let d = le_f16(block);
                    // Q4_1: x = d*q + m. Q4_0: x = d*(q - 8) = d*q + (-8d).
                    let m = if q4_1 { le_f16(&block[2..]) } else { -8.0 * d };
                    let qs = &block[qs_start..];
                    out.extend(qs.iter().map(|&b| f32::from(b & 0x0F) * d + m));
                    out.extend(qs.iter().map(|&b| f32::from(b >> 4) * d + m));
                }
            }
            // `tensor_bytes` has already rejected every other type.
            _ => return Err(self.unsupported(info)),
        }
        Ok(out)
    }

    fn unsupported(&self, info: &GgufTensorInfo) -> GgufError {
        GgufError::UnsupportedGgmlType {
            path: self.path.clone(),
            tensor: info.name.clone(),
            ggml_type: info.ggml_type,
        }
    }
}

fn malformed(path: &Path, detail: String) -> GgufError {
    GgufError::Malformed {
        path: path.to_owned(),
        detail,
    }
}

/// Undoes the row permutation that llama.cpp's `convert_hf_to_gguf.py` applies to `q_proj` and
/// `k_proj`, giving back the Hugging Face rotate-half layout.
///
/// `w` is a row-major `rows x cols` matrix, `n_head` the number of heads whose rows it holds
/// (the KV head count for `k_proj`). Within each head, GGUF row `2*i + j` becomes HF row
/// `j*half + i` (`half` = head_dim / 2), i.e. numpy
/// `w.reshape(n_head, rows/n_head/2, 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
///
/// # Panics
/// If `w.len() != rows * cols` or `rows` is not a multiple of `2 * n_head`.
pub fn unpermute_rope_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    assert_eq!(
        w.len(),
        rows * cols,
        "unpermute_rope_rows: buffer is not rows x cols"
    );
    assert!(
        n_head > 0 && rows.is_multiple_of(2 * n_head),
        "unpermute_rope_rows: {rows} rows, {n_head} heads"
    );
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * head_dim + 2 * i + j) * cols;
                let dst = (h * head_dim + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// A bounds-checked little-endian cursor over the mapped header.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Reader<'_> {
    /// The magic, then the version (2 or 3), the tensor count and the metadata count.
    fn header(&mut self) -> Result<(u32, u64, u64), GgufError> {
        let magic = self.u32()?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                path: self.path.to_owned(),
                found: magic,
            });
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion {
                path: self.path.to_owned(),
                version,
            });
        }
        let n_tensors = self.u64()?;
        let n_kv = self.u64()?;
        Ok((version, n_tensors, n_kv))
    }

    /// `n_kv` metadata key-value pairs; a key may appear once.
    fn metadata(&mut self, n_kv: u64) -> Result<BTreeMap<String, GgufValue>, GgufError> {
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = self.string("metadata key")?;
            let value_type = self.u32()?;
            let value = self.value(value_type, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(malformed(
                    self.path,
                    format!("duplicate metadata key `{key}`"),
                ));
            }
        }
        Ok(metadata)
    }

    /// One tensor's name, dims (at most [`MAX_DIMS`], their product within `u64`), type and
    /// offset.
    fn tensor_info(&mut self) -> Result<GgufTensorInfo, GgufError> {
        let name = self.string("tensor name")?;
        let n_dims = self.u32()?;
        if n_dims > MAX_DIMS {
            return Err(malformed(
                self.path,
                format!("tensor `{name}` has {n_dims} dims (max {MAX_DIMS})"),
            ));
        }
        let dims = (0..n_dims)
            .map(|_| self.u64())
            .collect::<Result<Vec<_>, _>>()?;
        if dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .is_none()
        {
            return Err(malformed(
                self.path,
                format!("tensor `{name}` dims {dims:?} overflow"),
            ));
        }
        let ggml_type = GgmlType::from_id(self.u32()?);
        let offset = self.u64()?;
        Ok(GgufTensorInfo {
            name,
            ggml_type,
            dims,
            offset,
        })
    }
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], GgufError> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.buf.get(self.pos..self.pos.checked_add(n)?));
        let slice = slice.ok_or_else(|| self.truncated(n))?;
        self.pos += slice.len();
        Ok(slice)
    }

    fn truncated(&self, needed: u64) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_owned(),
            offset: self.pos as u64,
            needed,
            len: self.buf.len() as u64,
        }
    }

    fn unknown_type(&self, key: &str, value_type: u32) -> GgufError {
        GgufError::UnknownValueType {
            path: self.path.to_owned(),
            key: key.to_owned(),
            value_type,
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        self.array().map(u64::from_le_bytes)
    }

    /// A GGUF string: `u64` byte length, then UTF-8 bytes. `what` names it in errors.
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64()?;
        let start = self.pos;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            malformed(
                self.path,
                format!("{what} at offset {start} is not valid UTF-8"),
            )
        })
    }

    /// One value of type id `ty`, belonging to metadata key `key`.
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<GgufValue, GgufError> {
        use GgufValue as V;
        Ok(match ty {
            0 => V::U8(u8::from_le_bytes(self.array()?)),
            1 => V::I8(i8::from_le_bytes(self.array()?)),
            2 => V::U16(u16::from_le_bytes(self.array()?)),
            3 => V::I16(i16::from_le_bytes(self.array()?)),
            4 => V::U32(self.u32()?),
            5 => V::I32(i32::from_le_bytes(self.array()?)),
            6 => V::F32(f32::from_le_bytes(self.array()?)),
            7 => V::Bool(self.array::<1>()?[0] != 0),
            8 => V::String(self.string(&format!("value of `{key}`"))?),
            9 => {
                let elem_ty = self.u32()?;
                let count = self.u64()?;
                let min_size = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => return Err(self.unknown_type(key, elem_ty)),
                };
                if elem_ty == 9 && depth >= MAX_ARRAY_DEPTH {
                    let detail = format!("`{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}");
                    return Err(malformed(self.path, detail));
                }
                // Reject impossible counts before allocating for them.
                let needed = count.saturating_mul(min_size);
                if needed > (self.buf.len() - self.pos) as u64 {
                    return Err(self.truncated(needed));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                V::Array(items)
            }
            10 => V::U64(self.u64()?),
            11 => V::I64(i64::from_le_bytes(self.array()?)),
            12 => V::F64(f64::from_le_bytes(self.array()?)),
            _ => return Err(self.unknown_type(key, ty)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds GGUF bytes with std only.
    #[derive(Default)]
    struct Builder {
        kv: Vec<u8>,
        n_kv: u64,
        infos: Vec<u8>,
        n_tensors: u64,
        data: Vec<u8>,
    }

    fn gguf_string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    impl Builder {
        fn kv(mut self, key: &str, ty: u32, value: &[u8]) -> Self {
            gguf_string(&mut self.kv, key);
            self.kv.extend(ty.to_le_bytes());
            self.kv.extend(value);
            self.n_kv += 1;
            self
        }

        fn tensor(mut self, name: &str, ty: u32, dims: &[u64], data: &[u8]) -> Self {
            while !self.data.len().is_multiple_of(32) {
                self.data.push(0);
            }
            gguf_string(&mut self.infos, name);
            self.infos.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| self.infos.extend(d.to_le_bytes()));
            self.infos.extend(ty.to_le_bytes());
            self.infos.extend((self.data.len() as u64).to_le_bytes());
            self.data.extend(data);
            self.n_tensors += 1;
            self
        }

        fn build(self, alignment: usize) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(3u32.to_le_bytes());
            out.extend(self.n_tensors.to_le_bytes());
            out.extend(self.n_kv.to_le_bytes());
            out.extend(self.kv);
            out.extend(self.infos);
            out.resize(out.len().div_ceil(alignment) * alignment, 0);
            out.extend(self.data);
            out
        }
    }

    fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("llama-burn-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    /// A file with a Q8_0 [2 x 32], a Q4_1 [32] and an F32 [3] tensor, 64-byte aligned, plus the
    /// values each should dequantise to.
    fn sample() -> (Vec<u8>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut q8 = Vec::new();
        let mut q8_expect = Vec::new();
        for (d, offset) in [(0.5f32, -16i32), (-0.25, 3)] {
            q8.extend(f16_bytes(d));
            for k in 0..32 {
                let q = (k + offset) as i8;
                q8.push(q as u8);
                q8_expect.push(d * f32::from(q));
            }
        }
        let (d, m) = (0.25f32, -1.0f32);
        let mut q41 = [f16_bytes(d), f16_bytes(m)].concat();
        let mut q41_expect = vec![0.0; 32];
        for j in 0..16u8 {
            let (lo, hi) = (j, 15 - (j * 7) % 16);
            q41.push(lo | (hi << 4));
            q41_expect[j as usize] = d * f32::from(lo) + m;
            q41_expect[j as usize + 16] = d * f32::from(hi) + m;
        }
        let f32_expect = vec![1.5f32, -2.25, 1e-3];
        let f32_data: Vec<u8> = f32_expect.iter().flat_map(|x| x.to_le_bytes()).collect();
        let bytes = Builder::default()
            .kv("general.alignment", 4, &64u32.to_le_bytes())
            .kv(
                "general.name",
                8,
                &[&5u64.to_le_bytes()[..], b"tiny!"].concat(),
            )
            .kv("flag", 7, &[1])
            .kv(
                "ids",
                9,
                &[
                    &5u32.to_le_bytes()[..],
                    &2u64.to_le_bytes(),
                    &(-7i32).to_le_bytes(),
                    &9i32.to_le_bytes(),
                ]
                .concat(),
            )
            .tensor("q8", 8, &[32, 2], &q8)
            .tensor("q41", 3, &[32], &q41)
            .tensor("f32", 0, &[3], &f32_data)
            .build(64);
        (bytes, q8_expect, q41_expect, f32_expect)
    }

    #[test]
    fn gguf_synthetic_dequant_and_metadata() {
        let (bytes, q8, q41, f) = sample();
        let file = GgufFile::open(&write_temp("ok.gguf", &bytes)).unwrap();
        assert_eq!(file.version(), 3);
        assert_eq!(file.data_start() % 64, 0);
        let md = file.metadata();
        assert_eq!(md["general.alignment"].as_u64(), Some(64));
        assert_eq!(md["general.name"].as_str(), Some("tiny!"));
        assert_eq!(md["flag"].as_bool(), Some(true));
        let ids = md["ids"].as_array().unwrap();
        assert_eq!(ids, &[GgufValue::I32(-7), GgufValue::I32(9)]);
        assert_eq!((ids[0].as_u64(), ids[0].as_f64()), (None, Some(-7.0)));

        let info = file.tensor_info("q8").unwrap();
        assert_eq!(
            (info.ggml_type, info.row_major_shape()),
            (GgmlType::Q8_0, vec![2, 32])
        );
        assert_eq!(file.tensor_f32("q8").unwrap(), q8);
        assert_eq!(file.tensor_f32("q41").unwrap(), q41);
        assert_eq!(file.tensor_f32("f32").unwrap(), f);
        let names: Vec<_> = file.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["q8", "q41", "f32"]);
    }

    #[test]
    fn gguf_q4_0_f16_bf16() {
        let d = 0.5f32;
        let mut q40 = f16_bytes(d).to_vec();
        q40.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut q40_expect: Vec<f32> = (0..16).map(|j| d * (j as f32 - 8.0)).collect();
        q40_expect.extend((0..16).map(|j| d * (7.0 - j as f32)));
        let halves = [1.0f32, -0.5, 65504.0];
        let f16_data: Vec<u8> = halves.iter().flat_map(|&x| f16_bytes(x)).collect();
        let bf16_data: Vec<u8> = halves
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect();
        let bytes = Builder::default()
            .tensor("q40", 2, &[32], &q40)
            .tensor("h", 1, &[3], &f16_data)
            .tensor("b", 30, &[3, 1], &bf16_data)
            .build(32);
        let file = GgufFile::open(&write_temp("q40.gguf", &bytes)).unwrap();
        assert_eq!(file.tensor_f32("q40").unwrap(), q40_expect);
        assert_eq!(file.tensor_f32("h").unwrap(), halves);
        let bf16_expect: Vec<f32> = halves.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
        assert_eq!(file.tensor_f32("b").unwrap(), bf16_expect);
        assert_eq!(file.tensor_info("b").unwrap().row_major_shape(), [1, 3]);
    }

    #[test]
    fn gguf_bad_magic() {
        let (mut bytes, ..) = sample();
        bytes[..4].copy_from_slice(b"GGML");
        let err = GgufFile::open(&write_temp("magic.gguf", &bytes)).unwrap_err();
        assert!(
            matches!(
                err,
                GgufError::BadMagic {
                    found: 0x4c4d_4747,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn gguf_unsupported_version() {
        let (mut bytes, ..) = sample();
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        let err = GgufFile::open(&write_temp("version.gguf", &bytes)).unwrap_err();
        assert!(
            matches!(err, GgufError::UnsupportedVersion { version: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn gguf_truncated_header_and_data() {
        let (bytes, ..) = sample();
        let path = write_temp("ok2.gguf", &bytes);
        let data_start = GgufFile::open(&path).unwrap().data_start() as usize;
        // Every cut inside the header is reported as truncation, never a panic.
        for cut in 0..data_start {
            let path = write_temp("cut.gguf", &bytes[..cut]);
            match GgufFile::open(&path) {
                Err(GgufError::Truncated { .. }) => {}
                // Cutting only the alignment padding leaves a valid header.
                Ok(_) if cut > data_start - 64 => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        // A cut in the data section: the header parses, the last tensor is out of bounds.
        let file = GgufFile::open(&write_temp("cut-data.gguf", &bytes[..bytes.len() - 1])).unwrap();
        assert!(file.tensor_f32("q8").is_ok());
        let err = file.tensor_f32("f32").unwrap_err();
        assert!(
            matches!(err, GgufError::DataOutOfBounds { ref tensor, .. } if tensor == "f32"),
            "{err}"
        );
    }

    #[test]
    fn gguf_missing_tensor_and_unknown_value_type() {
        let (bytes, ..) = sample();
        let file = GgufFile::open(&write_temp("ok3.gguf", &bytes)).unwrap();
        let err = file.tensor_f32("nope").unwrap_err();
        assert!(
            matches!(err, GgufError::TensorNotFound { ref tensor, .. } if tensor == "nope"),
            "{err}"
        );

        let bytes = Builder::default().kv("weird", 13, &[0; 8]).build(32);
        let err = GgufFile::open(&write_temp("weird.gguf", &bytes)).unwrap_err();
        assert!(
            matches!(err, GgufError::UnknownValueType { value_type: 13, ref key, .. } if key == "weird"),
            "{err}"
        );
    }

    #[test]
    fn gguf_unsupported_type_is_named() {
        let bytes = Builder::default()
            .tensor("k", 12, &[256], &[0; 144])
            .build(32);
        let file = GgufFile::open(&write_temp("q4k.gguf", &bytes)).unwrap();
        let err = file.tensor_f32("k").unwrap_err();
        assert!(
            matches!(
                err,
                GgufError::UnsupportedGgmlType {
                    ggml_type: GgmlType::Q4_K,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("Q4_K"), "{err}");
    }

    /// convert_hf_to_gguf's `permute`: reshape(n_head, 2, half, cols).swapaxes(1, 2).
    fn permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
        let (head_dim, half) = (rows / n_head, rows / n_head / 2);
        let mut out = vec![0.0; w.len()];
        for h in 0..n_head {
            for j in 0..2 {
                for i in 0..half {
                    let src = (h * head_dim + j * half + i) * cols;
                    let dst = (h * head_dim + 2 * i + j) * cols;
                    out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
                }
            }
        }
        out
    }

    #[test]
    fn gguf_unpermute_inverts_permute() {
        for (rows, cols, n_head) in [(8, 3, 1), (24, 5, 3), (576, 2, 9), (192, 1, 3)] {
            let w: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
            let p = permute(&w, rows, cols, n_head);
            assert_ne!(p, w);
            assert_eq!(unpermute_rope_rows(&p, rows, cols, n_head), w);
        }
        // Within a head, GGUF rows interleave the two HF halves: [0, half, 1, half + 1, ...].
        let p = permute(&[0.0, 1.0, 2.0, 3.0], 4, 1, 1);
        assert_eq!(p, [0.0, 2.0, 1.0, 3.0]);
    }
}
