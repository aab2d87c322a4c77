//! Giving freed heap back to the system after a crowd's arrival (`Server::trim_heap`).
//!
//! glibc keeps freed memory: `malloc_trim` returns only whole free pages, so a page that keeps
//! one live block stays resident however much of it is free. Two kinds of block pin such
//! pages after a burst of joins, measured at 10,000 idle connections by walking the heap's
//! chunks (docs/performance.md, "What a room membership costs"): the blocks a loop's thread
//! cache (tcache) keeps (up to 7 freed blocks of each of 64 sizes up to 1,032 bytes, about
//! 230 KiB, the last ones freed and so scattered over the burst's pages), and long-lived
//! blocks made during the burst (room member tables, the directory's nodes), which
//! `Chat::repack` moves before the trim.

/// Sizes the thread cache keeps, one per 16-byte class (glibc: 24 to 1,032 bytes asked).
#[cfg(target_env = "gnu")]
const CACHED: std::ops::RangeInclusive<usize> = 24..=1032;
/// Blocks the thread cache keeps of each size (glibc's default `tcache_count`).
#[cfg(target_env = "gnu")]
const PER_SIZE: usize = 7;

/// Returns the heap's free pages to the system, after swapping the thread cache's blocks for
/// fresh ones: the cached blocks are taken out (emptying the cache), as many fresh ones of
/// each size are made and freed (refilling it), and then the old ones are freed, which,
/// with the cache full, go back to the heap proper, where the trim can give their pages
/// back. The fresh ones are made in one go after the burst, mostly in holes of pages that
/// are resident anyway, instead of pinning pages of their own. About 900 calls.
pub(super) fn give_back_free_heap() {
    #[cfg(target_env = "gnu")]
    {
        let old = take_cached();
        drop(take_cached());
        drop(old);
        // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Blocks taken from the allocator, `PER_SIZE` of each cached size; freed on drop.
#[cfg(target_env = "gnu")]
struct Blocks(Vec<(*mut u8, std::alloc::Layout)>);

#[cfg(target_env = "gnu")]
fn take_cached() -> Blocks {
    let mut blocks = Blocks(Vec::with_capacity(CACHED.count().div_ceil(16) * PER_SIZE));
    for size in CACHED.step_by(16) {
        let Ok(layout) = std::alloc::Layout::from_size_align(size, 8) else { continue };
        for _ in 0..PER_SIZE {
            // SAFETY: the layout's size is not zero; a null result (no memory) is skipped.
            let p = unsafe { std::alloc::alloc(layout) };
            if !p.is_null() {
                blocks.0.push((p, layout));
            }
        }
    }
    blocks
}

#[cfg(target_env = "gnu")]
impl Drop for Blocks {
    fn drop(&mut self) {
        for (p, layout) in self.0.drain(..) {
            // SAFETY: allocated by `take_cached` with this layout, freed once.
            unsafe { std::alloc::dealloc(p, layout) }
        }
    }
}

#[cfg(all(test, target_env = "gnu"))]
mod tests {
    use super::*;
    use std::alloc::{Layout, alloc, dealloc};

    fn take(n: usize, layout: Layout) -> Vec<usize> {
        // SAFETY: a non-zero size; every block is freed by `give`.
        (0..n).map(|_| unsafe { alloc(layout) } as usize).collect()
    }

    fn give(blocks: &[usize], layout: Layout) {
        for p in blocks {
            // SAFETY: from `take` with this layout, freed once.
            unsafe { dealloc(*p as *mut u8, layout) }
        }
    }

    /// The blocks freed last are what the next allocations of their size get back (the
    /// thread cache), until the swap: then they are the heap's again, and the cache holds
    /// others.
    #[test]
    fn the_swap_gives_the_cached_blocks_back_to_the_heap() {
        let layout = Layout::from_size_align(1000, 8).unwrap();
        // Whatever this thread's cache held of the size first, so that it holds ours alone.
        let before = take(PER_SIZE, layout);
        let scattered = take(PER_SIZE, layout);
        give(&scattered, layout);
        let again = take(PER_SIZE, layout);
        let mut sorted = (scattered.clone(), again.clone());
        sorted.0.sort();
        sorted.1.sort();
        assert_eq!(sorted.0, sorted.1, "without the swap the cache hands the same blocks back");
        give(&again, layout);
        give_back_free_heap();
        let after = take(PER_SIZE, layout);
        assert!(after.iter().all(|p| !scattered.contains(p)), "{after:x?} vs {scattered:x?}");
        give(&after, layout);
        give(&before, layout);
    }
}
