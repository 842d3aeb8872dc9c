//! `keep_freed_memory` takes effect: a buffer that glibc's default would map freshly (and unmap
//! when freed) comes from the heap afterwards. Its own test binary: the setting is process-wide.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

/// Bytes of a 48 MiB buffer that glibc served by mmap (mallinfo2's `hblkhd`, all arenas).
fn mapped_bytes_of_a_large_buffer() -> usize {
    // SAFETY: mallinfo2 only reads malloc's statistics.
    let mapped = || unsafe { libc::mallinfo2() }.hblkhd;
    let before = mapped();
    let v = std::hint::black_box(vec![1u8; 48 << 20]);
    let during = mapped();
    drop(v);
    during.saturating_sub(before)
}

#[test]
fn large_buffers_come_from_the_heap() {
    if std::env::vars().any(|(k, _)| k.starts_with("MALLOC_") || k == "GLIBC_TUNABLES") {
        eprintln!("malloc tuned by the environment: keep_freed_memory leaves it, nothing to test");
        return;
    }
    // glibc maps every buffer above its largest dynamic threshold (32 MiB) by default ...
    assert!(mapped_bytes_of_a_large_buffer() >= 48 << 20);
    clopa_cli::keep_freed_memory();
    // ... and none after the call.
    assert_eq!(mapped_bytes_of_a_large_buffer(), 0);
}
