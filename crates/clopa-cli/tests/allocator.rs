//! `keep_freed_memory` takes effect: a buffer that glibc's default would map freshly (and unmap
//! when freed) comes from the heap afterwards. Its own test binary: the setting is process-wide.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use clopa_cli::MallocSetting;

/// Bytes of a 48 MiB buffer that glibc served by mmap (mallinfo's `hblkhd`, all arenas;
/// `mallinfo`, not `mallinfo2`, which glibc before 2.33 lacks).
fn mapped_bytes_of_a_large_buffer() -> i64 {
    // SAFETY: mallinfo only reads malloc's statistics.
    #[allow(deprecated)]
    let mapped = || i64::from(unsafe { libc::mallinfo() }.hblkhd);
    let before = mapped();
    let v = std::hint::black_box(vec![1u8; 48 << 20]);
    let during = mapped();
    drop(v);
    during - before
}

#[test]
fn large_buffers_come_from_the_heap() {
    let default = mapped_bytes_of_a_large_buffer();
    match clopa_cli::keep_freed_memory() {
        MallocSetting::Kept => {
            // glibc maps every buffer above its largest dynamic threshold (32 MiB) by default ...
            assert!(default >= 48 << 20, "{default}");
            // ... and none after the call.
            assert_eq!(mapped_bytes_of_a_large_buffer(), 0);
        }
        // Nothing was changed, by design: the test environment decides, not the code.
        other => eprintln!("malloc left as it is ({other:?}): nothing to test"),
    }
}
