//! Compile-time checks of the macros (trybuild). `.stderr` files pin the
//! exact messages and spans; regenerate with `TRYBUILD=overwrite` after a
//! deliberate change and review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
