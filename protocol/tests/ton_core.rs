//! Cross-check of the TON reading primitives against `@ton/core`:
//! `contracts/scripts/ton-fixtures.mjs` builds reference cells, bags of
//! cells (with and without index and CRC), dictionaries and addresses with
//! @ton/core at test time; this test parses them with `Cell::from_boc`,
//! `CellSlice`, `dict::parse_hashmap` and `ContractAddress::parse`, and
//! compares hashes, fields, entries and encodings.
//!
//! Needs Node.js and `contracts/node_modules` (`scripts/ton-deps.sh`); under
//! CI (`CI` set) their absence fails the test, elsewhere it is skipped with
//! a message.

mod common;

use cocoon_protocol::settlement::ContractAddress;
use cocoon_protocol::ton::{dict, Cell};
use serde_json::Value;

fn fixtures() -> Option<Value> {
    common::node_fixtures("ton-fixtures.mjs")
}

fn h(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

#[test]
fn cells_dicts_and_addresses_agree_with_ton_core() {
    let Some(f) = fixtures() else { return };

    // Cells: every BOC form parses to a cell of @ton/core's hash, depth and
    // shape, and our own serialisation is @ton/core's default one.
    let cells = f["cells"].as_array().unwrap();
    assert!(cells.len() >= 6);
    for c in cells {
        let name = c["name"].as_str().unwrap();
        let want_hash = h(&c["hash"]);
        let bocs = c["bocs"].as_array().unwrap();
        let mut first = None;
        for b in bocs {
            let bytes = h(b);
            let cell = Cell::from_boc(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(cell.hash().to_vec(), want_hash, "{name} hash");
            assert_eq!(
                u64::from(cell.depth()),
                c["depth"].as_u64().unwrap(),
                "{name}"
            );
            assert_eq!(cell.bit_len() as u64, c["bits"].as_u64().unwrap(), "{name}");
            assert_eq!(
                cell.refs().len() as u64,
                c["refs"].as_u64().unwrap(),
                "{name}"
            );
            first.get_or_insert(cell);
        }
        let cell = first.unwrap();
        assert_eq!(cell.to_boc(), h(&bocs[0]), "{name}: our BOC is @ton/core's");
    }

    // Slice fields.
    let s = &f["slice"];
    let cell = Cell::from_boc(&h(&s["boc"])).unwrap();
    let mut r = cell.as_slice();
    assert_eq!(
        r.load_uint(32).unwrap().to_string(),
        s["u32"].as_str().unwrap()
    );
    assert_eq!(
        r.load_int(9).unwrap().to_string(),
        s["i9"].as_str().unwrap()
    );
    for want in s["coins"].as_array().unwrap() {
        assert_eq!(r.load_coins().unwrap().to_string(), want.as_str().unwrap());
    }
    assert_eq!(r.load_address().unwrap(), None);
    let a = r.load_address().unwrap().unwrap();
    assert_eq!(a.to_string(), s["address"].as_str().unwrap());
    assert_eq!(r.load_maybe_ref().unwrap(), None);
    let got = r.load_maybe_ref().unwrap().unwrap();
    assert_eq!(got.hash().to_vec(), h(&s["ref_hash"]));
    assert_eq!(r.load_uint_wide(256).unwrap().to_vec(), h(&s["u256"]));
    r.end().unwrap();

    // Dictionaries: the same entries, in ascending key order.
    for d in f["dicts"].as_array().unwrap() {
        let name = d["name"].as_str().unwrap();
        let root = Cell::from_boc(&h(&d["boc"])).unwrap();
        let key_bits = d["key_bits"].as_u64().unwrap() as usize;
        let value_bits = d["value_bits"].as_u64().unwrap() as usize;
        let entries =
            dict::parse_hashmap(&root, key_bits).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = d["entries"].as_array().unwrap();
        assert_eq!(entries.len(), want.len(), "{name}");
        for ((k, mut v), w) in entries.into_iter().zip(want) {
            assert_eq!(hex::encode(&k), w["key"].as_str().unwrap(), "{name}");
            assert_eq!(
                v.load_uint(value_bits).unwrap().to_string(),
                w["value"].as_str().unwrap(),
                "{name}"
            );
            v.end().unwrap();
        }
    }

    // Addresses: every friendly form parses; ours equal @ton/core's.
    for a in f["addresses"].as_array().unwrap() {
        let raw = a["raw"].as_str().unwrap();
        let addr = ContractAddress::parse(raw).unwrap();
        assert_eq!(addr.to_string(), raw);
        for form in a["forms"].as_array().unwrap() {
            let b = form["bounceable"].as_bool().unwrap();
            let t = form["testnet"].as_bool().unwrap();
            let url = form["url"].as_str().unwrap();
            assert_eq!(addr.to_friendly(b, t), url);
            for s in [url, form["std"].as_str().unwrap()] {
                let (p, flags) = ContractAddress::parse_friendly(s).unwrap();
                assert_eq!((p, flags.bounceable, flags.testnet), (addr, b, t), "{s}");
            }
        }
    }
}
