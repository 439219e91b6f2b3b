//! Catga's macro cases: `tests/ui/pass` must compile, `tests/ui/fail` must
//! fail with the messages pinned in their `.stderr` files. No code here
//! (Cargo wants a target besides the tests).
