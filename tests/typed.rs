//! Typed keys and values, property-tested: key encodings sort like the keys, everything round
//! trips through a real store, a typed view behaves like a `BTreeMap`, and bytes that are not
//! what a view expects are `Error::Decode`, never a panic.

#![cfg(feature = "serde")]

use std::collections::BTreeMap;
use std::fmt::Debug;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use sturdykv::{Db, Error, Key, Options, decode_key, encode_key};

fn order_and_round_trip<K: Key + Ord + Debug>(a: &K, b: &K) {
    let (ea, eb) = (encode_key(a), encode_key(b));
    assert_eq!(ea.cmp(&eb), a.cmp(b), "{a:?} vs {b:?}: {ea:?} vs {eb:?}");
    assert_eq!(&decode_key::<K>(&ea).expect("decode"), a);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn key_encodings_sort_like_the_keys(
        (u1, u2) in (any::<u64>(), any::<u64>()),
        (i1, i2) in (any::<i64>(), any::<i64>()),
        (s1, s2) in (any::<i8>(), any::<i8>()),
        (w1, w2) in (any::<i128>(), any::<i128>()),
        (c1, c2) in (any::<char>(), any::<char>()),
        (b1, b2) in (any::<bool>(), any::<bool>()),
        (t1, t2) in (".{0,6}", ".{0,6}"),
        (v1, v2) in (proptest::collection::vec(0u8..4, 0..6), proptest::collection::vec(0u8..4, 0..6)),
        (p1, p2) in (("[a\\x00b]{0,4}", any::<i32>()), ("[a\\x00b]{0,4}", any::<i32>())),
        (q1, q2) in (
            (proptest::collection::vec(0u8..3, 0..4), any::<u16>(), "[ab]{0,3}"),
            (proptest::collection::vec(0u8..3, 0..4), any::<u16>(), "[ab]{0,3}"),
        ),
    ) {
        order_and_round_trip(&u1, &u2);
        order_and_round_trip(&i1, &i2);
        order_and_round_trip(&s1, &s2);
        order_and_round_trip(&w1, &w2);
        order_and_round_trip(&c1, &c2);
        order_and_round_trip(&b1, &b2);
        order_and_round_trip(&t1, &t2);
        order_and_round_trip(&v1, &v2);
        // Tuples: strings with zero bytes and prefixes of each other inside, and equal heads.
        order_and_round_trip(&p1, &p2);
        order_and_round_trip(&(p1.0.clone(), 0i32), &(p1.0.clone(), p2.1));
        order_and_round_trip(&q1, &q2);
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Role {
    Reader,
    Writer { since: u32 },
    Admin(String),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Record {
    name: String,
    age: u8,
    score: f64,
    tags: Vec<String>,
    manager: Option<u64>,
    roles: Vec<Role>,
    blob: Vec<u8>,
}

fn record() -> impl Strategy<Value = Record> {
    let role = prop_oneof![
        Just(Role::Reader),
        any::<u32>().prop_map(|since| Role::Writer { since }),
        ".{0,8}".prop_map(Role::Admin),
    ];
    (
        ".{0,12}",
        any::<u8>(),
        -1e12f64..1e12,
        proptest::collection::vec(".{0,5}", 0..4),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec(role, 0..3),
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(name, age, score, tags, manager, roles, blob)| Record {
            name,
            age,
            score,
            tags,
            manager,
            roles,
            blob,
        })
}

#[derive(Debug, Clone)]
enum Op {
    Put((String, i32), Record),
    Delete((String, i32)),
}

fn op() -> impl Strategy<Value = Op> {
    let key = ("[ab\\x00]{0,3}", -3i32..3);
    prop_oneof![
        3 => (key.clone(), record()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => key.prop_map(Op::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A typed view over a real store against a `BTreeMap` of the same types: every value
    /// round trips, and iteration and ranges come out in the keys' order, also after a reopen.
    #[test]
    fn a_typed_view_behaves_like_a_btreemap(
        ops in proptest::collection::vec(op(), 1..40),
        (lo, hi) in (("[ab]{0,2}", -3i32..3), ("[ab]{0,2}", -3i32..3)),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut model: BTreeMap<(String, i32), Record> = BTreeMap::new();
        {
            let db = Options::new().durability(sturdykv::Durability::Buffered).open(dir.path()).expect("open");
            // Something outside the view's prefix, on both sides, that it must not see.
            db.put("t", "x").expect("put");
            db.put("v", "x").expect("put");
            let view = db.typed::<(String, i32), Record>("u/");
            for op in &ops {
                match op {
                    Op::Put(k, v) => {
                        view.put(k, v).expect("put");
                        model.insert(k.clone(), v.clone());
                    }
                    Op::Delete(k) => {
                        view.delete(k).expect("delete");
                        model.remove(k);
                    }
                }
            }
            db.flush().expect("flush");
        }
        let db = Db::open(dir.path()).expect("reopen");
        let view = db.typed::<(String, i32), Record>("u/");
        let all: Vec<((String, i32), Record)> = view.iter().collect::<Result<_, _>>().expect("iter");
        let expected: Vec<((String, i32), Record)> = model.clone().into_iter().collect();
        prop_assert_eq!(&all, &expected);
        let backwards: Vec<((String, i32), Record)> = view.iter().rev().collect::<Result<_, _>>().expect("rev");
        prop_assert_eq!(backwards, expected.into_iter().rev().collect::<Vec<_>>());
        for (k, v) in &model {
            prop_assert_eq!(view.get(k).expect("get"), Some(v.clone()));
        }
        if lo <= hi {
            let got: Vec<(String, i32)> = view
                .range(lo.clone()..hi.clone())
                .map(|e| e.map(|(k, _)| k))
                .collect::<Result<_, _>>()
                .expect("range");
            let want: Vec<(String, i32)> = model.range(lo..hi).map(|(k, _)| k.clone()).collect();
            prop_assert_eq!(got, want);
        }
    }

    /// Whatever bytes lie under a typed key, reading them is a value or `Error::Decode`.
    #[test]
    fn foreign_bytes_are_decode_errors_never_panics(
        value in proptest::collection::vec(any::<u8>(), 0..64),
        key_tail in proptest::collection::vec(any::<u8>(), 0..12),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        db.put(b"r/\x00\x00\x00\x07", &value).expect("put");
        let mut key = b"r/".to_vec();
        key.extend(&key_tail);
        db.put(&key, &value).expect("put");
        let view = db.typed::<u32, Record>("r/");
        match view.get(&7) {
            Ok(_) | Err(Error::Decode { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        for entry in view.iter() {
            match entry {
                Ok(_) | Err(Error::Decode { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
}

#[test]
fn a_value_of_another_type_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open");
    db.typed::<String, String>("")
        .put("name", &"ada".to_owned())
        .expect("put");
    let e = db
        .typed::<String, Record>("")
        .get("name")
        .expect_err("not a Record");
    let text = e.to_string();
    assert!(
        text.contains("\"name\"") && text.contains("Record"),
        "{text}"
    );
    // Raw bytes that are not a typed value at all.
    db.put("raw", "hello").expect("put");
    let e = db
        .typed::<String, String>("")
        .get("raw")
        .expect_err("raw bytes");
    assert!(e.to_string().contains("unknown value encoding"), "{e}");
    // Typed writes go into batches too, atomically with plain ones.
    let numbers = db.typed::<i64, Vec<u16>>("n/");
    let mut batch = sturdykv::Batch::new();
    numbers
        .put_in(&mut batch, &-5, &vec![1, 2])
        .expect("put_in");
    numbers.put_in(&mut batch, &3, &vec![]).expect("put_in");
    numbers.delete_in(&mut batch, &3);
    batch.put("plain", "1");
    db.write(batch).expect("write");
    assert_eq!(numbers.get(&-5).expect("get"), Some(vec![1, 2]));
    assert!(!numbers.contains_key(&3).expect("contains"));
    // A String key is its bytes: kvctl and plain reads find it.
    assert!(db.get("name").expect("get").is_some());
}
