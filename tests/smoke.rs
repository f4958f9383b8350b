use memctx::*;
#[test]
fn smoke() {
    let top = MemoryContext::top();
    let c = top.new_child("Test", BlockSizes::DEFAULT);
    let mut ptrs = vec![];
    for i in 0..10000usize {
        let p = c.alloc(i % 700 + 1).as_ptr();
        unsafe { p.write_bytes((i % 251) as u8, i % 700 + 1) };
        ptrs.push((p, i));
    }
    for &(p, i) in &ptrs {
        unsafe {
            assert_eq!(*p, (i % 251) as u8);
            assert_eq!(*p.add(i % 700), (i % 251) as u8);
        }
    }
    for (k, &(p, _)) in ptrs.iter().enumerate() {
        if k % 2 == 0 {
            unsafe { pfree(p) }
        }
    }
    let big = c.alloc(100_000).as_ptr();
    let big = unsafe { repalloc(big, 1_000_000) };
    unsafe { pfree(big) };
    print_stats(top);
    c.reset();
    print_stats(top);
    let pinned = c.pin();
    let mut v: allocator_api2::vec::Vec<u32, _> = allocator_api2::vec::Vec::new_in(&pinned);
    for i in 0..100000 {
        v.push(i);
    }
    assert!(c.try_reset().is_err());
    let mut m = hashbrown::HashMap::new_in(&pinned);
    for i in 0..1000 {
        m.insert(i, i * 2);
    }
    drop(m);
    drop(v);
    drop(pinned);
    c.delete();
    assert!(!c.is_alive());
    let p = palloc_aligned(100, 4096, AllocFlags::NONE);
    assert_eq!(p as usize % 4096, 0);
    let p = unsafe { repalloc(p, 10000) };
    unsafe { pfree(p) };
}
