//! Compile-fail (UI) tests of `#[derive(Tag)]` and `#[derive(Tags)]`; see `tests/ui.rs`.
