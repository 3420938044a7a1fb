//! F16/BF16 embedding models run on the CPU from an F32 copy of their GGUF (or, when
//! asked, F16 ones from a BF16 copy).
//!
//! llama.cpp's CPU matrix kernel for F16 weights converts both operands to F32 on every
//! load and is bound by those conversions: on an encoder (MiniLM, BGE, E5) it does a
//! fraction of the multiply-adds the same kernel does on F32 weights. Encoders are small
//! (tens to hundreds of MB), so the engine trades twice the weights' memory for the
//! faster kernel: the copy is written once into the cache (beside nothing the user
//! owns) and reused while the source file is unchanged. Values are exact (every F16 and
//! BF16 number is an F32); the vectors differ from the F16 run only in activation
//! rounding (cosine > 0.99999). The file itself is loaded too, for small decodes (see
//! `embed::SMALL_DECODE`).
//!
//! A BF16 copy trades precision for speed instead: on CPUs with BF16 dot products
//! (AVX512-BF16) its kernel does twice the multiply-adds per instruction and loads no
//! conversions, but BF16 keeps 8 bits of mantissa where F16 keeps 11, in the weights
//! and in the activations the kernel rounds to its type (cosine ~0.99998 to the F16
//! run). Only asked for, never chosen by `auto`.

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Encoders above this size (as F32) keep their file's type: the memory would cost more
/// than the speed is worth.
const MAX_F32_BYTES: u64 = 2 << 30;

const F32: u32 = 0;
const F16: u32 = 1;
const BF16: u32 = 30;

/// The type of a copy's converted weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CopyType {
    /// F16 and BF16 weights widened: exact.
    F32,
    /// F16 weights rounded to BF16 (to nearest, ties to even).
    Bf16,
}

impl CopyType {
    fn kind(self) -> u32 {
        match self {
            CopyType::F32 => F32,
            CopyType::Bf16 => BF16,
        }
    }

    fn width(self) -> u64 {
        match self {
            CopyType::F32 => 4,
            CopyType::Bf16 => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CopyType::F32 => "f32",
            CopyType::Bf16 => "bf16",
        }
    }
}

/// The header of a GGUF file: what the copy needs to rewrite it.
struct Header {
    /// Bytes of magic, version, counts and key-values, copied as they are.
    prefix_len: u64,
    alignment: u64,
    pools: bool,
    tensors: Vec<Tensor>,
    /// Where tensor data starts in the source.
    data_start: u64,
}

struct Tensor {
    name: Vec<u8>,
    dims: Vec<u64>,
    kind: u32,
    offset: u64,
}

impl Tensor {
    fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Whether the copy converts this tensor.
    fn converted(&self, to: CopyType) -> bool {
        match to {
            CopyType::F32 => matches!(self.kind, F16 | BF16),
            CopyType::Bf16 => self.kind == F16,
        }
    }

    fn copied_size(&self, to: CopyType) -> u64 {
        match self.converted(to) {
            true => self.elements() * to.width(),
            false => source_size(self),
        }
    }
}

/// The copy to load instead of `path`, made now if the cache lacks it; `None` when the
/// model should load as it is (not an encoder, nothing to convert, too large, or the
/// file cannot be read this way: llama.cpp then reports on the original).
pub(crate) fn copy(path: &Path, cache: &Path, to: CopyType) -> Option<PathBuf> {
    let (header, _) = plan(path, to)?;
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let stem = path.file_stem()?.to_string_lossy();
    let out = cache.join(format!(
        "{stem}-{}-{modified}.{}.gguf",
        meta.len(),
        to.name()
    ));
    if out.is_file() {
        return Some(out);
    }
    std::fs::create_dir_all(cache).ok()?;
    let partial = out.with_extension(format!("partial{}", std::process::id()));
    match write_copy(path, &header, &partial, to).and_then(|()| std::fs::rename(&partial, &out)) {
        Ok(()) => Some(out),
        Err(e) => {
            // A partial file may not exist (the error came before it was made).
            std::fs::remove_file(&partial).ok();
            tracing::warn!(error = %e, "could not write a {} copy of {}; loading it as it is", to.name(), path.display());
            None
        }
    }
}

/// The file's header and the copy's weight bytes, when it gets one.
fn plan(path: &Path, to: CopyType) -> Option<(Header, u64)> {
    let header = read_header(path).ok()?;
    let plain = header
        .tensors
        .iter()
        .all(|t| matches!(t.kind, F32 | F16 | BF16));
    if !header.pools || !plain || !header.tensors.iter().any(|t| t.converted(to)) {
        return None;
    }
    let f32_bytes: u64 = header.tensors.iter().map(|t| t.elements() * 4).sum();
    let bytes = header.tensors.iter().map(|t| t.copied_size(to)).sum();
    (f32_bytes <= MAX_F32_BYTES).then_some((header, bytes))
}

/// The weights' bytes in memory once loaded from the copy (models on demand count it
/// before loading).
pub(crate) fn copy_size(path: &Path, to: CopyType) -> Option<u64> {
    plan(path, to).map(|(_, bytes)| bytes)
}

fn read_header(path: &Path) -> std::io::Result<Header> {
    let file_len = std::fs::metadata(path)?.len();
    let mut r = Counted {
        inner: BufReader::new(std::fs::File::open(path)?),
        at: 0,
    };
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    let version = r.u32()?;
    if &magic != b"GGUF" || !(2..=3).contains(&version) {
        return Err(invalid("not a GGUF v2/v3 file"));
    }
    let (n_tensors, n_kv) = (r.u64()?, r.u64()?);
    let (mut alignment, mut arch, mut pooling_key) = (32u64, None, Vec::new());
    for _ in 0..n_kv {
        let key = r.string()?;
        let kind = r.u32()?;
        if key == b"general.alignment" && kind == 4 {
            alignment = u64::from(r.u32()?).max(1);
        } else if key == b"general.architecture" && kind == 8 {
            arch = Some(r.string()?);
        } else {
            if key.ends_with(b".pooling_type") {
                pooling_key = key;
            }
            r.skip_value(kind)?;
        }
    }
    // Pooling types 1..=4 (mean, cls, last, rank) make an embedding model, as
    // `embed::Pooling::of` reads them.
    let pools = arch.is_some_and(|a| pooling_key == [a.as_slice(), b".pooling_type"].concat());
    let prefix_len = r.at;
    let mut tensors = Vec::new();
    if n_tensors > 1 << 20 {
        return Err(invalid("more than a million tensors"));
    }
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims > 4 {
            return Err(invalid("a tensor of more than 4 dimensions"));
        }
        let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<_, _>>()?;
        let (kind, offset) = (r.u32()?, r.u64()?);
        tensors.push(Tensor {
            name,
            dims,
            kind,
            offset,
        });
    }
    let data_start = r.at.next_multiple_of(alignment);
    // A corrupt header must not make us allocate or read what the file does not hold.
    for t in tensors
        .iter()
        .filter(|t| matches!(t.kind, F32 | F16 | BF16))
    {
        let width = if t.kind == F32 { 4 } else { 2 };
        let end = t
            .dims
            .iter()
            .try_fold(width, |n: u64, &d| n.checked_mul(d))
            .and_then(|bytes| data_start.checked_add(t.offset)?.checked_add(bytes));
        if end.is_none_or(|end| end > file_len) {
            return Err(invalid(format!(
                "tensor {} lies beyond the file",
                String::from_utf8_lossy(&t.name)
            )));
        }
    }
    Ok(Header {
        prefix_len,
        alignment,
        pools,
        tensors,
        data_start,
    })
}

fn write_copy(path: &Path, h: &Header, out: &Path, to: CopyType) -> std::io::Result<()> {
    let mut src = std::fs::File::open(path)?;
    let mut w = Counted {
        inner: BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?),
        at: 0,
    };
    let mut prefix = vec![0u8; usize::try_from(h.prefix_len).map_err(invalid)?];
    src.read_exact(&mut prefix)?;
    w.write_all(&prefix)?;
    let mut offset = 0u64;
    let mut sizes = Vec::with_capacity(h.tensors.len());
    for t in &h.tensors {
        let size = t.copied_size(to);
        w.write_all(&(t.name.len() as u64).to_le_bytes())?;
        w.write_all(&t.name)?;
        w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
        for d in &t.dims {
            w.write_all(&d.to_le_bytes())?;
        }
        let kind = if t.converted(to) { to.kind() } else { t.kind };
        w.write_all(&kind.to_le_bytes())?;
        w.write_all(&offset.to_le_bytes())?;
        sizes.push(size);
        offset = (offset + size).next_multiple_of(h.alignment);
    }
    w.pad(h.alignment)?;
    for (t, &size) in h.tensors.iter().zip(&sizes) {
        src.seek(SeekFrom::Start(h.data_start + t.offset))?;
        let mut raw = vec![0u8; usize::try_from(source_size(t)).map_err(invalid)?];
        src.read_exact(&mut raw)?;
        if t.converted(to) {
            let (halves, _) = raw.as_chunks::<2>();
            let values = halves.iter().map(|&b| widen(t.kind, u16::from_le_bytes(b)));
            let out: Vec<u8> = match to {
                CopyType::F32 => values.flat_map(f32::to_le_bytes).collect(),
                CopyType::Bf16 => values.flat_map(|v| to_bf16(v).to_le_bytes()).collect(),
            };
            debug_assert_eq!(out.len() as u64, size);
            w.write_all(&out)?;
        } else {
            w.write_all(&raw)?;
        }
        w.pad(h.alignment)?;
    }
    w.inner.flush()?;
    w.inner.get_ref().sync_all()
}

/// A tensor's bytes in the source (only plain float types are copied).
fn source_size(t: &Tensor) -> u64 {
    t.elements() * if t.kind == F32 { 4 } else { 2 }
}

fn widen(kind: u32, bits: u16) -> f32 {
    if kind == BF16 {
        return f32::from_bits(u32::from(bits) << 16);
    }
    let sign = u32::from(bits >> 15) << 31;
    let exp = u32::from((bits >> 10) & 0x1f);
    let man = u32::from(bits & 0x3ff);
    let out = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: shift the mantissa up to an implicit leading one.
            let (mut m, mut e) = (man, 113u32);
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(out)
}

/// `v` rounded to BF16, to nearest with ties to even; NaNs stay NaNs (a mantissa that
/// lives only in the dropped bits would otherwise round to infinity).
fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounded = bits + 0x7fff + ((bits >> 16) & 1);
    (rounded >> 16) as u16
}

fn invalid(e: impl ToString) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

/// A reader or writer that knows how many bytes went through it.
struct Counted<T> {
    inner: T,
    at: u64,
}

impl<T: Read> Read for Counted<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl<T: Read> Counted<T> {
    fn u32(&mut self) -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn string(&mut self) -> std::io::Result<Vec<u8>> {
        let n = self.u64()?;
        if n > 64 << 20 {
            return Err(invalid("a metadata string longer than 64 MiB"));
        }
        let mut s = vec![0u8; n as usize];
        self.read_exact(&mut s)?;
        Ok(s)
    }

    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let copied = std::io::copy(&mut self.by_ref().take(n), &mut std::io::sink())?;
        if copied < n {
            return Err(invalid("the file ends inside its metadata"));
        }
        Ok(())
    }

    fn skip_value(&mut self, kind: u32) -> std::io::Result<()> {
        match kind {
            0 | 1 | 7 => self.skip(1),
            2 | 3 => self.skip(2),
            4..=6 => self.skip(4),
            10..=12 => self.skip(8),
            8 => self.string().map(drop),
            9 => {
                let (item, n) = (self.u32()?, self.u64()?);
                for _ in 0..n {
                    self.skip_value(item)?;
                }
                Ok(())
            }
            _ => Err(invalid(format!("unknown metadata type {kind}"))),
        }
    }
}

impl<T: Write> Write for Counted<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.at += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Write> Counted<T> {
    fn pad(&mut self, alignment: u64) -> std::io::Result<()> {
        let n = self.at.next_multiple_of(alignment) - self.at;
        self.write_all(&vec![0u8; n as usize])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::{copy, read_header, to_bf16, widen, CopyType};

    /// A GGUF v3 header with one F16 tensor of these dimensions at offset 0, and
    /// `data` bytes of tensor data.
    fn gguf(dims: &[u64], data: usize) -> std::path::PathBuf {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // tensors
        b.extend(0u64.to_le_bytes()); // key-values
        b.extend(1u64.to_le_bytes());
        b.push(b'w');
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(1u32.to_le_bytes()); // F16
        b.extend(0u64.to_le_bytes());
        b.resize(b.len().next_multiple_of(32) + data, 0);
        let dir = std::env::temp_dir().join(format!("parlance-upcast-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.gguf");
        std::fs::write(&path, b).unwrap();
        path
    }

    #[test]
    fn a_header_that_claims_more_than_the_file_holds_is_refused() {
        assert!(read_header(&gguf(&[4, 2], 16)).is_ok());
        assert!(read_header(&gguf(&[4, 2], 15)).is_err(), "one byte short");
        assert!(
            read_header(&gguf(&[u64::MAX, 2], 16)).is_err(),
            "overflowing dims"
        );
        assert!(read_header(&gguf(&[1 << 40, 1 << 30], 16)).is_err());
        // Not an embedding model (no pooling key): loaded as it is, no copy.
        let cache = std::env::temp_dir().join(format!("parlance-f32-{}", rand::random::<u64>()));
        assert_eq!(copy(&gguf(&[4, 2], 16), &cache, CopyType::F32), None);
        assert_eq!(copy(&gguf(&[4, 2], 16), &cache, CopyType::Bf16), None);
    }

    #[test]
    fn half_floats_widen_exactly() {
        assert_eq!(widen(1, 0x3c00), 1.0);
        assert_eq!(widen(1, 0xc000), -2.0);
        assert_eq!(widen(1, 0x7bff), 65504.0);
        assert_eq!(widen(1, 0x0001), 2f32.powi(-24));
        assert_eq!(widen(1, 0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(widen(1, 0x0400), 2f32.powi(-14));
        assert!(widen(1, 0x7c00).is_infinite());
        assert!(widen(1, 0x7e00).is_nan());
        assert_eq!(widen(1, 0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(widen(30, 0x3f80), 1.0);
        assert_eq!(widen(30, 0xc0a0), -5.0);
    }

    #[test]
    fn floats_round_to_the_nearest_bf16_ties_to_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(to_bf16(-5.0), 0xc0a0);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to the even one, 1.
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        // Halfway above an odd mantissa: up to the even one.
        assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 0x3f81);
        assert_eq!(to_bf16(f32::MAX), 0x7f80, "past BF16's largest: infinity");
        assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
        assert!(widen(30, to_bf16(f32::from_bits(0x7f80_0001))).is_nan());
        // Every F16 value rounds to within BF16's half step.
        for h in (0u16..0x7c00).step_by(7) {
            let v = widen(1, h);
            let b = widen(30, to_bf16(v));
            assert!(
                (b - v).abs() <= v.abs() * 2f32.powi(-8),
                "{h:#x}: {v} -> {b}"
            );
        }
    }
}
