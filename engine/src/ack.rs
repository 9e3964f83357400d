//! Delivery tracking: ack tokens and per-partition checkpoint trackers.
//!
//! A source registers every position it reads with a [`Tracker`] and receives an [`AckToken`].
//! The token rides beside the event (and its clones, when a transform fans out or several sinks
//! receive it). Each clone must be [`AckToken::ack`]ed; when the last clone is acked the position
//! is *done*. A clone that is dropped without an ack (a task aborted at the shutdown deadline, a
//! panic) marks the position *abandoned*: it never becomes done, so the checkpoint never passes it
//! and the event is read again after a restart. That is the at-least-once contract in one rule.
//!
//! [`Tracker::take_committable`] yields the newest position of the unbroken run of done positions,
//! which is the only thing a source may commit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Resolves one tracked position when its last token share is gone.
trait Resolve: Send + Sync {
    fn resolve(&self, seq: u64, done: bool);
}

struct AckInner {
    resolver: Arc<dyn Resolve>,
    seq: u64,
    abandoned: AtomicBool,
}

impl Drop for AckInner {
    fn drop(&mut self) {
        let done = !self.abandoned.load(Ordering::Acquire);
        self.resolver.resolve(self.seq, done);
    }
}

/// A share of responsibility for one tracked position. Clone it for each copy of the event;
/// ack every clone. Dropping a clone without acking it abandons the position (see module docs).
pub struct AckToken(Option<Arc<AckInner>>);

impl AckToken {
    /// A token that tracks nothing (tests, sources without checkpoints).
    pub fn untracked() -> Self {
        AckToken(None)
    }

    /// This share is done: delivered, dropped on purpose, or taken by the dead-letter sink.
    pub fn ack(mut self) {
        self.0.take();
    }
}

impl Clone for AckToken {
    fn clone(&self) -> Self {
        AckToken(self.0.clone())
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            inner.abandoned.store(true, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(inner) => write!(f, "AckToken(seq {})", inner.seq),
            None => f.write_str("AckToken(untracked)"),
        }
    }
}

#[derive(Debug)]
enum Slot {
    Pending,
    Done,
    Abandoned,
}

struct State<P> {
    /// Sequence number of `entries[0]`.
    base: u64,
    entries: VecDeque<(P, Slot)>,
    /// Newest position of the unbroken done run not yet handed out by `take_committable`.
    committable: Option<P>,
    abandoned: u64,
}

struct Shared<P> {
    state: Mutex<State<P>>,
    progress: Notify,
    max_pending: usize,
}

impl<P> Shared<P> {
    fn lock(&self) -> MutexGuard<'_, State<P>> {
        // A poisoned lock only means another thread panicked mid-update of plain data; the
        // state itself stays consistent (each update is a single field write), so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<P: Send + 'static> Resolve for Shared<P> {
    fn resolve(&self, seq: u64, done: bool) {
        let mut st = self.lock();
        let Some(idx) = seq.checked_sub(st.base) else { return };
        let Some(entry) = st.entries.get_mut(idx as usize) else { return };
        entry.1 = if done { Slot::Done } else { Slot::Abandoned };
        if !done {
            st.abandoned += 1;
            tracing::warn!(seq, "event abandoned before delivery; its checkpoint will not advance");
        }
        let mut advanced = false;
        while matches!(st.entries.front(), Some((_, Slot::Done))) {
            if let Some((pos, _)) = st.entries.pop_front() {
                st.committable = Some(pos);
                st.base += 1;
                advanced = true;
            }
        }
        drop(st);
        if advanced {
            self.progress.notify_waiters();
        }
    }
}

/// Tracks the positions of one partition (or one file, one feed range) in read order.
pub struct Tracker<P> {
    shared: Arc<Shared<P>>,
}

impl<P> Clone for Tracker<P> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<P: Send + 'static> Tracker<P> {
    /// A tracker that lets at most `max_pending` positions be in flight before
    /// [`Tracker::wait_for_room`] makes the source wait.
    pub fn new(max_pending: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    base: 0,
                    entries: VecDeque::new(),
                    committable: None,
                    abandoned: 0,
                }),
                progress: Notify::new(),
                max_pending: max_pending.max(1),
            }),
        }
    }

    /// Register the next position in read order and get the token for it.
    pub fn track(&self, position: P) -> AckToken {
        let mut st = self.shared.lock();
        let seq = st.base + st.entries.len() as u64;
        st.entries.push_back((position, Slot::Pending));
        drop(st);
        let resolver: Arc<dyn Resolve> = self.shared.clone();
        AckToken(Some(Arc::new(AckInner { resolver, seq, abandoned: AtomicBool::new(false) })))
    }

    /// The newest position whose predecessors are all done, if it moved since the last call.
    pub fn take_committable(&self) -> Option<P> {
        self.shared.lock().committable.take()
    }

    /// Positions read but not yet done (including abandoned ones and those behind them).
    pub fn pending(&self) -> usize {
        self.shared.lock().entries.len()
    }

    /// Positions abandoned so far (their events will be read again after a restart).
    pub fn abandoned(&self) -> u64 {
        self.shared.lock().abandoned
    }

    /// Wait until fewer than `max_pending` positions are in flight (backpressure on the source).
    pub async fn wait_for_room(&self) {
        loop {
            let notified = self.shared.progress.notified();
            if self.pending() < self.shared.max_pending {
                return;
            }
            notified.await;
        }
    }

    /// Wait until every tracked position is done, or some position was abandoned.
    pub async fn wait_drained(&self) {
        loop {
            let notified = self.shared.progress.notified();
            {
                let st = self.shared.lock();
                if st.entries.is_empty() || st.abandoned > 0 {
                    return;
                }
            }
            // Abandonment does not notify (it cannot advance anything); poll as a fallback.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), notified).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_unbroken_done_run() {
        let t: Tracker<u64> = Tracker::new(100);
        let a = t.track(10);
        let b = t.track(11);
        let c = t.track(12);
        c.ack();
        assert_eq!(t.take_committable(), None, "12 is done but 10 and 11 are not");
        a.ack();
        assert_eq!(t.take_committable(), Some(10));
        assert_eq!(t.take_committable(), None, "nothing new since the last take");
        b.ack();
        assert_eq!(t.take_committable(), Some(12));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn every_clone_must_ack() {
        let t: Tracker<u64> = Tracker::new(100);
        let a = t.track(1);
        let a2 = a.clone();
        a.ack();
        assert_eq!(t.take_committable(), None);
        a2.ack();
        assert_eq!(t.take_committable(), Some(1));
    }

    #[test]
    fn a_dropped_clone_abandons_the_position_forever() {
        let t: Tracker<u64> = Tracker::new(100);
        let a = t.track(1);
        let a2 = a.clone();
        let b = t.track(2);
        drop(a2);
        a.ack();
        b.ack();
        assert_eq!(t.take_committable(), None, "position 1 was abandoned; 2 must not commit");
        assert_eq!(t.abandoned(), 1);
        assert_eq!(t.pending(), 2);
    }

    #[tokio::test]
    async fn wait_for_room_blocks_until_acks_arrive() {
        let t: Tracker<u64> = Tracker::new(2);
        let a = t.track(1);
        let _b = t.track(2);
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.wait_for_room().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        a.ack();
        tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
            .await
            .expect("room after an ack")
            .expect("task");
    }
}
