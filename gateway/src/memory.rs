//! Memory given back to the OS. glibc's malloc keeps freed memory in its per-thread arenas: after
//! a storm of 5,000 idle HTTP/2 connections (then about 38 KiB each, mostly h2's buffers; about
//! 8 KiB since issue #14) had closed,
//! the gateway's RSS stayed at 203 MiB for good. `malloc_trim(0)` every few seconds returns the
//! free pages of every arena (benches/memory_storm.sh: 13.2 MiB before, 203 MiB during, 13.9 MiB
//! 5 s after). mimalloc was measured too: it gave memory back as well, but started at 24 MiB and
//! peaked at 306 MiB for the same storm, so glibc with trimming stays.

use std::time::Duration;

/// How often free memory is handed back.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Starts the trimming thread (glibc on Linux; elsewhere there is nothing to do).
pub fn spawn_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // free() itself never shrinks the heap: with glibc's default (shrink whenever more than
        // 128 KiB is free at the top) a busy gateway gave pages back and faulted them in again
        // many times a second, 2% of its CPU under load. This thread gives them back instead.
        // Setting the trim threshold turns off glibc's moving mmap threshold, so it is pinned
        // where the moving one ends (32 MiB): large messages keep coming from the heap as before.
        // SAFETY: mallopt takes plain integers and is called before the listeners start.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        }
        let spawned = std::thread::Builder::new()
            .name("strait-trim".into())
            .spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: malloc_trim takes no pointers and locks each arena itself; it is safe
                // to call from any thread at any time.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the memory trimming thread; freed memory stays with the allocator");
        }
    }
}
