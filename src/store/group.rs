//! Group commit: small write transactions from concurrent threads share one redb commit.
//!
//! A caller queues its operation. When no group is committing, it becomes the leader: it
//! drains the queue and runs every queued operation in one write transaction with one
//! durable commit. Otherwise it sleeps until the group under way is settled, and then either
//! finds its result (its operation was in that group) or leads the next group. While one
//! group commits (fsyncs), the next one gathers; when it is done, every waiter wakes at
//! once, so the next leader starts at once instead of after a hand-over of a lock from one
//! settled member to the next. Durability is unchanged: nobody returns before the commit
//! that holds its operation is durable.
//!
//! A blob's commit is announced before its last fsyncs, about a millisecond before it
//! queues: before the data file's fsync when the blob is small enough to be still whole in
//! its writer's buffer, after it (before the shard directory's) for larger blobs, whose data
//! sync can take seconds. A new leader waits for announced commits to queue,
//! at most [`GATHER`]: with 8 concurrent writers of small blobs this doubles the blobs per
//! transaction (3 to 6; `cargo bench --bench ingest -- small` prints it) and halves the
//! commits' fsyncs, for at most a millisecond more latency per group.
//!
//! An operation returns `Ok` for every outcome it can decide itself (it reads before it
//! writes); an `Err` aborts the whole group, and every member gets the error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use redb::WriteTransaction;

use crate::error::{Error, Result};
use crate::store::Store;

type Op = Box<dyn FnOnce(&WriteTransaction) -> Result<()> + Send>;

struct Job {
    op: Op,
    slot: Slot,
}

/// The queue of one store and whether a group is committing.
#[derive(Default)]
pub(crate) struct Committer {
    queue: Mutex<Queue>,
    settled: Condvar,
    /// Signalled when an announced commit arrives (or gives up), for a gathering leader.
    arrived: Condvar,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Job>,
    leading: bool,
    /// Commits announced and on their way (fsyncing their files) but not queued yet.
    arriving: usize,
}

/// How long a new leader waits at most for announced commits to join its group.
const GATHER: Duration = Duration::from_millis(1);

/// A commit on its way to the group, announced before its last file syncs so that a new
/// leader can wait for it rather than commit without it. Dropped unused, it withdraws.
pub(crate) struct Arrival {
    store: Store,
    pending: bool,
}

impl Drop for Arrival {
    fn drop(&mut self) {
        if self.pending {
            let c = self.store.committer();
            c.queue.lock().arriving -= 1;
            c.arrived.notify_all();
        }
    }
}

/// Ends a leader's turn, also when its group panicked: fails every member still without a
/// result (they would otherwise lead empty groups forever), clears `leading`, wakes everyone.
struct Turn<'a> {
    committer: &'a Committer,
    slots: Vec<Slot>,
}

type Slot = Arc<Mutex<Option<Result<()>>>>;

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        for slot in &self.slots {
            let mut slot = slot.lock();
            if slot.is_none() {
                *slot = Some(Err(Error::Database {
                    action: "commit a group of writes",
                    source: Box::new(GroupFailed(
                        "the thread committing the group panicked".to_owned(),
                    )),
                }));
            }
        }
        self.committer.queue.lock().leading = false;
        self.committer.settled.notify_all();
    }
}

/// The error a group member gets when another member's operation failed the group.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct GroupFailed(String);

impl Store {
    /// Runs `op` in a write transaction shared with concurrent callers; returns its result
    /// once the transaction is durable.
    pub(crate) fn group_write<T: Send + 'static>(
        &self,
        action: &str,
        op: impl FnOnce(&WriteTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.group_write_announced(action, None, op)
    }

    /// Announces a commit that will reach [`Store::group_write_announced`] shortly.
    pub(crate) fn announce(&self) -> Arrival {
        self.committer().queue.lock().arriving += 1;
        Arrival {
            store: self.clone(),
            pending: true,
        }
    }

    /// [`Store::group_write`] for an announced commit.
    pub(crate) fn group_write_announced<T: Send + 'static>(
        &self,
        action: &str,
        mut arrival: Option<Arrival>,
        op: impl FnOnce(&WriteTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.writable(action)?;
        let out: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
        let slot = Arc::new(Mutex::new(None));
        let sink = out.clone();
        let job = Job {
            op: Box::new(move |txn| {
                let v = op(txn)?;
                *sink.lock() = Some(v);
                Ok(())
            }),
            slot: slot.clone(),
        };
        let committer = self.committer();
        let mut queue = committer.queue.lock();
        queue.pending.push(job);
        if let Some(a) = arrival.as_mut() {
            a.pending = false;
            queue.arriving -= 1;
            committer.arrived.notify_all();
        }
        while slot.lock().is_none() {
            if queue.leading {
                committer.settled.wait(&mut queue);
                continue;
            }
            queue.leading = true;
            let deadline = Instant::now() + GATHER;
            while queue.arriving > 0 {
                if committer
                    .arrived
                    .wait_until(&mut queue, deadline)
                    .timed_out()
                {
                    break;
                }
            }
            let jobs = std::mem::take(&mut queue.pending);
            drop(queue);
            let turn = Turn {
                committer,
                slots: jobs.iter().map(|j| Arc::clone(&j.slot)).collect(),
            };
            self.settle(action, jobs);
            drop(turn);
            queue = committer.queue.lock();
        }
        drop(queue);
        let result = slot.lock().take().expect("a leader settled this job");
        result?;
        Ok(out.lock().take().expect("a settled job produced its value"))
    }

    /// Runs `jobs` in one transaction and fills every slot.
    fn settle(&self, action: &str, jobs: Vec<Job>) {
        let (ops, slots): (Vec<Op>, Vec<_>) = jobs.into_iter().map(|j| (j.op, j.slot)).unzip();
        // Which job failed (None: the transaction itself), and how.
        let mut failed: Option<(Option<usize>, Error)> = None;
        match self.write_txn(action) {
            Err(e) => failed = Some((None, e)),
            Ok(txn) => {
                for (i, op) in ops.into_iter().enumerate() {
                    if let Err(e) = op(&txn) {
                        failed = Some((Some(i), e));
                        break;
                    }
                }
                if failed.is_none()
                    && let Err(e) = txn.commit()
                {
                    failed = Some((None, Error::db("commit a group of writes", e)));
                }
            }
        }
        let Some((culprit, err)) = failed else {
            for s in slots {
                *s.lock() = Some(Ok(()));
            }
            return;
        };
        let msg = err.to_string();
        let mut original = Some(err);
        for (i, s) in slots.into_iter().enumerate() {
            let mine = culprit.is_none_or(|c| c == i) && (culprit.is_some() || i == 0);
            let e = match (mine, original.take()) {
                (true, Some(e)) => e,
                (_, o) => {
                    original = o;
                    Error::Database {
                        action: "commit a group of writes",
                        source: Box::new(GroupFailed(msg.clone())),
                    }
                }
            };
            *s.lock() = Some(Err(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arriving(store: &Store) -> usize {
        store.committer().queue.lock().arriving
    }

    #[test]
    fn announcements_are_counted_until_they_queue_or_withdraw() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.announce();
        let b = store.announce();
        assert_eq!(arriving(&store), 2);
        // A commit that fails before queueing (a digest mismatch) withdraws.
        drop(a);
        assert_eq!(arriving(&store), 1);
        store
            .group_write_announced("test", Some(b), |_| Ok(()))
            .unwrap();
        assert_eq!(arriving(&store), 0);
    }

    #[test]
    fn a_panicking_group_fails_its_members_and_the_next_group_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let slot: Slot = Arc::new(Mutex::new(None));
        let other = Job {
            op: Box::new(|_| Ok(())),
            slot: Arc::clone(&slot),
        };
        let boom = Job {
            op: Box::new(|_| panic!("an operation that panics")),
            slot: Arc::new(Mutex::new(None)),
        };
        let committer = store.committer();
        committer.queue.lock().leading = true;
        let jobs = vec![boom, other];
        let turn = Turn {
            committer,
            slots: jobs.iter().map(|j| Arc::clone(&j.slot)).collect(),
        };
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.settle("test", jobs);
            drop(turn);
        }));
        assert!(caught.is_err());
        let err = slot.lock().take().unwrap().unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        assert!(!committer.queue.lock().leading);
        assert_eq!(store.group_write("test", |_| Ok(1)).unwrap(), 1);
    }

    #[test]
    fn an_announcement_that_never_arrives_does_not_hold_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let _stuck = store.announce();
        // The leader gathers for at most GATHER, then commits without it.
        let v = store.group_write("test", |_| Ok(7)).unwrap();
        assert_eq!(v, 7);
        assert_eq!(arriving(&store), 1);
    }
}
