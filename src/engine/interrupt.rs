//! Stopping a statement from outside it: the client's cancel request (sent
//! on another connection), its `statement_timeout`, or its going away.
//!
//! A session holds one [`Interrupt`]; the server fires it, and the engine
//! races the interruptible part of a statement against it
//! ([`StatementGuard::run`]). Only work that can stop without leaving
//! anything half done is interruptible: queries (planning, execution,
//! sending rows), the evaluation of a DML statement before its change is
//! applied, FLUSH's wait for sinks, FETCH's wait for changes and a
//! backfill's progress reports. A change that has begun to apply, and DDL,
//! run to their end, as in PostgreSQL a commit does.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{EddyError, Result};

/// A session's way to be interrupted.
#[derive(Debug, Default)]
pub struct Interrupt {
    /// Woken by a cancel request or a disconnection; only statements that
    /// wait on it then are interrupted (a cancel between statements does
    /// nothing, as in PostgreSQL).
    wake: Notify,
    disconnected: AtomicBool,
}

impl Interrupt {
    /// A cancel request: interrupts the statement running now, if any.
    pub fn cancel(&self) {
        self.wake.notify_waiters();
    }

    /// The client went away: interrupts the running statement and every
    /// later one.
    pub fn disconnect(&self) {
        self.disconnected.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    pub fn is_disconnected(&self) -> bool {
        self.disconnected.load(Ordering::SeqCst)
    }
}

/// One statement's limits: the session's interrupt and, with a
/// `statement_timeout`, the deadline. Cheap to clone, so that a stream of
/// result rows can carry it.
#[derive(Debug, Clone)]
pub struct StatementGuard {
    interrupt: Arc<Interrupt>,
    deadline: Option<Instant>,
}

impl StatementGuard {
    /// A statement starting now under `interrupt`, at most `timeout` long.
    pub fn new(interrupt: &Arc<Interrupt>, timeout: Option<Duration>) -> Self {
        Self {
            interrupt: interrupt.clone(),
            deadline: timeout.map(|t| Instant::now() + t),
        }
    }

    /// Runs `work` until it finishes, the statement is canceled, its
    /// deadline passes or the client goes away (57014 for the first two;
    /// the last has no one to tell).
    pub async fn run<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        if self.interrupt.is_disconnected() {
            return Err(canceled("the client went away"));
        }
        let woken = self.interrupt.wake.notified();
        let timeout = async {
            match self.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = work => result,
            _ = woken => Err(if self.interrupt.is_disconnected() {
                canceled("the client went away")
            } else {
                canceled("user request")
            }),
            _ = timeout => Err(canceled("statement timeout")),
        }
    }

    /// Whether the statement has been stopped already (for work that checks
    /// between steps rather than awaiting [`Self::run`]).
    pub fn expired(&self) -> Option<EddyError> {
        if self.interrupt.is_disconnected() {
            return Some(canceled("the client went away"));
        }
        self.deadline
            .filter(|d| Instant::now() >= *d)
            .map(|_| canceled("statement timeout"))
    }
}

fn canceled(why: &str) -> EddyError {
    EddyError::QueryCanceled(format!("canceling statement due to {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_statement_stops_on_cancel_timeout_and_disconnection() {
        let interrupt = Arc::new(Interrupt::default());
        let forever = || async { std::future::pending::<Result<()>>().await };

        let timed = StatementGuard::new(&interrupt, Some(Duration::from_millis(20)));
        let e = timed.run(forever()).await.unwrap_err();
        assert_eq!(e.sqlstate(), "57014");
        assert!(e.to_string().contains("statement timeout"), "{e}");

        let canceler = interrupt.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            canceler.cancel();
        });
        let e = StatementGuard::new(&interrupt, None)
            .run(forever())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("user request"), "{e}");

        // A cancel with nothing running does not stop the next statement.
        interrupt.cancel();
        let done = StatementGuard::new(&interrupt, None)
            .run(async { Ok(7) })
            .await;
        assert_eq!(done.unwrap(), 7);

        interrupt.disconnect();
        let e = StatementGuard::new(&interrupt, None)
            .run(async { Ok(()) })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("went away"), "{e}");
    }
}
