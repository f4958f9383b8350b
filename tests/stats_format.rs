//! Exact-output tests for `memctx::stats`: PostgreSQL's MemoryContextStatsDetail
//! text, the pg_backend_memory_contexts-style rows, and the JSON snapshot.

use memctx::stats::{
    format_stats, from_json, rows, to_json, ContextRow, Counters, KindDetail, PrintOptions,
    StatsNode,
};

fn counters(total: u64, blocks: u64, free: u64, chunks: u64) -> Counters {
    Counters {
        total_bytes: total,
        total_nblocks: blocks,
        free_bytes: free,
        free_chunks: chunks,
    }
}

fn node(
    id: u64,
    name: &str,
    ident: Option<&str>,
    c: Counters,
    children: Vec<StatsNode>,
) -> StatsNode {
    StatsNode {
        id,
        name: name.to_string(),
        ident: ident.map(str::to_string),
        kind: "AllocSet".to_string(),
        counters: c,
        detail: KindDetail::default(),
        children,
    }
}

/// The tree most tests use. Ids are deliberately not in breadth-first order.
///
/// ```text
/// TopMemoryContext (1)          100000 / 6 blocks / 3200 free / 14 chunks
///   CacheMemoryContext (10)     524288 / 7 / 1000 / 3      ident "catalog cache"
///     index info (11)             2048 / 2 /  264 / 1      ident "pg_class_oid_index"
///   MessageContext (20)          16384 / 2 / 6256 / 0
///   PortalContext (30)            1024 / 1 /  592 / 0      ident "<unnamed>"
///     ExecutorState (31)         49176 / 4 / 13984 / 11
///       ExprContext (32)          8192 / 1 / 7928 / 0
/// ```
fn sample_tree() -> StatsNode {
    node(
        1,
        "TopMemoryContext",
        None,
        counters(100000, 6, 3200, 14),
        vec![
            node(
                10,
                "CacheMemoryContext",
                Some("catalog cache"),
                counters(524288, 7, 1000, 3),
                vec![node(
                    11,
                    "index info",
                    Some("pg_class_oid_index"),
                    counters(2048, 2, 264, 1),
                    vec![],
                )],
            ),
            node(
                20,
                "MessageContext",
                None,
                counters(16384, 2, 6256, 0),
                vec![],
            ),
            node(
                30,
                "PortalContext",
                Some("<unnamed>"),
                counters(1024, 1, 592, 0),
                vec![node(
                    31,
                    "ExecutorState",
                    None,
                    counters(49176, 4, 13984, 11),
                    vec![node(
                        32,
                        "ExprContext",
                        None,
                        counters(8192, 1, 7928, 0),
                        vec![],
                    )],
                )],
            ),
        ],
    )
}

// Grand totals of sample_tree, by hand:
//   total  100000+524288+2048+16384+1024+49176+8192 = 701112
//   blocks 6+7+2+2+1+4+1                            = 23
//   free   3200+1000+264+6256+592+13984+7928        = 33224
//   chunks 14+3+1+0+0+11+0                          = 29
//   used   701112-33224                             = 667888
const SAMPLE_GRAND_TOTAL: &str =
    "Grand total: 701112 bytes in 23 blocks; 33224 free (29 chunks); 667888 used";

fn lines(s: &str) -> Vec<&str> {
    assert!(s.ends_with('\n'), "output must end with a newline: {s:?}");
    s[..s.len() - 1].split('\n').collect()
}

#[test]
fn counters_used_add_and_display() {
    let mut c = counters(8192, 1, 7504, 2);
    assert_eq!(c.used_bytes(), 688);
    assert_eq!(
        c.to_string(),
        "8192 total in 1 blocks; 7504 free (2 chunks); 688 used"
    );
    c.add(&counters(1024, 1, 24, 1));
    assert_eq!(c, counters(9216, 2, 7528, 3));
    // Inconsistent counters do not underflow.
    assert_eq!(counters(10, 1, 20, 0).used_bytes(), 0);
}

#[test]
fn sample_tree_prints_exactly_like_postgres() {
    let out = format_stats(&sample_tree(), &PrintOptions::default());
    let expected = [
        "TopMemoryContext: 100000 total in 6 blocks; 3200 free (14 chunks); 96800 used",
        "  CacheMemoryContext: 524288 total in 7 blocks; 1000 free (3 chunks); 523288 used: catalog cache",
        "    index info: 2048 total in 2 blocks; 264 free (1 chunks); 1784 used: pg_class_oid_index",
        "  MessageContext: 16384 total in 2 blocks; 6256 free (0 chunks); 10128 used",
        "  PortalContext: 1024 total in 1 blocks; 592 free (0 chunks); 432 used: <unnamed>",
        "    ExecutorState: 49176 total in 4 blocks; 13984 free (11 chunks); 35192 used",
        "      ExprContext: 8192 total in 1 blocks; 7928 free (0 chunks); 264 used",
        SAMPLE_GRAND_TOTAL,
    ];
    let got = lines(&out);
    assert_eq!(got.len(), expected.len(), "{out}");
    for (i, (g, e)) in got.iter().zip(expected.iter()).enumerate() {
        assert_eq!(g, e, "line {i}");
    }
    assert_eq!(out, expected.join("\n") + "\n");
}

#[test]
fn grand_total_is_the_sum_of_the_tree() {
    let tree = sample_tree();
    let t = tree.total();
    assert_eq!(t, counters(701112, 23, 33224, 29));
    assert_eq!(t.used_bytes(), 667888);
    let out = format_stats(&tree, &PrintOptions::default());
    let last = *lines(&out).last().unwrap();
    assert_eq!(
        last,
        format!(
            "Grand total: {} bytes in {} blocks; {} free ({} chunks); {} used",
            t.total_bytes,
            t.total_nblocks,
            t.free_bytes,
            t.free_chunks,
            t.used_bytes()
        )
    );
    assert_eq!(last, SAMPLE_GRAND_TOTAL);
}

#[test]
fn max_children_summary_counts_whole_omitted_subtrees() {
    // Only CacheMemoryContext is printed among Top's children (and its one
    // child, within the limit). Omitted: MessageContext, PortalContext and,
    // below it, ExecutorState and ExprContext — 4 contexts, not 2:
    //   total  16384+1024+49176+8192 = 74776
    //   blocks 2+1+4+1               = 8
    //   free   6256+592+13984+7928   = 28760
    //   chunks 0+0+11+0              = 11
    //   used   74776-28760           = 46016
    let opts = PrintOptions {
        max_level: 100,
        max_children: 1,
    };
    let out = format_stats(&sample_tree(), &opts);
    assert_eq!(
        out,
        "TopMemoryContext: 100000 total in 6 blocks; 3200 free (14 chunks); 96800 used\n\
         \x20 CacheMemoryContext: 524288 total in 7 blocks; 1000 free (3 chunks); 523288 used: catalog cache\n\
         \x20   index info: 2048 total in 2 blocks; 264 free (1 chunks); 1784 used: pg_class_oid_index\n\
         \x20 4 more child contexts containing 74776 total in 8 blocks; 28760 free (11 chunks); 46016 used\n\
         Grand total: 701112 bytes in 23 blocks; 33224 free (29 chunks); 667888 used\n"
    );
}

#[test]
fn more_than_100_children_with_default_options() {
    // 105 children of Top: child i has 8192 bytes in 1 block, i bytes free in 1
    // chunk. Child 104 also has a grandchild (1024 / 1 / 24 / 1).
    let mut children: Vec<StatsNode> = (0..105u64)
        .map(|i| {
            node(
                100 + i,
                &format!("child {i}"),
                None,
                counters(8192, 1, i, 1),
                vec![],
            )
        })
        .collect();
    children[104].children.push(node(
        999,
        "grandchild",
        Some("never printed"),
        counters(1024, 1, 24, 1),
        vec![],
    ));
    let top = node(
        1,
        "TopMemoryContext",
        None,
        counters(8192, 1, 192, 0),
        children,
    );
    let out = format_stats(&top, &PrintOptions::default());
    let got = lines(&out);
    // Top + 100 children + summary + grand total.
    assert_eq!(got.len(), 103, "{out}");
    assert_eq!(
        got[0],
        "TopMemoryContext: 8192 total in 1 blocks; 192 free (0 chunks); 8000 used"
    );
    assert_eq!(
        got[1],
        "  child 0: 8192 total in 1 blocks; 0 free (1 chunks); 8192 used"
    );
    assert_eq!(
        got[100],
        "  child 99: 8192 total in 1 blocks; 99 free (1 chunks); 8093 used"
    );
    // Omitted: children 100..=104 and the grandchild = 6 contexts.
    //   total  5*8192 + 1024          = 41984
    //   blocks 5 + 1                  = 6
    //   free   100+101+102+103+104+24 = 534
    //   chunks 5 + 1                  = 6
    //   used   41984-534              = 41450
    assert_eq!(
        got[101],
        "  6 more child contexts containing 41984 total in 6 blocks; 534 free (6 chunks); 41450 used"
    );
    // Grand total includes the summarised contexts:
    //   total  8192 + 105*8192 + 1024 = 869376
    //   blocks 1 + 105 + 1            = 107
    //   free   192 + (0+...+104) + 24 = 192 + 5460 + 24 = 5676
    //   chunks 0 + 105 + 1            = 106
    //   used   869376-5676            = 863700
    assert_eq!(
        got[102],
        "Grand total: 869376 bytes in 107 blocks; 5676 free (106 chunks); 863700 used"
    );
    assert_eq!(top.total(), counters(869376, 107, 5676, 106));
}

#[test]
fn exactly_max_children_children_need_no_summary() {
    let top = node(
        1,
        "Top",
        None,
        counters(100, 1, 0, 0),
        (0..3u64)
            .map(|i| node(2 + i, "c", None, counters(10, 1, 1, 1), vec![]))
            .collect(),
    );
    let opts = PrintOptions {
        max_level: 100,
        max_children: 3,
    };
    assert_eq!(
        format_stats(&top, &opts),
        "Top: 100 total in 1 blocks; 0 free (0 chunks); 100 used\n\
         \x20 c: 10 total in 1 blocks; 1 free (1 chunks); 9 used\n\
         \x20 c: 10 total in 1 blocks; 1 free (1 chunks); 9 used\n\
         \x20 c: 10 total in 1 blocks; 1 free (1 chunks); 9 used\n\
         Grand total: 130 bytes in 4 blocks; 3 free (3 chunks); 127 used\n"
    );
}

#[test]
fn max_level_summarises_deeper_contexts() {
    // max_level 1: Top (level 0) and its children (level 1) are printed; the
    // children of level-1 contexts are summarised at level 2's indentation.
    //   under CacheMemoryContext: index info = 1 context, 2048/2/264/1, used 1784
    //   under PortalContext: ExecutorState + ExprContext = 2 contexts,
    //     total 49176+8192 = 57368, blocks 4+1 = 5, free 13984+7928 = 21912,
    //     chunks 11, used 57368-21912 = 35456
    let opts = PrintOptions {
        max_level: 1,
        max_children: 100,
    };
    assert_eq!(
        format_stats(&sample_tree(), &opts),
        "TopMemoryContext: 100000 total in 6 blocks; 3200 free (14 chunks); 96800 used\n\
         \x20 CacheMemoryContext: 524288 total in 7 blocks; 1000 free (3 chunks); 523288 used: catalog cache\n\
         \x20   1 more child contexts containing 2048 total in 2 blocks; 264 free (1 chunks); 1784 used\n\
         \x20 MessageContext: 16384 total in 2 blocks; 6256 free (0 chunks); 10128 used\n\
         \x20 PortalContext: 1024 total in 1 blocks; 592 free (0 chunks); 432 used: <unnamed>\n\
         \x20   2 more child contexts containing 57368 total in 5 blocks; 21912 free (11 chunks); 35456 used\n\
         Grand total: 701112 bytes in 23 blocks; 33224 free (29 chunks); 667888 used\n"
    );

    // max_level 2 cuts only below ExecutorState.
    let opts = PrintOptions {
        max_level: 2,
        max_children: 100,
    };
    let out = format_stats(&sample_tree(), &opts);
    assert_eq!(
        lines(&out)[5..],
        [
            "    ExecutorState: 49176 total in 4 blocks; 13984 free (11 chunks); 35192 used",
            "      1 more child contexts containing 8192 total in 1 blocks; 7928 free (0 chunks); 264 used",
            SAMPLE_GRAND_TOTAL,
        ]
    );
}

#[test]
fn max_level_zero_and_max_children_zero_print_only_the_root() {
    // Everything below Top: total 701112-100000 = 601112, blocks 23-6 = 17,
    // free 33224-3200 = 30024, chunks 29-14 = 15, used 601112-30024 = 571088;
    // 6 contexts.
    let expected = "TopMemoryContext: 100000 total in 6 blocks; 3200 free (14 chunks); 96800 used\n\
                    \x20 6 more child contexts containing 601112 total in 17 blocks; 30024 free (15 chunks); 571088 used\n\
                    Grand total: 701112 bytes in 23 blocks; 33224 free (29 chunks); 667888 used\n";
    let by_level = PrintOptions {
        max_level: 0,
        max_children: 100,
    };
    let by_children = PrintOptions {
        max_level: 100,
        max_children: 0,
    };
    assert_eq!(format_stats(&sample_tree(), &by_level), expected);
    assert_eq!(format_stats(&sample_tree(), &by_children), expected);
}

#[test]
fn lone_root_prints_one_line_and_the_grand_total() {
    let top = node(1, "Top", None, counters(0, 0, 0, 0), vec![]);
    assert_eq!(
        format_stats(&top, &PrintOptions::default()),
        "Top: 0 total in 0 blocks; 0 free (0 chunks); 0 used\n\
         Grand total: 0 bytes in 0 blocks; 0 free (0 chunks); 0 used\n"
    );
}

fn line_of(name: &str, ident: Option<&str>) -> String {
    let top = node(1, name, ident, counters(8192, 1, 0, 0), vec![]);
    let out = format_stats(&top, &PrintOptions::default());
    lines(&out)[0].to_string()
}

const STATS: &str = "8192 total in 1 blocks; 0 free (0 chunks); 8192 used";

#[test]
fn ident_up_to_100_bytes_is_printed_whole() {
    let ident = "q".repeat(100);
    assert_eq!(line_of("C", Some(&ident)), format!("C: {STATS}: {ident}"));
    // 98 ASCII bytes + one 2-byte character = exactly 100 bytes: whole.
    let ident = format!("{}é", "q".repeat(98));
    assert_eq!(ident.len(), 100);
    assert_eq!(line_of("C", Some(&ident)), format!("C: {STATS}: {ident}"));
}

#[test]
fn ident_over_100_bytes_is_cut_with_an_ellipsis() {
    let ident = format!("{}r", "q".repeat(100));
    assert_eq!(
        line_of("C", Some(&ident)),
        format!("C: {STATS}: {}...", "q".repeat(100))
    );
    let long_query = "SELECT * FROM t WHERE x = 1 ".repeat(20);
    let expected_ident = &long_query[..100];
    assert_eq!(
        line_of("CachedPlanSource", Some(&long_query)),
        format!("CachedPlanSource: {STATS}: {expected_ident}...")
    );
}

#[test]
fn ident_is_cut_at_a_character_boundary() {
    // 99 ASCII bytes, then 'é' at bytes 99..101: the cut backs off to 99.
    let ident = format!("{}éz", "q".repeat(99));
    assert_eq!(
        line_of("C", Some(&ident)),
        format!("C: {STATS}: {}...", "q".repeat(99))
    );
    // A 3-byte character straddling byte 100 ('€' at 98..101): cut at 98.
    let ident = format!("{}€€", "q".repeat(98));
    assert_eq!(
        line_of("C", Some(&ident)),
        format!("C: {STATS}: {}...", "q".repeat(98))
    );
    // A 4-byte character ending exactly at byte 100 is kept.
    let ident = format!("{}🦀x", "q".repeat(96));
    assert_eq!(
        line_of("C", Some(&ident)),
        format!("C: {STATS}: {}🦀...", "q".repeat(96))
    );
}

#[test]
fn ident_control_characters_become_spaces() {
    assert_eq!(
        line_of("C", Some("SELECT 1\nFROM\tt\r\x1b[0m\x00end\x7fé")),
        format!("C: {STATS}: SELECT 1 FROM t  [0m end\x7fé")
    );
    // Replacement happens after the cut: a newline at byte 100 is cut off, one
    // at byte 99 becomes a space.
    let ident = format!("{}\n\n", "q".repeat(99));
    assert_eq!(
        line_of("C", Some(&ident)),
        format!("C: {STATS}: {} ...", "q".repeat(99))
    );
}

#[test]
fn empty_ident_still_prints_its_separator() {
    assert_eq!(line_of("C", Some("")), format!("C: {STATS}: "));
    assert_eq!(line_of("C", None), format!("C: {STATS}"));
}

#[test]
fn dynahash_contexts_are_shown_by_their_identifier() {
    assert_eq!(
        line_of("dynahash", Some("Relcache by OID")),
        format!("Relcache by OID: {STATS}")
    );
    assert_eq!(line_of("dynahash", None), format!("dynahash: {STATS}"));
    // Only the exact name "dynahash" is special.
    assert_eq!(
        line_of("Dynahash", Some("x")),
        format!("Dynahash: {STATS}: x")
    );
    // An identifier equal to the name is printed like any other.
    assert_eq!(
        line_of("ExecutorState", Some("ExecutorState")),
        format!("ExecutorState: {STATS}: ExecutorState")
    );
}

#[test]
fn rows_are_breadth_first_with_levels_and_paths() {
    let r = rows(&sample_tree());
    type Brief<'a> = (u64, &'a str, u32, &'a [u64], Option<u64>);
    let summary: Vec<Brief> = r
        .iter()
        .map(|row| {
            (
                row.id,
                row.name.as_str(),
                row.level,
                row.path.as_slice(),
                row.parent_id,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "TopMemoryContext", 1, &[1][..], None),
            (10, "CacheMemoryContext", 2, &[1, 10][..], Some(1)),
            (20, "MessageContext", 2, &[1, 20][..], Some(1)),
            (30, "PortalContext", 2, &[1, 30][..], Some(1)),
            (11, "index info", 3, &[1, 10, 11][..], Some(10)),
            (31, "ExecutorState", 3, &[1, 30, 31][..], Some(30)),
            (32, "ExprContext", 4, &[1, 30, 31, 32][..], Some(31)),
        ]
    );
    assert_eq!(
        r[1],
        ContextRow {
            id: 10,
            name: "CacheMemoryContext".to_string(),
            ident: Some("catalog cache".to_string()),
            kind: "AllocSet".to_string(),
            level: 2,
            path: vec![1, 10],
            parent_id: Some(1),
            total_bytes: 524288,
            total_nblocks: 7,
            free_bytes: 1000,
            free_chunks: 3,
            used_bytes: 523288,
            detail: KindDetail::default(),
        }
    );
    let sum: u64 = r.iter().map(|row| row.total_bytes).sum();
    assert_eq!(sum, 701112);
    assert!(r
        .iter()
        .all(|row| row.used_bytes + row.free_bytes == row.total_bytes));
}

#[test]
fn rows_keep_long_idents_and_kinds_whole() {
    let long = "x".repeat(5000);
    let mut top = node(1, "Top", Some(&long), counters(1, 1, 0, 0), vec![]);
    top.kind = "Generation".to_string();
    let r = rows(&top);
    assert_eq!(r[0].ident.as_deref(), Some(long.as_str()));
    assert_eq!(r[0].kind, "Generation");
}

#[test]
fn json_has_the_documented_shape() {
    let json = to_json(&sample_tree());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["format"], "memctx-stats");
    assert_eq!(v["version"], 1);
    let contexts = v["contexts"].as_array().unwrap();
    assert_eq!(contexts.len(), 7);
    assert_eq!(
        contexts[6],
        serde_json::json!({
            "id": 32,
            "name": "ExprContext",
            "ident": null,
            "type": "AllocSet",
            "level": 4,
            "path": [1, 30, 31, 32],
            "parent_id": 31,
            "total_bytes": 8192,
            "total_nblocks": 1,
            "free_bytes": 7928,
            "free_chunks": 0,
            "used_bytes": 264
        })
    );
    assert_eq!(v["tree"]["name"], "TopMemoryContext");
    assert_eq!(v["tree"]["kind"], "AllocSet");
    assert_eq!(v["tree"]["counters"]["total_bytes"], 100000);
    assert_eq!(
        v["tree"]["children"][2]["children"][0]["name"],
        "ExecutorState"
    );
    // Pretty-printed.
    assert!(json.contains("\n  \"format\": \"memctx-stats\""), "{json}");
}

#[test]
fn json_round_trip() {
    let tree = sample_tree();
    let back = from_json(&to_json(&tree)).unwrap();
    assert_eq!(back, tree);
    assert_eq!(
        format_stats(&back, &PrintOptions::default()),
        format_stats(&tree, &PrintOptions::default())
    );

    // Odd identifiers survive too.
    let odd = node(
        5,
        "weird \"name\"",
        Some("line\nbreak\t\u{0}é🦀"),
        counters(u64::MAX, 3, 7, 1),
        vec![node(6, "empty", Some(""), Counters::default(), vec![])],
    );
    assert_eq!(from_json(&to_json(&odd)).unwrap(), odd);
}

#[test]
fn json_round_trip_of_a_deep_tree() {
    // Deeper than serde_json's nesting limit allows for the nested "tree":
    // from_json rebuilds from the flat rows.
    let depth = 300u64;
    let mut tree = node(depth, "leaf", None, counters(1, 1, 0, 0), vec![]);
    for id in (1..depth).rev() {
        tree = node(id, "level", None, counters(id, 1, 0, 0), vec![tree]);
    }
    let back = from_json(&to_json(&tree)).unwrap();
    assert_eq!(back, tree);
    assert_eq!(back.total().total_nblocks, depth);
    assert_eq!(rows(&back).last().unwrap().level, depth as u32);
}

#[test]
fn from_json_reads_a_tree_only_document() {
    let tree = sample_tree();
    let doc = serde_json::json!({
        "format": "memctx-stats",
        "version": 1,
        "tree": tree,
    });
    assert_eq!(from_json(&doc.to_string()).unwrap(), tree);
}

#[test]
fn from_json_rejects_bad_documents() {
    let good: serde_json::Value = serde_json::from_str(&to_json(&sample_tree())).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        f(&mut v);
        from_json(&v.to_string()).unwrap_err().to_string()
    };

    assert!(from_json("not json").is_err());
    assert!(with(&|v| v["format"] = "pg-stats".into()).contains("not a memctx stats snapshot"));
    assert!(with(&|v| v["version"] = 2.into()).contains("unsupported"));
    assert!(with(&|v| v["contexts"][3]["id"] = 10.into()).contains("duplicate context id 10"));
    assert!(with(&|v| v["contexts"][4]["parent_id"] = 77.into()).contains("parent 77"));
    assert!(
        with(&|v| v["contexts"][2]["parent_id"] = serde_json::Value::Null)
            .contains("more than one root")
    );
    assert!(with(&|v| v["contexts"][0]["parent_id"] = 32.into()).contains("no root context"));
    // A cycle detached from the root: ExecutorState's parent becomes ExprContext.
    assert!(
        with(&|v| v["contexts"][5]["parent_id"] = 32.into()).contains("not connected to the root")
    );
    assert!(with(&|v| {
        let o = v.as_object_mut().unwrap();
        o.remove("contexts");
        o.remove("tree");
    })
    .contains("tree"));
}

/// A tree holding every kind: the Generation, Slab and Bump contexts print their own shapes, a
/// Generation whose chunk count is unknown (as read from a `pg_backend_memory_contexts` export)
/// the common one; the summary of omitted children and the grand total keep the common shape
/// whatever the kinds summed, as PostgreSQL prints them from summed counters.
fn kinds_tree() -> StatsNode {
    let of = |id, name: &str, kind: &str, c, chunks, empty_blocks| {
        let mut n = node(id, name, None, c, vec![]);
        n.kind = kind.to_string();
        n.detail = KindDetail {
            chunks,
            empty_blocks,
        };
        n
    };
    let mut top = node(
        1,
        "TopMemoryContext",
        None,
        counters(8192, 1, 1000, 2),
        vec![],
    );
    top.children = vec![
        of(
            2,
            "Tuples",
            "Generation",
            counters(16384, 2, 11136, 3),
            Some(37),
            None,
        ),
        of(
            3,
            "Change",
            "Slab",
            counters(9696, 2, 640, 8),
            None,
            Some(1),
        ),
        of(
            4,
            "Caller tuples",
            "Bump",
            counters(8192, 1, 5040, 0),
            None,
            None,
        ),
        of(
            5,
            "Exported",
            "Generation",
            counters(8192, 1, 8000, 0),
            None,
            None,
        ),
        of(
            6,
            "TXN",
            "Slab",
            counters(8192, 1, 8000, 100),
            None,
            Some(1),
        ),
        of(
            7,
            "More tuples",
            "Generation",
            counters(8192, 1, 192, 1),
            Some(5),
            None,
        ),
    ];
    top
}

#[test]
fn each_kind_prints_its_postgres_shape() {
    let opts = PrintOptions {
        max_level: 100,
        max_children: 4,
    };
    assert_eq!(
        lines(&format_stats(&kinds_tree(), &opts)),
        [
            "TopMemoryContext: 8192 total in 1 blocks; 1000 free (2 chunks); 7192 used",
            "  Tuples: 16384 total in 2 blocks (37 chunks); 11136 free (3 chunks); 5248 used",
            "  Change: 9696 total in 2 blocks; 1 empty blocks; 640 free (8 chunks); 9056 used",
            "  Caller tuples: 8192 total in 1 blocks; 5040 free; 3152 used",
            "  Exported: 8192 total in 1 blocks; 8000 free (0 chunks); 192 used",
            "  2 more child contexts containing 16384 total in 2 blocks; 8192 free (101 chunks); \
             8192 used",
            "Grand total: 67040 bytes in 9 blocks; 34008 free (114 chunks); 33032 used",
        ]
    );
}

#[test]
fn json_keeps_each_kinds_detail_as_optional_fields() {
    let tree = kinds_tree();
    let json = to_json(&tree);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let row = |i: usize| &v["contexts"][i];
    assert_eq!(row(0)["name"], "TopMemoryContext");
    assert!(row(0).get("chunks").is_none() && row(0).get("empty_blocks").is_none());
    assert_eq!(
        (&row(1)["chunks"], row(1).get("empty_blocks")),
        (&37.into(), None)
    );
    assert_eq!(
        (row(2).get("chunks"), &row(2)["empty_blocks"]),
        (None, &1.into())
    );
    assert!(row(3).get("chunks").is_none() && row(3).get("empty_blocks").is_none());
    assert_eq!(v["tree"]["children"][0]["chunks"], 37);
    assert_eq!(v["tree"]["children"][1]["empty_blocks"], 1);
    let back = from_json(&json).unwrap();
    assert_eq!(back, tree);
    // The nested tree reads back the same (the flat rows are what `from_json` prefers).
    let doc = serde_json::json!({"format": "memctx-stats", "version": 1, "tree": v["tree"]});
    assert_eq!(from_json(&doc.to_string()).unwrap(), tree);
}

/// memctx's printed stats of live contexts of every kind, read back by the leak tools' parser:
/// the same counters, kinds and details, the grand total matching.
#[cfg(feature = "cli")]
#[test]
fn printed_stats_of_every_kind_read_back_the_same() {
    use memctx::{BlockSizes, MemoryContext};

    let root = MemoryContext::top().new_child("round trip", BlockSizes::DEFAULT);
    let aset = root.new_child("AllocSet", BlockSizes::SMALL);
    let generation = root.new_generation_child("Tuples", BlockSizes::SMALL);
    let slab = root.new_slab_child("Change", 8192, 64);
    let bump = root.new_bump_child("Caller tuples", BlockSizes::SMALL);
    let mut gen_chunks = Vec::new();
    let mut slab_chunks = Vec::new();
    for i in 0..300 {
        aset.alloc(24 + i % 100);
        gen_chunks.push(generation.alloc(40 + i % 50).as_ptr());
        slab_chunks.push(slab.alloc(64).as_ptr());
        bump.alloc(16 + i % 30);
    }
    // Free the oldest Generation chunks, and every Slab chunk but the newest: the Slab's older
    // blocks empty and are kept for reuse.
    for p in gen_chunks.drain(..120).chain(slab_chunks.drain(..299)) {
        // SAFETY: each was allocated above and is freed once.
        unsafe { memctx::pfree(p) };
    }
    let tree = root.stats();
    let text = format_stats(&tree, &PrintOptions::default());
    let dumps = memctx::leak::parse_str(&text, "round trip").unwrap();
    assert_eq!(dumps.len(), 1, "{text}");
    let d = &dumps[0];
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(d.grand_total, Some(tree.total()));
    let read = &d.trees[0].contexts;
    let made = rows(&tree);
    assert_eq!(read.len(), made.len());
    for row in &made {
        let c = read.iter().find(|c| c.name == row.name).unwrap();
        let counters = Counters {
            total_bytes: row.total_bytes,
            total_nblocks: row.total_nblocks,
            free_bytes: row.free_bytes,
            free_chunks: row.free_chunks,
        };
        assert_eq!(c.counters(), counters, "{}", row.name);
        assert_eq!(c.detail, row.detail, "{}", row.name);
        let kind = (row.kind != "AllocSet").then_some(row.kind.as_str());
        assert_eq!(c.kind.as_deref(), kind, "{}", row.name);
    }
    let detail = |name: &str| made.iter().find(|r| r.name == name).unwrap().detail;
    // The figures are there: the Generation's chunks are its 180 live ones and the freed ones
    // of blocks not emptied yet (an emptied block is rewound and counts none); Slab blocks
    // emptied.
    let chunks = detail("Tuples").chunks.unwrap();
    assert!((180..300).contains(&chunks), "{text}");
    assert!(
        detail("Change").empty_blocks.is_some_and(|e| e >= 1),
        "{text}"
    );
    let line = |name: &str| {
        let prefix = format!("  {name}: ");
        text.lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap()
            .to_string()
    };
    let bump = line("Caller tuples");
    assert!(
        bump.contains(" free; ") && !bump.contains("chunks"),
        "{text}"
    );
    assert!(
        line("Tuples").contains(&format!(" blocks ({chunks} chunks); ")),
        "{text}"
    );
    assert!(line("Change").contains(" empty blocks; "), "{text}");
    for p in slab_chunks.into_iter().chain(gen_chunks) {
        // SAFETY: the rest of the chunks allocated above, each freed once.
        unsafe { memctx::pfree(p) };
    }
    root.delete();
}
