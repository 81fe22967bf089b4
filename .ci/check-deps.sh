#!/usr/bin/env bash
# The verifier is what a client runs before sending key material: it must
# not pull an async runtime, an ML runtime, OpenSSL, an HTTP client or any
# other crate that does I/O. Checked over its normal dependency tree, with
# and without default features.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
forbidden='^(tokio|tokio-[a-z-]+|mio|async-std|smol|tch|torch-sys|openssl|openssl-sys|native-tls|reqwest|hyper|hyper-util|ureq|curl|curl-sys|isahc|surf|socket2|vsock|rusqlite|redb)$'
status=0
for flags in "" "--no-default-features"; do
  # shellcheck disable=SC2086
  crates=$(cargo tree -q -e normal -p cocoon-verifier $flags --prefix none | awk '{print $1}' | sort -u)
  bad=$(echo "$crates" | grep -E "$forbidden" || true)
  if [ -n "$bad" ]; then
    echo "cocoon-verifier ${flags:-(default features)} pulls forbidden crates:" >&2
    echo "$bad" >&2
    status=1
  fi
done
# The verifier's test-only trust roots (feature `test-roots`) must never be
# enabled by a crate that ships: only `--features test-roots` on the command
# line turns them on, for verifier/tests/snp_crl.rs.
if cargo tree -q --workspace -e normal,features -i cocoon-verifier | grep -q 'feature "test-roots"'; then
  echo "a workspace crate enables cocoon-verifier's test-only feature test-roots" >&2
  status=1
fi
# The enclave is the trusted computing base: no HTTP server, no TLS or
# OpenSSL, no database (DESIGN.md: "the enclave never pulls an HTTP server").
# hyper is allowed client-side only (the upstream backend talks plain HTTP to
# a server inside the same guest): its server feature must stay off.
enclave_forbidden='^(axum|tower-http|warp|actix-web|reqwest|ureq|curl|curl-sys|openssl|openssl-sys|native-tls|rustls|rusqlite|redb)$'
crates=$(cargo tree -q -e normal -p cocoon-enclave --prefix none | awk '{print $1}' | sort -u)
bad=$(echo "$crates" | grep -E "$enclave_forbidden" || true)
if [ -n "$bad" ]; then
  echo "cocoon-enclave pulls forbidden crates:" >&2
  echo "$bad" >&2
  status=1
fi
server=$(cargo tree -q -p cocoon-enclave -e features -i hyper 2>/dev/null | grep -oE 'hyper(-util)? feature "(server[a-z0-9-]*)"' | sort -u || true)
if [ -n "$server" ]; then
  echo "cocoon-enclave enables an HTTP server:" >&2
  echo "$server" >&2
  status=1
fi
[ $status = 0 ] && echo "dependency rules: ok (verifier pulls no I/O, async, ML or OpenSSL crate, and no crate enables its test roots; enclave no HTTP server, TLS, OpenSSL or database crate)"
exit $status
