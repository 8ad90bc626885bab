//! Compile-fail cases for the derives (one mistake per file, expected output in the `.stderr`
//! next to it) and pass cases that must build and run.
//!
//! The `.stderr` files depend on the compiler version: the toolchain is pinned in
//! `rust-toolchain.toml`. After a deliberate change, regenerate them with
//! `TRYBUILD=overwrite cargo test -p ui-tests` and read every diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
