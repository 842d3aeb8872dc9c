//! End-to-end tests live in `tests/tests/`: they chain the real binaries on tiny synthetic data.
