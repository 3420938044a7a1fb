//! Images on local models through llama.cpp's mtmd: a projector (`--mmproj`) turns
//! each image into a run of embeddings that take positions in the sequence like
//! tokens. A prompt is text tokens with image spans; each span's positions hold
//! placeholder ids made from the image's hash, so the prefix cache compares images
//! by their bytes the way it compares text by its tokens.

use crate::checks::check_gguf;
use base64::Engine as _;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::mtmd::{
    mtmd_default_marker, MtmdBitmap, MtmdContext, MtmdContextParams, MtmdEvalError,
    MtmdInputChunkType, MtmdInputChunks, MtmdInputText,
};
use llama_cpp_2::token::LlamaToken;
use parlance_core::ir::{ContentPart, ImageSource, Message};
use parlance_core::Code;
use parlance_core::Error;
use parlance_core::ParamPath;
use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Largest decoded side and pixel count: a few-KB PNG can claim 100k x 100k pixels,
/// so dimensions are checked before pixels are allocated.
const MAX_SIDE: u32 = 16_384;
const MAX_ALLOC: u64 = 512 << 20;

/// A loaded projector, shared by the request handlers (tokenizing images, which is
/// thread-safe) and the engine thread (evaluating them, which needs it alone).
pub(crate) struct Vision {
    ctx: RwLock<MtmdContext>,
    /// Whether an image's embeddings attend to each other both ways (Gemma 3): then
    /// all of them must be in one llama.cpp micro-batch, or llama.cpp aborts.
    pub non_causal: bool,
    /// mtmd keeps a pointer to the text model: declared after `ctx`, so it is dropped after.
    _model: Arc<LlamaModel>,
}

/// One image of a prompt: positions `start..start + len`, and what mtmd evaluates there.
pub(crate) struct Media {
    pub start: usize,
    pub len: usize,
    pub chunks: MtmdInputChunks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EvalFailure {
    /// The KV pool has no room for the image's positions.
    NoRoom,
    Other(i32),
}

impl std::fmt::Display for EvalFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalFailure::NoRoom => f.write_str("the context has no room for it"),
            EvalFailure::Other(code) => write!(f, "llama.cpp failed with code {code}"),
        }
    }
}

/// An image taken out of the messages: where it was (for errors) and its bytes.
pub(crate) struct ImageInput {
    pub at: ParamPath,
    pub bytes: Vec<u8>,
}

impl Vision {
    pub(crate) fn load(
        path: &Path,
        model: &Arc<LlamaModel>,
        threads: i32,
        use_gpu: bool,
    ) -> Result<Self, String> {
        check_gguf(path)?;
        let shown = path.display();
        let params = MtmdContextParams {
            use_gpu,
            print_timings: false,
            n_threads: threads,
            media_marker: CString::new(mtmd_default_marker()).map_err(|e| e.to_string())?,
            image_min_tokens: -1,
            image_max_tokens: -1,
        };
        let path_str = path
            .to_str()
            .ok_or_else(|| format!("{shown}: the projector's path is not UTF-8"))?;
        let ctx = MtmdContext::init_from_file(path_str, model, &params).map_err(|e| {
            format!(
                "cannot load the projector {shown} for this model ({e}): it must be an mmproj GGUF made for this model (same embedding size); llama.cpp's log above says why"
            )
        })?;
        if !ctx.support_vision() {
            return Err(format!(
                "{shown} has no vision encoder (audio projectors are not supported)"
            ));
        }
        if ctx.decode_use_mrope() {
            return Err(format!(
                "{shown} is an M-RoPE projector (the Qwen2-VL family), which Parlance does not support yet"
            ));
        }
        Ok(Vision {
            non_causal: ctx.decode_use_non_causal(),
            ctx: RwLock::new(ctx),
            _model: Arc::clone(model),
        })
    }

    /// The marker a rendered prompt carries where each image goes.
    pub(crate) fn marker() -> &'static str {
        mtmd_default_marker()
    }

    /// Decodes and preprocesses one image into what the engine evaluates.
    pub(crate) fn image(&self, bytes: &[u8]) -> Result<MtmdInputChunks, String> {
        let (w, h, rgb) = decode_rgb(bytes)?;
        let bitmap = MtmdBitmap::from_image_data(w, h, &rgb).map_err(|e| e.to_string())?;
        let ctx = self
            .ctx
            .read()
            .map_err(|_| "the projector is unusable after a crash".to_string())?;
        let text = MtmdInputText {
            text: Self::marker().to_string(),
            add_special: false,
            parse_special: true,
        };
        let chunks = ctx
            .tokenize(text, &[&bitmap])
            .map_err(|e| format!("the projector could not take it: {e}"))?;
        if chunks.is_empty() {
            return Err("the projector made no tokens of it".into());
        }
        Ok(chunks)
    }

    /// [`Vision::image`], its failure a 400 naming the part `at`.
    pub(crate) fn image_at(&self, bytes: &[u8], at: &ParamPath) -> Result<MtmdInputChunks, Error> {
        self.image(bytes).map_err(|why| {
            Error::invalid_param(at, format!("The image cannot be used: {why}."))
                .with_code(Code::InvalidImage)
        })
    }

    /// Runs the encoder on `media` and decodes its embeddings into sequence `seq` at
    /// its positions, in one go (a projector with non-causal attention, as Gemma 3's,
    /// needs the whole image in one batch). Only the engine thread calls this.
    pub(crate) fn eval(
        &self,
        media: &Media,
        ctx: &mut LlamaContext<'_>,
        seq: i32,
        n_batch: i32,
    ) -> Result<(), EvalFailure> {
        let mut mtmd = self.ctx.write().map_err(|_| EvalFailure::Other(-1))?;
        match media
            .chunks
            .eval_chunks(&mut mtmd, ctx, media.start as i32, seq, n_batch, false)
        {
            Ok(_) => Ok(()),
            // llama_decode's "no KV slot", passed through by mtmd.
            Err(MtmdEvalError::EvalFailure(1)) => Err(EvalFailure::NoRoom),
            Err(MtmdEvalError::EvalFailure(code)) => Err(EvalFailure::Other(code)),
        }
    }
}

/// The most positions one image chunk of `chunks` takes (without the text mtmd puts
/// around it, which is decoded apart).
pub(crate) fn widest_image(chunks: &MtmdInputChunks) -> usize {
    (0..chunks.len())
        .filter_map(|i| chunks.get(i))
        .filter(|c| c.chunk_type() != MtmdInputChunkType::Text)
        .map(|c| c.n_tokens())
        .max()
        .unwrap_or(0)
}

/// The image's pixels as RGB; JPEG, PNG, WebP and GIF (its first frame).
fn decode_rgb(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), String> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("it is not a JPEG, PNG, WebP or GIF image".into());
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => {
            format!("it is larger than {MAX_SIDE} pixels a side or {MAX_ALLOC} bytes decoded")
        }
        e => format!("it could not be decoded: {e}"),
    })?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err("it has no pixels".into());
    }
    Ok((w, h, rgb.into_raw()))
}

/// Placeholder ids for an image's positions: negative (never a real token), derived
/// from the image's bytes and the position within it.
pub(crate) fn placeholders(bytes: &[u8], n: usize) -> impl Iterator<Item = LlamaToken> {
    let digest = Sha256::digest(bytes);
    let (head, _) = digest.as_chunks::<8>();
    let h = head.first().map_or(0, |&b| u64::from_le_bytes(b));
    (0..n as u64).map(move |k| {
        let mixed = h.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // 30 bits: -2 - v stays within i32 and off -1 (llama.cpp's "no token").
        LlamaToken::new(-2 - (mixed >> 34) as i32)
    })
}

/// The messages with each image replaced by the marker text, and the images' bytes in
/// the order the markers appear.
pub(crate) fn take_images(messages: &[Message]) -> Result<(Vec<Message>, Vec<ImageInput>), Error> {
    let mut images = Vec::new();
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let mut m = m.clone();
        for (j, part) in m.content.iter_mut().enumerate() {
            let ContentPart::Image(source) = part else {
                continue;
            };
            let at = ParamPath::message_part(i, j);
            let bytes = match source {
                ImageSource::Base64 { data, .. } => inline_bytes(data, &at)?,
                ImageSource::Url(url) => {
                    return Err(Error::invalid_param(
                        &at,
                        format!("The image at {url} was not fetched: this server fetches no image URLs for local models; send it as a data URL."),
                    )
                    .with_code(Code::InvalidImageUrl))
                }
            };
            images.push(ImageInput { at, bytes });
            *part = ContentPart::Text(Vision::marker().to_string());
        }
        out.push(m);
    }
    Ok((out, images))
}

/// The first image span ending after `n`, when `n` falls inside it: a cached prefix
/// may only end at an image's edge (its embeddings are evaluated whole).
pub(crate) fn floor_to_media(media: &[Media], n: usize) -> usize {
    media
        .iter()
        .find(|m| m.start < n && n < m.start + m.len)
        .map_or(n, |m| m.start)
}

/// The bytes of an inline image; a 400 naming the part `at` when they are not base64.
fn inline_bytes(data: &str, at: &ParamPath) -> Result<Vec<u8>, Error> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| {
            Error::invalid_param(at, format!("The image's base64 data is invalid: {e}."))
                .with_code(Code::InvalidImage)
        })
}

/// Prompt positions the messages' inline images take (what generation adds for each);
/// images given by URL are not fetched to be counted, and count 0.
pub(crate) fn count_tokens(prep: &crate::prep::Prep, messages: &[Message]) -> Result<u32, Error> {
    let Some(vision) = &prep.vision else {
        return Ok(0);
    };
    let mut total = 0u32;
    for (i, m) in messages.iter().enumerate() {
        for (j, part) in m.content.iter().enumerate() {
            let ContentPart::Image(ImageSource::Base64 { data, .. }) = part else {
                continue;
            };
            let at = ParamPath::message_part(i, j);
            let chunks = vision.image_at(&inline_bytes(data, &at)?, &at)?;
            total = total.saturating_add(chunks.total_tokens() as u32);
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_negative_and_differ_by_image_and_position() {
        let a: Vec<_> = placeholders(b"red", 16).collect();
        let b: Vec<_> = placeholders(b"blue", 16).collect();
        assert!(a.iter().chain(&b).all(|t| t.0 < -1));
        assert_eq!(a, placeholders(b"red", 16).collect::<Vec<_>>());
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 16);
    }

    fn encoded(format: image::ImageFormat) -> Vec<u8> {
        let img = image::RgbImage::from_fn(4, 3, |x, _| image::Rgb([200, 10 * x as u8, 30]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_png_jpeg_webp_and_gif_to_rgb() {
        use image::ImageFormat::{Gif, Jpeg, Png, WebP};
        for format in [Png, Jpeg, WebP, Gif] {
            let (w, h, rgb) = decode_rgb(&encoded(format)).unwrap();
            assert_eq!((w, h, rgb.len()), (4, 3, 36), "{format:?}");
            assert!(rgb[0] > 150 && rgb[2] < 80, "{format:?}: {:?}", &rgb[..3]);
        }
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn undecodable_and_oversized_images_say_why() {
        assert!(decode_rgb(b"not an image")
            .unwrap_err()
            .contains("JPEG, PNG"));
        // A valid PNG header claiming 100000 x 100000 pixels: refused before allocating.
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0d".to_vec();
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        let e = decode_rgb(&png).unwrap_err();
        assert!(e.contains("larger than"), "{e}");
    }
}
