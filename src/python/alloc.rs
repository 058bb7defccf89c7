//! The extension's allocator: mimalloc for the many small allocations of rendering, locating and
//! tokenizing (glibc's malloc spends a quarter of a many-turn conversation's time there), the
//! system allocator for large blocks. Large blocks stay with the system allocator because it
//! refuses what the machine cannot hold (a batch padded to 2^40 tokens is a clean `MemoryError`,
//! tests/test_hostile.py), where mimalloc reserves it without backing and the process is killed
//! when the pages are touched.

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Blocks of this size or more come from the system allocator.
const LARGE: usize = 16 << 20;

pub(crate) struct Split;

// SAFETY: every block is freed (or resized) by the allocator that made it: which one is decided
// by the layout's size, which the caller passes unchanged to `dealloc` and `realloc`; a resize
// that crosses `LARGE` moves the block to the other allocator.
unsafe impl GlobalAlloc for Split {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE {
            unsafe { System.alloc(layout) }
        } else {
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE {
            unsafe { System.alloc_zeroed(layout) }
        } else {
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= LARGE {
            unsafe { System.dealloc(ptr, layout) }
        } else {
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (layout.size() >= LARGE, new_size >= LARGE) {
            (true, true) => unsafe { System.realloc(ptr, layout, new_size) },
            (false, false) => unsafe { MiMalloc.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY: `new_size` with the old alignment is a valid layout (the caller's
                // contract for `realloc`).
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Split = Split;
