//! The bounded queue from the router to one connection task.
//!
//! Owns only the hand-over of `Outgoing` items. Not tokio's mpsc: that allocates a
//! 32-slot block (about 1.5 KB) per channel up front, which is most of the memory of
//! an idle connection. This queue holds nothing until used and gives its memory back
//! once drained, and keeps the same contract: bounded (`try_send` refuses when
//! full, the router never waits), one sender (the router), one receiver (the
//! connection), `recv` returns None once the sender is gone.
//!
//! It also carries the router's kick (close, with this reason: a takeover, a
//! shutdown), which a oneshot channel used to carry at the cost of one more
//! allocation per connection, and the alarm of a hibernating connection
//! (`connection::hibernate`): while the receiver sleeps outside any task, a
//! push, a kick or the sender's end rings it.

use crate::protocol::ReasonCode;
use crate::session::Outgoing;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// Wakes a hibernating receiver, known to it by `key`.
pub trait Alarm: Send + Sync {
    fn ring(&self, key: u32);
}

/// Whether the receiver is awake, falling asleep, or asleep.
#[derive(Default)]
enum Sleep {
    #[default]
    Awake,
    /// Between `begin_sleep` and `asleep`: a ring now is kept for `asleep`.
    Falling,
    /// Rung while falling asleep: `asleep` refuses.
    Rung,
    /// The key is 32 bits so that the tag fits beside it: 24 bytes, not 32.
    Asleep(Arc<dyn Alarm>, u32),
}

/// Drained queues keep at most this many slots of capacity.
const KEEP: usize = 16;

struct Inner {
    items: VecDeque<Outgoing>,
    /// Message bytes held (see `Message::cost`), so the router can cap QoS 0
    /// buffering by bytes as well as by count.
    bytes: usize,
    sender_gone: bool,
    receiver_gone: bool,
    /// `recv` found the queue empty and waits: the next push wakes the
    /// receiver. Without it, a push would wake a receiver that waits only for
    /// its kick (its writes backed up, it takes no items), for nothing.
    recv_waiting: bool,
    sleep: Sleep,
    /// The router's kick, until the receiver takes it (the first one counts):
    /// its reason code, 0 for none (a kick's reason is an error, 0x80 or
    /// above; one byte where an `Option` took two, so the flags and the
    /// capacity fit in one word).
    kick: u8,
    /// Items it may hold. Here, in what would be padding, rather than beside
    /// the lock: every connection has an outbox (issue 15).
    capacity: u32,
}

impl Inner {
    /// Something for the receiver: the alarm to ring (after the lock is
    /// released) if it is asleep.
    fn ring(&mut self) -> Option<(Arc<dyn Alarm>, u32)> {
        match std::mem::take(&mut self.sleep) {
            Sleep::Asleep(alarm, key) => Some((alarm, key)),
            Sleep::Falling | Sleep::Rung => {
                self.sleep = Sleep::Rung;
                None
            }
            Sleep::Awake => None,
        }
    }
}

fn ring(alarm: Option<(Arc<dyn Alarm>, u32)>) {
    if let Some((alarm, key)) = alarm {
        alarm.ring(key);
    }
}

struct Shared {
    inner: Mutex<Inner>,
    /// The receiver's task, waiting for an item, a kick or the sender's end.
    /// One waker for all three (not a `Notify` beside it: 32 bytes more in
    /// every connection's outbox): the receiver is one task, which waits for
    /// them together.
    waker: AtomicWaker,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave `Inner` inconsistent (each
        // operation is one push or pop), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn outbox(capacity: usize) -> (OutboxSender, OutboxReceiver) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            items: VecDeque::new(),
            bytes: 0,
            sender_gone: false,
            recv_waiting: false,
            receiver_gone: false,
            sleep: Sleep::Awake,
            kick: 0,
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
        }),
        waker: AtomicWaker::new(),
    });
    (
        OutboxSender {
            shared: shared.clone(),
        },
        OutboxReceiver { shared },
    )
}

#[derive(Debug)]
pub struct OutboxSender {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("capacity", &self.lock().capacity)
            .finish()
    }
}

impl OutboxSender {
    /// Queue `item` unless the outbox is full or the connection is gone.
    pub fn try_send(&self, item: Outgoing) -> Result<(), Outgoing> {
        let alarm = {
            let mut g = self.shared.lock();
            if g.receiver_gone || g.items.len() >= g.capacity as usize {
                return Err(item);
            }
            g.bytes += cost(&item);
            g.items.push_back(item);
            (std::mem::take(&mut g.recv_waiting), g.ring())
        };
        let (waiting, alarm) = alarm;
        if waiting {
            // `recv` registered before it looked: no lost wake-up.
            self.shared.waker.wake();
        }
        ring(alarm);
        Ok(())
    }

    /// Tell the receiver to close with `reason` (unless an earlier kick is
    /// still waiting for it), waking it wherever it is.
    pub fn kick(&self, reason: ReasonCode) {
        let alarm = {
            let mut g = self.shared.lock();
            debug_assert!(reason.is_error(), "a kick with {reason:?}");
            if g.kick == 0 {
                g.kick = reason.0.max(ReasonCode::UNSPECIFIED_ERROR.0);
            }
            g.ring()
        };
        self.shared.waker.wake();
        ring(alarm);
    }

    /// Message bytes waiting in the outbox.
    pub fn bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// Free slots.
    pub fn capacity(&self) -> usize {
        let g = self.shared.lock();
        (g.capacity as usize).saturating_sub(g.items.len())
    }
}

impl Drop for OutboxSender {
    fn drop(&mut self) {
        let alarm = {
            let mut g = self.shared.lock();
            g.sender_gone = true;
            g.ring()
        };
        self.shared.waker.wake();
        ring(alarm);
    }
}

#[derive(Debug)]
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

impl OutboxReceiver {
    /// The next item, or None once the sender is gone and the queue is empty.
    /// Cancel-safe: an item is only taken when this returns it. Only one task
    /// waits on a receiver (see `Shared::waker`).
    pub async fn recv(&self) -> Option<Outgoing> {
        std::future::poll_fn(|cx| {
            self.shared.waker.register(cx.waker());
            let mut g = self.shared.lock();
            if let Some(item) = pop(&mut g) {
                return std::task::Poll::Ready(Some(item));
            }
            if g.sender_gone {
                return std::task::Poll::Ready(None);
            }
            g.recv_waiting = true;
            std::task::Poll::Pending
        })
        .await
    }

    pub fn try_recv(&mut self) -> Option<Outgoing> {
        pop(&mut self.shared.lock())
    }

    /// The router's kick: Some(reason) once kicked, None once the sender is
    /// gone. Cancel-safe: the kick is taken only when this returns it.
    pub async fn kicked(&self) -> Option<ReasonCode> {
        std::future::poll_fn(|cx| {
            self.shared.waker.register(cx.waker());
            let mut g = self.shared.lock();
            if g.kick != 0 {
                return std::task::Poll::Ready(Some(ReasonCode(std::mem::take(&mut g.kick))));
            }
            if g.sender_gone {
                return std::task::Poll::Ready(None);
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// The kick waiting to be taken, if any (tests).
    pub fn kick_waiting(&self) -> Option<ReasonCode> {
        let kick = self.shared.lock().kick;
        (kick != 0).then_some(ReasonCode(kick))
    }

    /// The receiver is about to hibernate: false if anything is waiting for
    /// it, a kick included (it stays awake). A ring from now on is kept for
    /// `asleep`. The waker of the task that waited is let go: kept, it would
    /// keep that ended task's whole allocation alive.
    pub fn begin_sleep(&self) -> bool {
        let mut g = self.shared.lock();
        if !g.items.is_empty() || g.sender_gone || g.kick != 0 {
            return false;
        }
        g.sleep = Sleep::Falling;
        drop(g);
        drop(self.shared.waker.take());
        true
    }

    /// The receiver sleeps and `alarm` wakes it as `key`; false if it was
    /// rung since `begin_sleep` (it must wake at once).
    pub fn asleep(&self, alarm: Arc<dyn Alarm>, key: u32) -> bool {
        let mut g = self.shared.lock();
        match g.sleep {
            Sleep::Falling => {
                g.sleep = Sleep::Asleep(alarm, key);
                true
            }
            _ => {
                g.sleep = Sleep::Awake;
                false
            }
        }
    }

    /// Awake again (woken, or it did not fall asleep after all).
    pub fn awake(&self) {
        self.shared.lock().sleep = Sleep::Awake;
    }
}

fn cost(item: &Outgoing) -> usize {
    match item {
        Outgoing::Publish { delivery, .. } => delivery.message.cost(),
        _ => 0,
    }
}

fn pop(g: &mut Inner) -> Option<Outgoing> {
    let item = g.items.pop_front();
    if let Some(i) = &item {
        g.bytes = g.bytes.saturating_sub(cost(i));
    }
    if g.items.is_empty() && g.items.capacity() > KEEP {
        // An idle connection keeps almost nothing.
        g.items = VecDeque::new();
    }
    item
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let mut g = self.shared.lock();
        g.receiver_gone = true;
        g.items.clear();
        g.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PacketId;
    use futures_util::FutureExt;

    fn item(n: u16) -> Outgoing {
        Outgoing::PubRel(PacketId::new(n).unwrap())
    }

    #[tokio::test]
    async fn bounded_fifo_and_close() {
        let (tx, mut rx) = outbox(2);
        assert!(tx.try_send(item(1)).is_ok());
        assert!(tx.try_send(item(2)).is_ok());
        assert!(tx.try_send(item(3)).is_err(), "full");
        assert_eq!(tx.capacity(), 0);
        assert_eq!(rx.recv().await, Some(item(1)));
        assert_eq!(rx.try_recv(), Some(item(2)));
        assert_eq!(rx.try_recv(), None);
        assert_eq!(tx.capacity(), 2);
        drop(tx);
        assert_eq!(rx.recv().await, None, "sender gone");
    }

    #[tokio::test]
    async fn wakes_a_waiting_receiver_and_refuses_after_receiver_drop() {
        let (tx, rx) = outbox(4);
        let waiter = tokio::spawn(async move {
            let got = rx.recv().await;
            (got, rx)
        });
        tokio::task::yield_now().await;
        tx.try_send(item(7)).unwrap();
        let (got, rx) = waiter.await.unwrap();
        assert_eq!(got, Some(item(7)));
        drop(rx);
        assert!(tx.try_send(item(8)).is_err(), "connection gone");
    }

    /// Counts rings by key.
    #[derive(Default)]
    struct Bell(Mutex<Vec<u32>>);

    impl Alarm for Bell {
        fn ring(&self, key: u32) {
            self.0.lock().unwrap().push(key);
        }
    }

    #[test]
    fn a_sleeping_receiver_is_rung_once_by_a_push_a_kick_or_the_senders_end() {
        let bell = Arc::new(Bell::default());
        let (tx, mut rx) = outbox(4);
        // Asleep: a push rings, once; it is awake until it sleeps again.
        assert!(rx.begin_sleep());
        assert!(rx.asleep(bell.clone(), 7));
        tx.try_send(item(1)).unwrap();
        tx.try_send(item(2)).unwrap();
        assert_eq!(*bell.0.lock().unwrap(), vec![7]);
        // Not while something waits.
        assert!(!rx.begin_sleep());
        assert_eq!(rx.try_recv(), Some(item(1)));
        assert_eq!(rx.try_recv(), Some(item(2)));
        // A kick rings, and no sleep while it waits.
        assert!(rx.begin_sleep());
        assert!(rx.asleep(bell.clone(), 8));
        tx.kick(ReasonCode::SESSION_TAKEN_OVER);
        assert_eq!(*bell.0.lock().unwrap(), vec![7, 8]);
        assert!(!rx.begin_sleep());
        assert_eq!(
            rx.kicked().now_or_never(),
            Some(Some(ReasonCode::SESSION_TAKEN_OVER))
        );
        // Kicked while falling asleep: `asleep` refuses, nobody is rung.
        assert!(rx.begin_sleep());
        tx.kick(ReasonCode::SERVER_SHUTTING_DOWN);
        assert!(!rx.asleep(bell.clone(), 9));
        assert_eq!(bell.0.lock().unwrap().len(), 2);
        assert_eq!(
            rx.kicked().now_or_never(),
            Some(Some(ReasonCode::SERVER_SHUTTING_DOWN))
        );
        // Fell asleep, then woken by other means and awake: no ring.
        assert!(rx.begin_sleep());
        assert!(rx.asleep(bell.clone(), 10));
        rx.awake();
        tx.try_send(item(3)).unwrap();
        assert_eq!(bell.0.lock().unwrap().len(), 2);
        assert_eq!(rx.try_recv(), Some(item(3)));
        // The sender's end rings a sleeper, and nothing sleeps after it.
        assert!(rx.begin_sleep());
        assert!(rx.asleep(bell.clone(), 11));
        drop(tx);
        assert_eq!(*bell.0.lock().unwrap(), vec![7, 8, 11]);
        assert!(!rx.begin_sleep());
        assert_eq!(rx.kicked().now_or_never(), Some(None), "sender gone");
    }

    /// Counts its wakes.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A push wakes a receiver waiting in `recv`, and not one that waits only
    /// for its kick (its writes backed up: it takes no items); the kick wakes
    /// either.
    #[test]
    fn a_push_wakes_only_a_receiver_that_takes_items() {
        use std::future::Future;
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let count = || wakes.0.load(std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = outbox(4);
        {
            let kicked = std::pin::pin!(rx.kicked());
            assert!(kicked.poll(&mut cx).is_pending());
        }
        tx.try_send(item(1)).unwrap();
        assert_eq!(count(), 0, "not taking items: not woken");
        {
            let recv = std::pin::pin!(rx.recv());
            assert_eq!(recv.poll(&mut cx), std::task::Poll::Ready(Some(item(1))));
        }
        {
            let recv = std::pin::pin!(rx.recv());
            assert!(recv.poll(&mut cx).is_pending());
        }
        tx.try_send(item(2)).unwrap();
        assert_eq!(count(), 1, "waiting in recv: woken");
        tx.try_send(item(3)).unwrap();
        assert_eq!(count(), 1, "once, until it looks again");
        {
            // Its writes backed up: it waits for its kick only.
            let kicked = std::pin::pin!(rx.kicked());
            assert!(kicked.poll(&mut cx).is_pending());
        }
        tx.try_send(item(4))
            .unwrap_or_else(|_| panic!("room for a 4th"));
        assert_eq!(count(), 1, "a push does not wake it");
        tx.kick(ReasonCode::SESSION_TAKEN_OVER);
        assert_eq!(count(), 2, "the kick wakes it");
    }

    /// Every connection has an outbox, hibernating or not: keep it small.
    /// With its `Arc` counts, 120 bytes is one 128-byte malloc chunk.
    #[test]
    fn an_outbox_stays_small() {
        let size = std::mem::size_of::<Shared>();
        assert!(size <= 104, "an outbox grew to {size} bytes");
    }

    #[tokio::test]
    async fn recv_is_cancel_safe() {
        let (tx, rx) = outbox(4);
        // A recv that loses a select race takes nothing.
        tokio::select! {
            biased;
            _ = std::future::ready(()) => {}
            _ = rx.recv() => panic!("nothing was sent"),
        }
        tx.try_send(item(1)).unwrap();
        assert_eq!(rx.recv().await, Some(item(1)));
    }
}
