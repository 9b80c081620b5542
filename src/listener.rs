//! Accepting connections: TCP listeners and the connection cap. No MQTT semantics.
//!
//! Owns the accept loop. A connection over `max_connections` is closed at once; the
//! permit moves into the connection task, so a finished task frees its slot however
//! it ends.

use crate::connection::{serve, Shared};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            shared
                .metrics
                .connections_refused_limit
                .fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "max_connections reached: refused");
            drop(socket);
            continue;
        };
        shared
            .metrics
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        // Small packets are the norm: do not wait for Nagle.
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        tracker.spawn(async move {
            let _permit = permit;
            serve(socket, peer, shared).await;
        });
    }
}
