//! The CPU pool: translation, signing and the debug endpoints' translations run on a
//! fixed set of threads (one per core), never on the async workers.
//!
//! A stream that needs resources its class has not generated yet hands the work here
//! and awaits it as a task: however many proxies sync at once, the async workers keep
//! reading ACKs and writing pushes, only as many threads as cores translate, and the
//! process keeps a fixed, small number of threads (each thread costs memory in the
//! allocator's per-thread heaps). Each class is generated once per snapshot: the first
//! stream of the class sends the job, the others await the same cell
//! ([`super::cache::ResourceCache::get_or_generate`]).

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

/// A pool of CPU threads.
#[derive(Debug)]
pub struct CpuPool {
    pool: rayon_core::ThreadPool,
}

impl CpuPool {
    /// A pool of `threads` threads (at least one).
    fn new(threads: usize) -> CpuPool {
        let n = threads.max(1);
        let pool = rayon_core::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("meshd-cpu-{i}"))
            .build();
        match pool {
            Ok(pool) => CpuPool { pool },
            // Only if the OS refuses threads; one thread then, or none at all (which
            // rayon reports the same way and nothing can work around).
            Err(e) => {
                tracing::error!(error = %e, threads = n, "cannot start the CPU pool's threads; trying one");
                CpuPool {
                    pool: rayon_core::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .build()
                        .unwrap_or_else(|e| panic!("no thread for the CPU pool: {e}")),
                }
            }
        }
    }

    /// The process's pool, started on first use: every `XdsState` (a test or a fuzz run
    /// makes many) shares it, as they share the cores.
    pub fn shared() -> &'static CpuPool {
        static POOL: std::sync::OnceLock<CpuPool> = std::sync::OnceLock::new();
        POOL.get_or_init(|| {
            CpuPool::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
        })
    }

    /// Runs `f` on the pool and waits for it as a task. Jobs run in the order they
    /// were sent. A panic in `f` is raised again in the caller, as if `f` had run
    /// there (the pool's thread lives on).
    pub async fn run<T, F>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self.run_caught(f).await {
            Ok(v) => v,
            Err(panic) => resume_unwind(panic),
        }
    }

    /// [`CpuPool::run`], with a panic in `f` returned as its payload.
    pub async fn run_caught<T, F>(&self, f: F) -> std::thread::Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pool.spawn(move || {
            // The caller may have gone (its stream closed): the result is dropped.
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        match rx.await {
            Ok(result) => result,
            // Only if the pool dropped the job unrun, which it does not do while it
            // lives (and it lives as long as the state that owns it).
            Err(_) => Err(Box::new("the CPU pool dropped a job")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_off_the_caller_in_order_and_panics_come_back() {
        let pool = std::sync::Arc::new(CpuPool::new(1));
        let name = pool
            .run(|| std::thread::current().name().map(String::from))
            .await;
        assert_eq!(name.as_deref(), Some("meshd-cpu-0"));
        // Sent together, run in the order sent.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let jobs: Vec<_> = (0..8)
            .map(|i| {
                let seen = seen.clone();
                pool.run(move || seen.lock().map(|mut v| v.push(i)).is_ok())
            })
            .collect();
        assert!(
            futures::future::join_all(jobs)
                .await
                .into_iter()
                .all(|ok| ok)
        );
        assert_eq!(*seen.lock().expect("lock"), (0..8).collect::<Vec<_>>());
        let p = pool.clone();
        let caught = tokio::spawn(async move {
            p.run(|| -> u32 { panic!("boom") }).await;
        })
        .await;
        assert!(caught.is_err_and(|e| e.is_panic()));
        assert!(
            pool.run_caught(|| -> u32 { panic!("again") })
                .await
                .is_err(),
            "a panic is returned to the caller"
        );
        // The pool's thread lives on.
        assert_eq!(pool.run(|| 7).await, 7);
    }
}
