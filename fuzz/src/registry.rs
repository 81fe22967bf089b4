//! The registry's get-method results (`cocoon_protocol::registry`): a chain
//! API answers them, so the client parses untrusted bags of cells.

use std::hint::black_box;

use cocoon_protocol::registry::{
    parse_providers, parse_releases, ProviderEntry, RegistryInfo, Release, StackItem,
    MAX_ENDPOINT_BYTES, STATUS_ACTIVE, STATUS_REVOKED,
};
use cocoon_protocol::ton::Cell;

fn int(v: u8, negative: bool) -> StackItem {
    let mut magnitude = [0u8; 32];
    magnitude[31] = v;
    StackItem::Int {
        negative,
        magnitude,
    }
}

/// `registry_results`: the input as a bag of cells, read as the releases
/// and the providers dictionaries, as the measurements and the endpoint of
/// `get_release`/`get_provider`, and as each address of `get_registry`.
/// What parses must keep the contract's guarantees (a known status, a
/// revocation time exactly when revoked, at least one measurement, an
/// http(s) endpoint of at most 256 bytes).
pub fn registry_results(data: &[u8]) {
    let Ok(cell) = Cell::from_boc(data) else {
        return;
    };
    let check_release = |r: &Release| {
        assert!(r.status == STATUS_ACTIVE || r.status == STATUS_REVOKED);
        assert_eq!(r.is_active(), r.revoked_at == 0);
        assert!(!r.measurements.is_empty());
    };
    let check_provider = |p: &ProviderEntry| {
        assert!(p.endpoint.len() <= MAX_ENDPOINT_BYTES);
        assert!(p.endpoint.starts_with("http://") || p.endpoint.starts_with("https://"));
        assert_eq!(p.owner.workchain, 0);
    };
    match parse_releases(Some(&cell)) {
        Ok(rs) => rs.iter().for_each(check_release),
        Err(e) => {
            black_box(e.to_string());
        }
    }
    match parse_providers(Some(&cell)) {
        Ok(ps) => ps.iter().for_each(check_provider),
        Err(e) => {
            black_box(e.to_string());
        }
    }
    let boc = data.to_vec();
    let release = [
        int(1, true),
        int(1, false),
        int(7, false),
        int(0, false),
        StackItem::Cell(boc.clone()),
    ];
    if let Ok(Some(r)) = Release::from_get_release([0; 32], &release) {
        check_release(&r);
    }
    let provider = [
        int(1, true),
        StackItem::Slice(boc.clone()),
        StackItem::Cell(boc.clone()),
        int(1, false),
        int(2, false),
        int(3, false),
    ];
    if let Ok(Some(p)) = ProviderEntry::from_get_provider([0; 32], &provider) {
        check_provider(&p);
    }
    let registry = [
        StackItem::Slice(boc.clone()),
        StackItem::Slice(boc.clone()),
        StackItem::Slice(boc),
        int(100, false),
        int(9, false),
        int(1, false),
        int(1, false),
        int(7, false),
        int(1, false),
    ];
    if let Ok(info) = RegistryInfo::from_stack(&registry) {
        assert!(info.fee_bps <= 1000);
        assert_eq!(info.owner, info.treasury);
    }
}
