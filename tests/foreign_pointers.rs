//! `pfree` of pointers glibc's `malloc` handed out, of several sizes (one large enough to be a
//! mapping of its own), from the main thread and from a spawned thread: each must be refused
//! with the clean `pfree called with invalid pointer` panic (the release build, which trusts the
//! chunk header) or the debug build's `invalid-pointer` report, never a wild free.
//!
//! The word in front of a `malloc`'d pointer is glibc's size word, whose low bits are flags:
//! PREV_INUSE (1), IS_MMAPPED (2) and NON_MAIN_ARENA (4), the last set on the chunks of a thread
//! that has an arena of its own. Kind ids avoid every such nibble (`chunk::RESERVED_IDS`); this
//! test guards that choice, which is why it runs its own `main`: libtest runs tests on spawned
//! threads, and the main arena is only certain on the main thread.
//!
//! Reading the word in front of a `malloc`'d pointer is an invalid read to Valgrind and ASan, so
//! ci/sanitizers leaves this file out of its legs.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Request sizes: small chunks of several bins, and one above glibc's largest mmap threshold
/// (32 MiB on 64-bit targets), which glibc always serves with a mapping of its own.
const SIZES: [usize; 5] = [24, 32, 100, 5_000, 64 << 20];

/// The panic message of `f`, which must panic (quietly: the panic is the expected outcome).
fn panic_message(f: impl FnOnce()) -> String {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    match result {
        Ok(()) => panic!("expected a panic"),
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    }
}

/// Frees a `malloc`'d pointer of every size with `pfree`, checks the refusal, gives it back to
/// glibc, and returns the low nibbles of the size words seen.
fn refuse_all(thread: &str) -> Vec<u64> {
    let mut nibbles = Vec::new();
    for size in SIZES {
        // SAFETY: a plain malloc; the pointer is checked for null and freed with free below.
        let p = unsafe { libc::malloc(size) } as *mut u8;
        assert!(!p.is_null(), "malloc({size}) failed");
        // SAFETY: glibc's size word lies right in front of every pointer malloc returns.
        let word = unsafe { (p as *const u64).sub(1).read() };
        nibbles.push(word & 0xF);
        // SAFETY: pfree is exercised on a pointer it does not own: both builds refuse it before
        // writing anything (the release build on the header's kind id, the debug build on its
        // block registry).
        let msg = panic_message(|| unsafe { memctx::pfree(p) });
        if cfg!(feature = "debug-contexts") {
            assert!(
                msg.contains("invalid-pointer") && msg.contains("no context of this thread"),
                "{thread}, malloc({size}): {msg}"
            );
        } else {
            assert_eq!(
                msg,
                format!("pfree called with invalid pointer {p:p} (header 0x{word:016x})"),
                "{thread}, malloc({size})"
            );
        }
        // SAFETY: `p` came from malloc and nothing freed it.
        unsafe { libc::free(p as *mut libc::c_void) };
    }
    nibbles
}

fn main() {
    // Reports of the debug build are panics here; their text goes to stderr as well, which is
    // expected output of this test.
    let main_nibbles = refuse_all("main thread");
    let spawned_nibbles = std::thread::spawn(|| refuse_all("spawned thread"))
        .join()
        .expect("the spawned thread's checks failed");
    // The cases the kind ids must avoid were all met: a main-arena chunk, a chunk of a thread's
    // own arena, and a mapped one.
    let all: Vec<u64> = main_nibbles
        .iter()
        .chain(&spawned_nibbles)
        .copied()
        .collect();
    assert!(
        main_nibbles[..4].iter().all(|n| n & 4 == 0),
        "{main_nibbles:?}"
    );
    assert!(
        spawned_nibbles.iter().any(|n| n & 4 != 0),
        "{spawned_nibbles:?}"
    );
    assert!(all.iter().any(|n| n & 2 != 0), "no mapped chunk: {all:?}");
    println!(
        "foreign_pointers: pfree refused {} malloc'd pointers (size-word nibbles {all:?})",
        all.len()
    );
}
