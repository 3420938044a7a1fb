//! Graceful shutdown, as requests see it: once the server's deadline for running
//! requests has passed, every answer still streaming ends with an error event (and a
//! whole answer still being generated with a 503), which also frees its slot.

use futures::StreamExt;
use parlance_core::Code;
use parlance_core::{Error, ErrorKind, EventStream};
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    ended: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            ended: Arc::new(watch::channel(false).0),
        }
    }
}

impl Shutdown {
    /// Ends every guarded request now.
    pub fn end_requests(&self) {
        self.ended.send_replace(true);
    }

    /// The backend's events until the end of the answer, or until `end_requests`.
    pub fn guard(&self, mut events: EventStream) -> EventStream {
        let mut ended = self.ended.subscribe();
        Box::pin(async_stream::stream! {
            loop {
                tokio::select! {
                    biased;
                    next = events.next() => match next {
                        Some(e) => yield e,
                        None => return,
                    },
                    ok = async { ended.wait_for(|v| *v).await.is_ok() } => {
                        if !ok {
                            // The server state is gone: nothing will ever end this request early.
                            while let Some(e) = events.next().await {
                                yield e;
                            }
                            return;
                        }
                        yield Err(Error::new(
                            ErrorKind::Unavailable,
                            "the server is shutting down and its deadline for running requests has passed",
                        )
                        .with_code(Code::ServerShutdown));
                        return;
                    }
                }
            }
        })
    }
}
