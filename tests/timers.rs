//! Issue 26, defect 9: the relay's memory grew under constant load for as long as its longest
//! upstream timeout (10 minutes by default), where the bare Pingora proxy stayed flat.
//!
//! The cause (found with heaptrack: what the relay held after 90 s of load was mostly Pingora's
//! timer map): Pingora's timeouts, which every upstream read and write under the peer's
//! `read_timeout`/`write_timeout` and every pooled connection's idle wait go through, are "fast"
//! timers up to `ServerConf::fast_timeout_to_tokio_threshold_seconds` (15 min by default): one
//! timer per 10 ms slot of expiry time in a per-thread map, kept until that time comes whether
//! or not anything still waits on it. With the relay's 600 s `server.timeout_ms` that was up to
//! 60,000 slots per worker thread, built up over ten minutes of traffic. The relay's Pingora
//! settings (`runtime_conf`) send timeouts over a minute to tokio's timer instead, whose entry
//! goes with the future that waited.
//!
//! The test applies the relay's Pingora settings as Pingora's `Server` does when it starts, then
//! counts the bytes live in the allocator (this test binary's own global allocator) around a
//! thousand upstream-read-like waits under long timeouts, each one pending once (as a read that
//! waits for the upstream) and then done.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Duration;

use pingora::prelude::fast_timeout::set_fast_timeout_to_tokio_threshold;

/// The system allocator, counting the bytes it holds for the process.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only the count is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        System.dealloc(p, layout)
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One wait under `timeout`, as an upstream read that is not ready at first: pending once,
/// then done.
async fn one_wait(timeout: Duration) {
    let waited = pingora::prelude::timeout(timeout, tokio::task::yield_now()).await;
    assert!(waited.is_ok());
}

#[test]
fn long_upstream_timeouts_leave_nothing_behind() {
    // The relay's Pingora settings, applied as `pingora::server::Server::run` applies them
    // (pingora-core 0.9.1, src/server/mod.rs) before its services start.
    let conf = cc_relay::lifecycle::runtime_conf(1);
    set_fast_timeout_to_tokio_threshold(
        conf.fast_timeout_to_tokio_threshold_seconds
            .map(Duration::from_secs),
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The relay's default upstream read timeout (server.timeout_ms) and the pool's idle
        // timeout. The first waits start Pingora's timer thread and its per-thread table.
        let timeouts = [Duration::from_secs(600), Duration::from_secs(90)];
        for &t in &timeouts {
            one_wait(t).await;
        }
        let before = LIVE.load(Relaxed);
        const WAITS: u64 = 1000;
        for i in 0..WAITS {
            // Each in its own 10 ms slot of expiry time, as waits that begin over ten seconds
            // of traffic would be.
            let t = timeouts[(i % 2) as usize] + Duration::from_millis(10 * (i + 1));
            one_wait(t).await;
        }
        let kept = LIVE.load(Relaxed) - before;
        // Fast timers keep ~150 bytes per wait here (150 KB); nothing should stay.
        assert!(
            kept < 16 * 1024,
            "{kept} bytes still held after {WAITS} finished waits under long timeouts"
        );
    });
}
