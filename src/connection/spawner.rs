//! Connections' tasks, allocated on a thread of their own.
//!
//! glibc's malloc serves each thread from its own arena. A task allocated by
//! a worker thread (about 1.3 KB, its future's largest state) lies between
//! what that thread allocates for longer: outboxes, client ids, the router's
//! records, hibernating connections' rooms. When the task ends, as a
//! connection hibernates, the hole it leaves is less than a page and can
//! never go back to the system. Tasks allocated here share an arena with
//! nothing that outlives them, so once the connections they served hibernate
//! or close, their pages are free and `memory::trim` returns them (measured
//! at 10,000 hibernating connections: 2.0 KB of RSS each against 2.9 KB with
//! the tasks among the rest).
//!
//! Owns that thread and the queue to it: accepted connections (plain, TLS and
//! WebSocket) and woken hibernating ones come in, tasks on the broker's
//! runtime go out.
//! The futures are built here too, so nothing of theirs is allocated
//! elsewhere first.

use super::hibernate::{woken, Room};
use super::Shared;
use crate::connection_slots::Slot;
use crate::login::Peer;
use std::sync::mpsc;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

enum Job {
    Accepted {
        socket: TcpStream,
        peer: Box<Peer>,
        shared: Arc<Shared>,
        slot: Slot,
    },
    Upgraded {
        socket: TcpStream,
        peer: std::net::SocketAddr,
        transport: Arc<crate::listener::Transport>,
        shared: Arc<Shared>,
        slot: Slot,
    },
    Woken(Box<Room>),
}

/// The queue to the spawning thread. The thread ends once the spawner is
/// dropped and its queue is empty.
pub struct Spawner {
    tx: mpsc::Sender<(Job, TaskTrackerToken)>,
    tracker: TaskTracker,
}

impl Spawner {
    /// Start the thread; tasks go to the runtime of `handle`, tracked by
    /// `tracker` (a job waiting in the queue counts as a task, so the
    /// broker's shutdown waits for it).
    pub fn start(handle: tokio::runtime::Handle, tracker: TaskTracker) -> std::io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<(Job, TaskTrackerToken)>();
        let spawn_tracker = tracker.clone();
        std::thread::Builder::new()
            .name("tern-conn-spawn".into())
            .spawn(move || {
                while let Ok((job, token)) = rx.recv() {
                    match job {
                        Job::Accepted {
                            socket,
                            peer,
                            shared,
                            slot,
                        } => {
                            spawn_tracker
                                .spawn_on(super::serve(socket, peer, shared, slot), &handle);
                        }
                        Job::Upgraded {
                            socket,
                            peer,
                            transport,
                            shared,
                            slot,
                        } => {
                            spawn_tracker.spawn_on(
                                crate::listener::serve_upgraded(
                                    socket, peer, transport, shared, slot,
                                ),
                                &handle,
                            );
                        }
                        Job::Woken(room) => {
                            spawn_tracker.spawn_on(woken(room), &handle);
                        }
                    }
                    drop(token);
                }
            })?;
        Ok(Spawner { tx, tracker })
    }

    fn send(&self, job: Job) {
        // The thread ends only when this sender is gone, so this cannot fail.
        let _ = self.tx.send((job, self.tracker.token()));
    }

    /// Serve an accepted plain TCP connection (`connection::serve`).
    pub fn accepted(&self, socket: TcpStream, peer: Box<Peer>, shared: Arc<Shared>, slot: Slot) {
        self.send(Job::Accepted {
            socket,
            peer,
            shared,
            slot,
        });
    }

    /// Serve an accepted TLS or WebSocket connection
    /// (`listener::serve_upgraded`).
    pub fn upgraded(
        &self,
        socket: TcpStream,
        peer: std::net::SocketAddr,
        transport: Arc<crate::listener::Transport>,
        shared: Arc<Shared>,
        slot: Slot,
    ) {
        self.send(Job::Upgraded {
            socket,
            peer,
            transport,
            shared,
            slot,
        });
    }

    /// Serve a hibernating connection again.
    pub(super) fn woken(&self, room: Box<Room>) {
        self.send(Job::Woken(room));
    }
}
