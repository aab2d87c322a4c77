//! Giving freed heap back to the system after a crowd's arrival (`Server::trim_heap`).
//!
//! glibc keeps freed memory: `malloc_trim` returns only whole free pages, so a page that keeps
//! one live block stays resident however much of it is free. After a burst of joins such
//! pages are pinned by long-lived blocks made during the burst (room member tables, the
//! directory's nodes), which `Chat::repack` moves first, and by the outbox spare list, which
//! `trim_heap` drops (docs/performance.md, "What a room membership costs"). Swapping the
//! allocator's per-thread cache of freed blocks for fresh ones as well was measured to help
//! (about 20 B a connection more) but leaned on glibc's internals and its test was not
//! stable: left out.

/// Returns the heap's free pages to the system.
pub(super) fn give_back_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
