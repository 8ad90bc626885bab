//! Compile-fail tests for the derives live in `tests/`.
