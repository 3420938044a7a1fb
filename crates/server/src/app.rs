//! The service that answers every request: the routes inside the request log (one
//! context and one log line per request), OpenAI-shaped errors for answers no door
//! shaped, and a panic answered as a 500.
//!
//! One service around the router instead of three `Router::layer`s: a router layer
//! wraps every route, and each wrapper cloned and boxed per request (36 of the 200
//! allocations of a proxied request, counted with `perf probe` on the allocator).

use crate::gate::{self, WireFormat};
use crate::reqlog::Arrival;
use axum::body::Body;
use axum::extract::Request;
use axum::http;
use axum::response::Response;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};
use tower::Service;

/// The whole HTTP app (see `build_router`); a tower service, so tests drive it with
/// `oneshot` and the listener serves it.
#[derive(Clone)]
pub struct App {
    router: axum::Router,
}

impl App {
    pub(crate) fn new(router: axum::Router) -> App {
        App { router }
    }
}

impl<B> Service<http::Request<B>> for App
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let mut req: Request = req.map(Body::new);
        let arrival = Arrival::begin(&mut req);
        let router = &mut self.router;
        let routed = std::panic::catch_unwind(AssertUnwindSafe(|| router.call(req)));
        Box::pin(async move {
            let resp = match routed {
                Ok(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
                    Ok(Ok(resp)) => resp,
                    Ok(Err(never)) => match never {},
                    Err(panic) => gate::panic_response(panic),
                },
                Err(panic) => gate::panic_response(panic),
            };
            Ok(arrival.answer(gate::in_format(resp, WireFormat::OpenAi).await))
        })
    }
}
