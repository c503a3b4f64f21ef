//! Mutation fuzzing with proptest, for the parsers that read untrusted input (config,
//! snapshot, conntrack messages, `/flows` queries): start from real inputs and flip, insert,
//! delete, repeat and cut bytes. Every target's property is only "no panic, no hang".
//!
//! `TENANTFLOW_FUZZ_CASES` sets the cases per target: CI runs the default (a bounded
//! run), `cargo xtask bench --fuzz` runs millions (docs/testing.md records how many).

use proptest::prelude::*;

/// Cases per target.
pub fn config() -> ProptestConfig {
    let cases = std::env::var("TENANTFLOW_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Flip(u32, u8),
    Insert(u32, u8),
    Delete(u32, u32),
    Repeat(u32, u32),
    Cut(u32),
}

/// Bytes the parsers give meaning to, inserted more often than chance would.
const INTERESTING: &[u8] = b"\0\n :-[]{},&*!|>'\"#%@`?=&\xff\x7f0123456789";

fn op() -> impl Strategy<Value = Op> {
    let byte = prop_oneof![any::<u8>(), proptest::sample::select(INTERESTING)];
    prop_oneof![
        (any::<u32>(), any::<u8>()).prop_map(|(p, b)| Op::Flip(p, b)),
        (any::<u32>(), byte).prop_map(|(p, b)| Op::Insert(p, b)),
        (any::<u32>(), 0u32..64).prop_map(|(p, n)| Op::Delete(p, n)),
        (any::<u32>(), 0u32..64).prop_map(|(p, n)| Op::Repeat(p, n)),
        any::<u32>().prop_map(Op::Cut),
    ]
}

fn apply(mut v: Vec<u8>, ops: &[Op]) -> Vec<u8> {
    for o in ops {
        let at = |p: u32, len: usize| if len == 0 { 0 } else { p as usize % (len + 1) };
        match *o {
            Op::Flip(p, b) if !v.is_empty() => {
                let i = p as usize % v.len();
                v[i] ^= b;
            }
            Op::Insert(p, b) => {
                let i = at(p, v.len());
                v.insert(i, b);
            }
            Op::Delete(p, n) => {
                let i = at(p, v.len());
                let end = (i + n as usize).min(v.len());
                v.drain(i..end);
            }
            Op::Repeat(p, n) => {
                let i = at(p, v.len());
                let end = (i + n as usize).min(v.len());
                let piece = v[i..end].to_vec();
                v.splice(i..i, piece);
            }
            Op::Cut(p) => {
                let i = at(p, v.len());
                v.truncate(i);
            }
            _ => {}
        }
    }
    v
}

/// One of `seeds`, mutated up to eight times.
pub fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(op(), 0..8),
    )
        .prop_map(|(seed, ops)| apply(seed, &ops))
}

/// As [`mutated`], as text (invalid UTF-8 replaced, as a file reader would refuse it).
pub fn mutated_text(seeds: &[&str]) -> impl Strategy<Value = String> {
    mutated(seeds.iter().map(|s| s.as_bytes().to_vec()).collect())
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}
