//! Server-sent events as one body for every door, with keep-alive comments while the
//! stream is quiet. Events that are ready together (an upstream's TCP read carries many
//! chunks) go out as one body frame: each frame costs a trip through hyper's encoder
//! and usually a write of its own, and a 16-delta answer would otherwise take 16.

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// One event: an optional name (`event:` line) and its data.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SseEvent {
    name: Option<String>,
    data: String,
}

impl SseEvent {
    pub(crate) fn data(data: impl Into<String>) -> Self {
        SseEvent {
            name: None,
            data: data.into(),
        }
    }

    pub(crate) fn named(name: impl Into<String>, data: impl Into<String>) -> Self {
        SseEvent {
            name: Some(name.into()),
            data: data.into(),
        }
    }

    fn write_to(&self, out: &mut BytesMut) {
        if let Some(name) = &self.name {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(one_line(name).as_bytes());
            out.extend_from_slice(b"\n");
        }
        // A line break inside the data starts another `data:` line, as the format says.
        for line in self.data.split('\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line.strip_suffix('\r').unwrap_or(line).as_bytes());
            out.extend_from_slice(b"\n");
        }
        out.extend_from_slice(b"\n");
    }
}

/// An event name cannot hold a line break (it would end the field).
fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\n', '\r']) {
        s.replace(['\n', '\r'], " ").into()
    } else {
        s.into()
    }
}

/// Most bytes gathered into one frame before it goes out.
const MAX_FRAME: usize = 64 * 1024;

const KEEP_ALIVE_COMMENT: &[u8] = b":keep-alive\n\n";

/// The `text/event-stream` response for `events`.
pub(crate) fn response(events: BoxStream<'static, SseEvent>, keep_alive: Duration) -> Response {
    let body = Frames {
        events,
        done: false,
        keep_alive,
        timer: Box::pin(tokio::time::sleep(keep_alive)),
    };
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

struct Frames {
    events: BoxStream<'static, SseEvent>,
    done: bool,
    keep_alive: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Stream for Frames {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let mut frame = BytesMut::new();
        while frame.len() < MAX_FRAME {
            match this.events.poll_next_unpin(cx) {
                Poll::Ready(Some(ev)) => ev.write_to(&mut frame),
                Poll::Ready(None) => {
                    this.done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !frame.is_empty() {
            let next = tokio::time::Instant::now() + this.keep_alive;
            this.timer.as_mut().reset(next);
            return Poll::Ready(Some(Ok(frame.freeze())));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            let next = tokio::time::Instant::now() + this.keep_alive;
            this.timer.as_mut().reset(next);
            return Poll::Ready(Some(Ok(Bytes::from_static(KEEP_ALIVE_COMMENT))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    async fn body_of(events: Vec<SseEvent>) -> (Vec<Bytes>, String) {
        let frames: Vec<Bytes> = Frames {
            events: futures::stream::iter(events).boxed(),
            done: false,
            keep_alive: Duration::from_secs(5),
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(5))),
        }
        .map(Result::unwrap)
        .collect()
        .await;
        let text = frames
            .iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect();
        (frames, text)
    }

    #[tokio::test]
    async fn ready_events_share_a_frame_in_the_wire_format() {
        let (frames, text) = body_of(vec![
            SseEvent::named("message_start", "{\"a\":1}"),
            SseEvent::data("two\nlines"),
            SseEvent::named("evil\nname", "x"),
            SseEvent::data("[DONE]"),
        ])
        .await;
        assert_eq!(frames.len(), 1);
        assert_eq!(
            text,
            "event: message_start\ndata: {\"a\":1}\n\ndata: two\ndata: lines\n\n\
             event: evil name\ndata: x\n\ndata: [DONE]\n\n"
        );
    }

    #[tokio::test]
    async fn a_quiet_stream_gets_keep_alive_comments() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<SseEvent>();
        let mut frames = Frames {
            events: rx.boxed(),
            done: false,
            keep_alive: Duration::from_millis(50),
            timer: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
        };
        let first = frames.next().await.unwrap().unwrap();
        assert_eq!(&first[..], KEEP_ALIVE_COMMENT);
        tx.unbounded_send(SseEvent::data("x")).unwrap();
        drop(tx);
        assert_eq!(&frames.next().await.unwrap().unwrap()[..], b"data: x\n\n");
        assert!(frames.next().await.is_none());
    }
}
