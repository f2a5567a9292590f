//! The binary's allocator: mimalloc, asked for a plain block whenever every
//! block of the size asked for is already aligned enough.
//!
//! Rust hands every allocation its alignment. Passing it on to mimalloc's
//! aligned entry points (as the `mimalloc` crate does) costs a detour on
//! each call, and a slow path of a couple of hundred instructions for every
//! block over 1 KiB, although mimalloc's plain blocks are aligned to 16
//! bytes (or to their size, below that) and nearly nothing asks for more.

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};
use std::alloc::{GlobalAlloc, Layout};

/// Alignment of every mimalloc block of at least this many bytes
/// (`MI_MAX_ALIGN_SIZE`); smaller blocks are aligned to their size class.
const PLAIN_ALIGN: usize = 16;

/// mimalloc with plain calls where the alignment allows (see the module
/// documentation).
pub struct MiMalloc;

/// Whether a plain block of `size` bytes is aligned to `align`: the rule
/// mimalloc applies itself before taking its aligned path.
fn plain(size: usize, align: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc and goes back to it; a plain block
// is handed out only where `plain` holds, i.e. where mimalloc guarantees the
// alignment asked for.
unsafe impl GlobalAlloc for MiMalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.size(), layout.align()) {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.size(), layout.align()) {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(new_size, layout.align()) {
            mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_asked_for() {
        let alloc = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 3, 8, 12, 16, 24, 40, 100, 1000, 1025, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                let grown = Layout::from_size_align(size * 3, align).unwrap();
                // Several blocks alive at once, so that not only the first
                // block of a page is looked at.
                let mut blocks = Vec::new();
                // SAFETY: non-zero sizes; every block is written within its
                // size and freed once, with the layout it has.
                unsafe {
                    for _ in 0..16 {
                        let p = alloc.alloc(layout);
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        p.write_bytes(0xab, size);
                        let q = alloc.realloc(p, layout, grown.size());
                        assert_eq!(q as usize % align, 0, "realloc {size} align {align}");
                        assert_eq!(*q.add(size - 1), 0xab);
                        blocks.push(q);
                        let z = alloc.alloc_zeroed(layout);
                        assert_eq!(z as usize % align, 0);
                        assert!((0..size).all(|i| *z.add(i) == 0));
                        alloc.dealloc(z, layout);
                    }
                    for q in blocks {
                        alloc.dealloc(q, grown);
                    }
                }
            }
        }
    }
}
