//! Shared helpers for Catga's integration tests, examples and benchmarks.
//! (The root package exists to hold `examples/`, `tests/` and `benches/`.)
