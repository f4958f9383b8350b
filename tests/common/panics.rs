//! Panic helpers shared by the integration tests (included with `#[path]`): the text of a caught
//! panic, and "run this, it must panic".
#![allow(dead_code)] // not every test file uses both

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The message of a panic payload (`String` or `&'static str`).
pub fn panic_text(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else {
        panic!("panic payload is neither String nor &str")
    }
}

/// Runs `f`, which must panic, and returns the panic message.
pub fn expect_panic<R>(f: impl FnOnce() -> R) -> String {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(_) => panic!("expected a panic"),
        Err(e) => panic_text(e),
    }
}
