//! A bounded multi-consumer queue that reports lag instead of blocking the producer.
//!
//! The node's actor must never wait for a slow user, so deliveries go into this queue: when it is
//! full the oldest item is dropped and counted, and the next `recv` returns
//! [`Error::Lagged`](crate::Error::Lagged) with the count, as tokio's broadcast channel does.
//! No lock is held across an `.await`: the std mutex guards only push and pop.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

/// What a receiver gets from the queue.
pub(crate) enum Pop<T> {
    Item(T),
    Lagged(u64),
    Closed,
}

struct Inner<T> {
    items: VecDeque<T>,
    lagged: u64,
    total_lagged: u64,
    closed: bool,
}

impl<T> Inner<T> {
    /// Append `item`, dropping the oldest (and counting it as lagged) when `capacity` is full.
    fn push_bounded(&mut self, item: T, capacity: usize) {
        if self.items.len() >= capacity {
            self.items.pop_front();
            self.lagged += 1;
            self.total_lagged += 1;
        }
        self.items.push_back(item);
    }
}

pub(crate) struct Inbox<T> {
    inner: Mutex<Inner<T>>,
    capacity: usize,
    notify: Notify,
}

impl<T> Inbox<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: VecDeque::with_capacity(capacity.min(1024)),
                lagged: 0,
                total_lagged: 0,
                closed: false,
            }),
            capacity: capacity.max(1),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Push an item; drops the oldest one when full.
    #[cfg(test)]
    pub(crate) fn push(&self, item: T) {
        {
            let mut inner = self.lock();
            if inner.closed {
                return;
            }
            inner.push_bounded(item, self.capacity);
        }
        self.notify.notify_one();
    }

    /// Push every item of `items` (oldest first) under one lock, waking a receiver once.
    pub(crate) fn push_all(&self, items: &mut Vec<T>) {
        if items.is_empty() {
            return;
        }
        {
            let mut inner = self.lock();
            if inner.closed {
                items.clear();
                return;
            }
            for item in items.drain(..) {
                inner.push_bounded(item, self.capacity);
            }
        }
        self.notify.notify_one();
    }

    /// No more items will come; waiting receivers wake up and see `Closed` once drained.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Items dropped because the queue was full, over the node's life.
    pub(crate) fn total_lagged(&self) -> u64 {
        self.lock().total_lagged
    }

    fn try_pop(&self) -> Option<Pop<T>> {
        let mut inner = self.lock();
        if inner.lagged > 0 {
            let n = std::mem::take(&mut inner.lagged);
            return Some(Pop::Lagged(n));
        }
        if let Some(item) = inner.items.pop_front() {
            if !inner.items.is_empty() {
                // Let another waiting receiver take the next one.
                drop(inner);
                self.notify.notify_one();
            }
            return Some(Pop::Item(item));
        }
        inner.closed.then_some(Pop::Closed)
    }

    /// Up to `limit` (at least 1) items appended to `out` under one lock, oldest first. A lag
    /// comes first, alone; a lag that happened behind items already taken waits for the
    /// next call.
    fn try_pop_many(&self, out: &mut Vec<T>, limit: usize) -> Option<Pop<usize>> {
        let mut inner = self.lock();
        if inner.lagged > 0 {
            let n = std::mem::take(&mut inner.lagged);
            return Some(Pop::Lagged(n));
        }
        let n = inner.items.len().min(limit.max(1));
        if n == 0 {
            return inner.closed.then_some(Pop::Closed);
        }
        out.extend(inner.items.drain(..n));
        if !inner.items.is_empty() {
            drop(inner);
            self.notify.notify_one();
        }
        Some(Pop::Item(n))
    }

    /// Wait for the next item. Cancel safe: nothing is lost if the future is dropped.
    pub(crate) async fn pop(&self) -> Pop<T> {
        self.wait(|| self.try_pop()).await
    }

    /// Wait until there is at least one item, then take up to `limit` of them into `out`
    /// (see [`Self::try_pop_many`]). Cancel safe, as [`Self::pop`].
    pub(crate) async fn pop_many(&self, out: &mut Vec<T>, limit: usize) -> Pop<usize> {
        self.wait(|| self.try_pop_many(out, limit)).await
    }

    /// Retry `attempt` until it gives something, sleeping on the queue's notifications between
    /// tries. A receiver that keeps up finds items waiting: it takes them without registering
    /// a waiter.
    async fn wait<R>(&self, mut attempt: impl FnMut() -> Option<R>) -> R {
        if let Some(r) = attempt() {
            return r;
        }
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = attempt() {
                return r;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_drops_oldest_and_reports_the_count() {
        let inbox = Inbox::new(2);
        for i in 0..5 {
            inbox.push(i);
        }
        assert!(matches!(inbox.pop().await, Pop::Lagged(3)));
        assert!(matches!(inbox.pop().await, Pop::Item(3)));
        assert!(matches!(inbox.pop().await, Pop::Item(4)));
        inbox.close();
        assert!(matches!(inbox.pop().await, Pop::Closed));
        assert_eq!(inbox.total_lagged(), 3);
    }

    #[tokio::test]
    async fn a_batch_is_pushed_in_order_and_overflows_like_single_pushes() {
        let inbox = Inbox::new(3);
        let mut batch = vec![1, 2, 3, 4, 5];
        inbox.push_all(&mut batch);
        assert!(batch.is_empty());
        assert!(matches!(inbox.pop().await, Pop::Lagged(2)));
        for want in 3..=5 {
            assert!(matches!(inbox.pop().await, Pop::Item(x) if x == want));
        }
        let waiter = {
            let inbox = std::sync::Arc::new(inbox);
            let w = inbox.clone();
            let task = tokio::spawn(async move { matches!(w.pop().await, Pop::Item(9)) });
            tokio::task::yield_now().await;
            inbox.push_all(&mut vec![9]);
            task
        };
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn pop_many_takes_a_batch_and_reports_a_lag_alone_and_first() {
        let inbox = Inbox::new(4);
        inbox.push_all(&mut (0..6).collect());
        let mut got = Vec::new();
        assert!(matches!(inbox.pop_many(&mut got, 3).await, Pop::Lagged(2)));
        assert!(got.is_empty());
        assert!(matches!(inbox.pop_many(&mut got, 3).await, Pop::Item(3)));
        assert_eq!(got, [2, 3, 4]);
        // Overflow behind the items not yet taken: the next call takes none and reports it.
        inbox.push_all(&mut (6..10).collect());
        assert!(matches!(inbox.pop_many(&mut got, 10).await, Pop::Lagged(1)));
        assert!(matches!(inbox.pop_many(&mut got, 10).await, Pop::Item(4)));
        assert_eq!(got, [2, 3, 4, 6, 7, 8, 9]);
        inbox.close();
        assert!(matches!(inbox.pop_many(&mut got, 10).await, Pop::Closed));
        // A limit of 0 takes one, as a plain pop would.
        let inbox = Inbox::new(4);
        inbox.push_all(&mut vec![1, 2]);
        let mut one = Vec::new();
        assert!(matches!(inbox.pop_many(&mut one, 0).await, Pop::Item(1)));
        assert_eq!(one, [1]);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_on_push() {
        let inbox = std::sync::Arc::new(Inbox::new(4));
        let waiter = {
            let inbox = inbox.clone();
            tokio::spawn(async move { matches!(inbox.pop().await, Pop::Item(7)) })
        };
        tokio::task::yield_now().await;
        inbox.push(7);
        assert!(waiter.await.unwrap());
    }
}
