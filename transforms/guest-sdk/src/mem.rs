//! The only `unsafe` in Feedline: raw guest memory at the ABI edge.
//!
//! The host writes a request into a buffer it got from [`alloc`], calls an entry point with
//! `(ptr, len, version)`, and reads the answer from the `(ptr << 32) | len` that comes back,
//! then frees it with [`dealloc`]. Every buffer is a plain byte allocation with alignment 1,
//! so `alloc`/`dealloc` and Rust's boxed byte slices agree on layouts.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::ptr::NonNull;

fn layout(len: usize) -> Option<Layout> {
    Layout::from_size_align(len, 1).ok()
}

/// ABI export: `len` writable bytes for the host, or 0 when memory is exhausted.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub extern "C" fn alloc(len: i32) -> i32 {
    let Ok(len) = usize::try_from(len) else { return 0 };
    if len == 0 {
        return NonNull::<u8>::dangling().as_ptr() as usize as i32;
    }
    match layout(len) {
        // SAFETY: `len > 0`, so the layout has a non-zero size.
        Some(l) => unsafe { std::alloc::alloc(l) as usize as i32 },
        None => 0,
    }
}

/// ABI export: free a buffer from [`alloc`] or an answer the host has read.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub extern "C" fn dealloc(ptr: i32, len: i32) {
    free(ptr as u32 as usize as *mut u8, len as u32 as usize);
}

/// ABI export: the version of the envelopes this module reads and writes.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub extern "C" fn feedline_abi_version() -> i32 {
    crate::wire::ABI_VERSION
}

fn free(ptr: *mut u8, len: usize) {
    if len == 0 || ptr.is_null() {
        return;
    }
    if let Some(l) = layout(len) {
        // SAFETY: the ABI says `ptr` came from `alloc(len)` or `give` (a boxed `[u8]` of `len`),
        // both allocated with exactly this layout, and is freed once.
        unsafe { std::alloc::dealloc(ptr, l) }
    }
}

/// Run `f` over the request the host wrote at `ptr`, then free it.
pub(crate) fn with_input<R>(ptr: i32, len: i32, f: impl FnOnce(&[u8]) -> R) -> R {
    let (ptr, len) = (ptr as u32 as usize as *mut u8, len as u32 as usize);
    let input: &[u8] = if len == 0 || ptr.is_null() {
        &[]
    } else {
        // SAFETY: the host wrote `len` bytes at `ptr`, a buffer it got from `alloc(len)`; nothing
        // else aliases it until `free` below, after the last borrow ends with `f`.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    };
    let result = f(input);
    free(ptr, len);
    result
}

/// Hand `bytes` to the host as `(ptr << 32) | len`; the host frees them with `dealloc`.
pub(crate) fn give(bytes: Vec<u8>) -> i64 {
    let boxed = bytes.into_boxed_slice();
    let len = boxed.len() as u64;
    let ptr = Box::into_raw(boxed) as *mut u8 as usize as u64;
    ((ptr << 32) | (len & 0xffff_ffff)) as i64
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "feedline")]
extern "C" {
    /// Host import: stop with this message (the host turns it into a trap with the message).
    #[link_name = "abort"]
    fn host_abort(ptr: *const u8, len: usize);
}

/// Stop the guest with `message`, which becomes the dead-letter reason of the record.
pub(crate) fn abort_with(message: &str) -> ! {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host reads `len` bytes at `ptr` from this module's memory and never returns.
    unsafe {
        host_abort(message.as_ptr(), message.len())
    };
    let _ = message;
    std::process::abort()
}
