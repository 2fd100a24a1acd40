//! Streaming answers: SSE events spaced by the configured delays, written by a task that
//! notices when the reader (the gateway) goes away.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::openai::{sse_response, Generation};
use crate::{Fault, MockConfig, MockState};

fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

pub fn stream(
    state: Arc<MockState>,
    config: MockConfig,
    generation: Generation,
    include_usage: bool,
    model: Option<tokio::sync::OwnedMutexGuard<()>>,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    state.stats.streams_started.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        // Held until the stream ends, however it ends.
        let _model = model;
        let cancelled = || state.stats.streams_cancelled.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(config.first_token_delay).await;
        for i in 0..generation.tokens {
            if i > 0 {
                tokio::time::sleep(config.token_gap).await;
            }
            if config.fault == Fault::ResetMidStream && i == generation.tokens / 2 {
                // An error item makes hyper abort the connection without ending the body.
                let _ = tx.send(Err(std::io::Error::other("injected reset"))).await;
                return;
            }
            if tx
                .send(Ok(event(&generation.chunk(Some(i)))))
                .await
                .is_err()
            {
                cancelled();
                return;
            }
        }
        let mut tail = vec![event(&generation.chunk(None))];
        if include_usage && generation.report != crate::openai::UsageReport::Omitted {
            tail.push(event(&generation.usage_chunk()));
        }
        tail.push(Bytes::from_static(b"data: [DONE]\n\n"));
        for chunk in tail {
            if tx.send(Ok(chunk)).await.is_err() {
                cancelled();
                return;
            }
        }
        // The body ends when `tx` drops here.
        state.stats.streams_completed.fetch_add(1, Ordering::SeqCst);
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    sse_response(Body::from_stream(body))
}
