//! The parsers of `protocol::registry` against a real registry:
//! `contracts/scripts/registry-fixtures.mjs` deploys the contract in
//! @ton/sandbox, adds releases (one revoked), registers three providers,
//! proposes a new owner, and prints every get-method's raw result stack
//! with the values it put in; this test parses the stacks and compares.
//!
//! Needs Node.js and `contracts/node_modules` (`scripts/ton-deps.sh`); under
//! CI (`CI` set) their absence fails the test, elsewhere it is skipped with
//! a message.

mod common;

use cocoon_protocol::registry::*;
use cocoon_protocol::settlement::ContractAddress;
use serde_json::Value;

fn fixtures() -> Option<Value> {
    common::node_fixtures("registry-fixtures.mjs")
}

/// A decimal integer (up to 2^256 - 1 in magnitude) as sign and 32 bytes.
fn decimal(s: &str) -> (bool, [u8; 32]) {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let mut m = [0u8; 32];
    for c in digits.bytes() {
        let mut carry = u32::from(c - b'0');
        for b in m.iter_mut().rev() {
            let v = u32::from(*b) * 10 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0, "{s} overflows 256 bits");
    }
    (negative, m)
}

fn stack(v: &Value) -> Vec<StackItem> {
    v.as_array()
        .expect("stack array")
        .iter()
        .map(|it| match it["type"].as_str().unwrap() {
            "int" => {
                let (negative, magnitude) = decimal(it["value"].as_str().unwrap());
                StackItem::Int {
                    negative,
                    magnitude,
                }
            }
            "cell" => StackItem::Cell(hex::decode(it["boc"].as_str().unwrap()).unwrap()),
            "slice" => StackItem::Slice(hex::decode(it["boc"].as_str().unwrap()).unwrap()),
            "null" => StackItem::Null,
            t => panic!("stack item type {t}"),
        })
        .collect()
}

fn addr(v: &Value) -> ContractAddress {
    ContractAddress::parse_raw(v.as_str().unwrap()).unwrap()
}

fn h32(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn release(e: &Value) -> Release {
    Release {
        manifest_hash: h32(&e["manifest_hash"]),
        status: e["status"].as_u64().unwrap() as u8,
        added_at: e["added_at"].as_u64().unwrap() as u32,
        revoked_at: e["revoked_at"].as_u64().unwrap() as u32,
        measurements: e["measurements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m[0].as_u64().unwrap() as u8, h32(&m[1])))
            .collect(),
    }
}

fn provider(e: &Value) -> ProviderEntry {
    ProviderEntry {
        owner: addr(&e["owner"]),
        payment: addr(&e["payment"]),
        endpoint: e["endpoint"].as_str().unwrap().to_string(),
        registered_at: e["registered_at"].as_u64().unwrap() as u32,
        updated_at: e["updated_at"].as_u64().unwrap() as u32,
        stake: e["stake"].as_str().unwrap().parse().unwrap(),
    }
}

#[test]
fn parsers_read_what_the_registry_returns() {
    let Some(f) = fixtures() else { return };

    let info = RegistryInfo::from_stack(&stack(&f["get_registry"]["stack"])).unwrap();
    let e = &f["get_registry"]["expect"];
    assert_eq!(
        info,
        RegistryInfo {
            owner: addr(&e["owner"]),
            pending_owner: Some(addr(&e["pending_owner"])),
            treasury: addr(&e["treasury"]),
            fee_bps: e["fee_bps"].as_u64().unwrap() as u16,
            payment_code_hash: h32(&e["payment_code_hash"]),
            release_count: 2,
            provider_count: 3,
            payment_code_depth: e["payment_code_depth"].as_u64().unwrap() as u16,
            stake: e["stake"].as_str().unwrap().parse().unwrap(),
        }
    );
    assert_eq!(info.treasury.workchain, -1);

    let releases = releases_from_stack(&stack(&f["get_releases"]["stack"])).unwrap();
    let want: Vec<Release> = f["get_releases"]["expect"]
        .as_array()
        .unwrap()
        .iter()
        .map(release)
        .collect();
    assert_eq!(releases, want);
    assert_eq!(releases.iter().filter(|r| r.is_active()).count(), 1);
    for r in f["get_release"].as_array().unwrap() {
        let got = Release::from_get_release(h32(&r["hash"]), &stack(&r["stack"])).unwrap();
        assert_eq!(got, Some(release(&r["expect"])));
    }
    assert_eq!(
        Release::from_get_release([0x99; 32], &stack(&f["unknown_release"])).unwrap(),
        None
    );

    let providers = providers_from_stack(&stack(&f["get_providers"]["stack"])).unwrap();
    let want: Vec<ProviderEntry> = f["get_providers"]["expect"]
        .as_array()
        .unwrap()
        .iter()
        .map(provider)
        .collect();
    assert_eq!(providers, want);
    for p in f["get_provider"].as_array().unwrap() {
        let got =
            ProviderEntry::from_get_provider(h32(&p["owner_hash"]), &stack(&p["stack"])).unwrap();
        assert_eq!(got.as_ref(), Some(&provider(&p["expect"])));
        // The registry's own rule gives the payment address it accepted.
        let delay = p["expect"]["withdraw_delay"].as_u64().unwrap() as u32;
        assert_eq!(
            info.payment_address_for(&got.unwrap().owner, delay)
                .unwrap(),
            addr(&p["expect"]["payment"])
        );
    }
    assert_eq!(
        ProviderEntry::from_get_provider([0x99; 32], &stack(&f["unknown_provider"])).unwrap(),
        None
    );

    let empty = RegistryInfo::from_stack(&stack(&f["empty"]["get_registry"])).unwrap();
    assert_eq!(empty.pending_owner, None);
    assert_eq!((empty.release_count, empty.provider_count), (0, 0));
    assert!(releases_from_stack(&stack(&f["empty"]["get_releases"]))
        .unwrap()
        .is_empty());
    assert!(providers_from_stack(&stack(&f["empty"]["get_providers"]))
        .unwrap()
        .is_empty());

    // Wrong shapes are refused, not misread.
    let reg = stack(&f["get_registry"]["stack"]);
    assert!(RegistryInfo::from_stack(&reg[..8]).is_err());
    let mut swapped = reg.clone();
    swapped.swap(0, 3);
    assert!(RegistryInfo::from_stack(&swapped).is_err());
    let mut over = reg.clone();
    over[3] = StackItem::Int {
        negative: false,
        magnitude: decimal("1001").1,
    };
    assert!(RegistryInfo::from_stack(&over).is_err(), "fee above 10%");
    // The providers' dictionary read as releases fails on its values.
    assert!(releases_from_stack(&stack(&f["get_providers"]["stack"])).is_err());
    assert!(providers_from_stack(&stack(&f["get_releases"]["stack"])).is_err());
}
