//! GigaChat takes images as files: each one is uploaded (`POST /files`, multipart,
//! `purpose=general`) and the message names it in `attachments`, its `content` plain
//! text. URLs are fetched first (SSRF-checked, like Gemini's inline bytes).

use crate::{http, Provider};
use base64::Engine as _;
use parlance_core::ir::{ChatRequest, ContentPart, ImageSource};
use parlance_core::ParamPath;
use parlance_core::{Error, ErrorKind};
use serde_json::{json, Value};

/// Uploads the request's images and rewrites the built GigaChat body (one wire message
/// per IR message, in order) to carry them as attachments.
pub(crate) async fn attach_images(
    p: &Provider,
    req: &mut ChatRequest,
    body: &mut Value,
) -> Result<(), Error> {
    if !req.messages.iter().any(|m| m.has_images()) {
        return Ok(());
    }
    if let Some(fetcher) = &p.cfg.images {
        fetcher.inline_images(req).await?;
    }
    for (i, m) in req.messages.iter().enumerate() {
        if !m.has_images() {
            continue;
        }
        let mut ids = Vec::new();
        for (j, part) in m.content.iter().enumerate() {
            let ContentPart::Image(img) = part else {
                continue;
            };
            let ImageSource::Base64 { media_type, data } = img else {
                return Err(Error::invalid_param(
                    ParamPath::message_part(i, j),
                    "GigaChat needs the image's bytes: send a data URL or an http(s) URL Parlance can fetch.",
                ));
            };
            let data = data.clone();
            let decoded = crate::http::cpu(data.len(), move || {
                base64::engine::general_purpose::STANDARD.decode(data)
            })
            .await?;
            let bytes = decoded.map_err(|e| {
                Error::invalid_param(
                    ParamPath::message_part(i, j),
                    format!("The image is not valid base64: {e}."),
                )
            })?;
            ids.push(upload(p, bytes, media_type).await?);
        }
        if let Some(msg) = body["messages"].get_mut(i) {
            msg["content"] = json!(m.joined_text());
            msg["attachments"] = json!(ids);
        }
    }
    Ok(())
}

async fn upload(p: &Provider, bytes: Vec<u8>, media_type: &str) -> Result<String, Error> {
    let ext = media_type.strip_prefix("image/").unwrap_or("bin");
    let url = format!("{}/files", p.cfg.base_url);
    let resp = http::send_multipart(p, &url, || {
        let part = reqwest::multipart::Part::bytes(bytes.clone())
            .file_name(format!("image.{ext}"))
            .mime_str(media_type)
            .unwrap_or_else(|_| reqwest::multipart::Part::bytes(bytes.clone()));
        reqwest::multipart::Form::new()
            .text("purpose", "general")
            .part("file", part)
    })
    .await?;
    let body = http::read_body(p, resp).await?;
    let bad = |why: String| {
        http::from_upstream(
            &p.cfg.name,
            Error::new(ErrorKind::Upstream, why).retryable(),
        )
    };
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("its file upload answer is not JSON: {e}")))?;
    v.get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad("its file upload answer has no `id`".to_string()))
}
