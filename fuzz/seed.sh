#!/usr/bin/env bash
# Build the seed corpus of every fuzz target from the shared attestation
# vectors. The corpus is never committed (/fuzz/corpus/*/ is git-ignored).
#
#   fuzz/seed.sh            # vectors at ../shared/vectors (relative to the repo root)
#   COCOON_VECTORS=/path/to/vectors fuzz/seed.sh
#
# Seeds are named after the vector they come from, so re-running only
# refreshes them; inputs libFuzzer added to the corpus are left alone.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

vectors="${COCOON_VECTORS:-../shared/vectors}"
if [[ ! -f "$vectors/manifest.json" || ! -d "$vectors/snp" ]]; then
    echo "fuzz/seed.sh: attestation vectors not found at '$vectors' (resolved from $repo_root)." >&2
    echo "fuzz/seed.sh: check out shared/ beside the repository, or set COCOON_VECTORS to the vectors directory." >&2
    exit 1
fi
snp="$vectors/snp"
corpus="$repo_root/fuzz/corpus"
mkdir -p "$corpus/snp_report" "$corpus/snp_verify" "$corpus/certificates"

# put DEST SRC...: DEST becomes the concatenation of the SRCs, writable
# (the vectors are read-only; libFuzzer and re-runs must be able to replace it).
put() {
    local dest="$1"
    shift
    rm -f "$dest"
    cat "$@" >"$dest"
}

# seeds TARGET...: "TARGET n, ..." with n the seed files in each target's
# corpus (libFuzzer's own units, named by their SHA-1, are not counted).
seeds() {
    local t n out=""
    for t in "$@"; do
        n=$(find "$corpus/$t" -maxdepth 1 -type f | awk -F/ '$NF !~ /^[0-9a-f]{40}$/' | wc -l)
        out+="${out:+, }$t $n"
    done
    printf '%s' "$out"
}

need() {
    if [[ ! -f "$1" ]]; then
        echo "fuzz/seed.sh: expected vector file $1 is missing" >&2
        exit 1
    fi
}

# name  report                                VCEK/VLEK                               AMD chain (ASK/ASVK + ARK, PEM)
cases=(
    "genoa-v5-oak               genoa-v5-oak/report.bin               genoa-v5-oak/vcek.der               amd-roots/ask_ark_genoa.pem"
    "milan-v2-gsg               milan-v2-gsg/attestation.bin          milan-v2-gsg/vcek.der               amd-roots/ask_ark_milan.pem"
    "milan-v2-idblock-trustee   milan-v2-idblock-trustee/report.bin   milan-v2-idblock-trustee/vcek.der   amd-roots/ask_ark_milan.pem"
    "milan-v3-dstack            milan-v3-dstack/report.bin            milan-v3-dstack/vcek.pem            amd-roots/ask_ark_milan.pem"
    "milan-v3-oak-oc-release    milan-v3-oak-oc-release/report.bin    milan-v3-oak-oc-release/vcek.der    amd-roots/ask_ark_milan.pem"
    "milan-v3-vlek-trustee      milan-v3-vlek-trustee/report.bin      milan-v3-vlek-trustee/vlek.der      amd-roots/ask_ark_milan_vlek.pem"
    "turin-chain-virtee         -                                     turin-chain-virtee/vcek_turin.der   turin-chain-virtee/cert_chain_turin.pem"
)

n_report=0 n_verify=0 n_cert=0
for line in "${cases[@]}"; do
    read -r name report vek chain <<<"$line"
    need "$snp/$vek"
    need "$snp/$chain"
    vek_ext="${vek##*.}"
    if [[ "$report" != "-" ]]; then
        need "$snp/$report"
        put "$corpus/snp_report/$name.bin" "$snp/$report"
        n_report=$((n_report + 1))
        # snp_verify: report ‖ VCEK/VLEK.
        put "$corpus/snp_verify/$name+$vek_ext" "$snp/$report" "$snp/$vek"
        n_verify=$((n_verify + 1))
    fi
    # certificates, mode 1: the VCEK/VLEK alone.
    put "$corpus/certificates/$name.$vek_ext" "$snp/$vek"
    n_cert=$((n_cert + 1))
    # certificates, mode 2: the VCEK/VLEK as DER followed by its AMD chain.
    if [[ "$vek_ext" == "der" ]]; then
        put "$corpus/certificates/$name+chain" "$snp/$vek" "$snp/$chain"
    else
        # PEM: base64-decode the one CERTIFICATE block (coreutils only, no openssl).
        rm -f "$corpus/certificates/$name+chain"
        { sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' "$snp/$vek" |
            grep -v -- '-----' | tr -d ' \r\n' | base64 -d
          cat "$snp/$chain"; } >"$corpus/certificates/$name+chain"
    fi
    n_cert=$((n_cert + 1))
done

# Also seed the PEM chains (ASK/ASVK + ARK) and the lone dstack ASK on their own.
for pem in "$snp"/amd-roots/*.pem "$snp/milan-v3-dstack/ask.pem"; do
    need "$pem"
    put "$corpus/certificates/$(basename "$(dirname "$pem")")-$(basename "$pem")" "$pem"
    n_cert=$((n_cert + 1))
done
# A VCEK bundled with its ASK and ARK in one PEM file (cloud providers' shape).
{ sed -n '/BEGIN/,/END/p' "$snp/milan-v3-dstack/vcek.pem"; cat "$snp/amd-roots/ask_ark_milan.pem"; } \
    >"$corpus/certificates/milan-v3-dstack-vcek-ask-ark-bundle.pem"
n_cert=$((n_cert + 1))
# snp_report: a report as hex text (as several SDKs store them).
rm -f "$corpus/snp_report/genoa-v5-oak.hex"
od -An -v -tx1 "$snp/genoa-v5-oak/report.bin" | tr -d ' ' >"$corpus/snp_report/genoa-v5-oak.hex"
n_report=$((n_report + 1))
# snp_crl: each DER VCEK/VLEK followed by a CRL (no AMD CRL is in the
# vectors: Intel's PCK and root CRLs give the DER structure), and the CRLs
# on their own.
mkdir -p "$corpus/snp_crl"
gtg_crls=("$vectors/tdx/go-tdx-guest/pckcrl" "$vectors/tdx/go-tdx-guest/rootcrl.der")
for c in "${gtg_crls[@]}"; do
    need "$c"
    put "$corpus/snp_crl/$(basename "$c")" "$c"
done
for vek in genoa-v5-oak/vcek.der milan-v2-gsg/vcek.der milan-v3-vlek-trustee/vlek.der turin-chain-virtee/vcek_turin.der; do
    put "$corpus/snp_crl/$(tr '/' '-' <<<"$vek")+pckcrl" "$snp/$vek" "${gtg_crls[0]}"
done
echo "fuzz/seed.sh: $(seeds snp_crl) files (in fuzz/corpus/)"
# The dstack report container (not a bare report: exercises WrongLength).
if [[ -f "$snp/milan-v3-dstack/sev_snp_attestation.bin" ]]; then
    put "$corpus/snp_report/milan-v3-dstack-container.bin" "$snp/milan-v3-dstack/sev_snp_attestation.bin"
    n_report=$((n_report + 1))
fi

# tdx_quote: every TDX (and the one SGX) quote vector, as it is (several are
# padded after the quote, which exercises Quote::parse_prefix).
mkdir -p "$corpus/tdx_quote"
n_tdx=0
for q in tdx/dcap-qvl/tdx_quote tdx/dcap-qvl/tdx_quote_outdated tdx/dcap-qvl/sgx_quote \
    tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat tdx/go-tdx-guest/quote_v5_sample.dat \
    tdx/trustee-gnr/tdx_quote_6.dat measure/tdx/gtg-ccel/cos-113-tdx-quote.dat; do
    need "$vectors/$q"
    put "$corpus/tdx_quote/$(tr '/' '-' <<<"$q")" "$vectors/$q"
    n_tdx=$((n_tdx + 1))
done

# tdx_collateral: the dcap-qvl collateral JSON as it is; Intel PCS response
# pairs (TCB info, NUL, QE identity), which the target splits at the NUL;
# and one CBOR collateral (written below).
mkdir -p "$corpus/tdx_collateral" "$corpus/bundle"
n_coll=0
for j in tdx/dcap-qvl/tdx_quote_collateral.json tdx/dcap-qvl/tdx_quote_outdated_collateral.json \
    tdx/dcap-qvl/sgx_quote_collateral.json; do
    need "$vectors/$j"
    put "$corpus/tdx_collateral/$(tr '/' '-' <<<"$j")" "$vectors/$j"
    n_coll=$((n_coll + 1))
done
# name                 TCB info response                          QE identity response
pairs=(
    "gtg-spr-e4          tdx/go-tdx-guest/sample_tcbInfo_response    tdx/go-tdx-guest/sample_qeIdentity_response"
    "gtg-v5              tdx/go-tdx-guest/sample_tcbinfo_response_v5 tdx/go-tdx-guest/sample_qeIdentity_response"
    "trustee-gnr         tdx/trustee-gnr/tcbInfo.json                tdx/trustee-gnr/enclaveIdentity.json"
)
for line in "${pairs[@]}"; do
    read -r name tcb qe <<<"$line"
    need "$vectors/$tcb"
    need "$vectors/$qe"
    rm -f "$corpus/tdx_collateral/pcs-$name"
    { cat "$vectors/$tcb"; printf '\0'; cat "$vectors/$qe"; } >"$corpus/tdx_collateral/pcs-$name"
    n_coll=$((n_coll + 1))
done

# CBOR (RFC 8949), written with printf: enough of it for maps with text keys,
# text and byte strings and small unsigned integers.
# cbor_head MAJOR LENGTH: the head of an item of major type MAJOR.
cbor_head() {
    local m=$(($1 << 5)) n=$2
    if ((n < 24)); then
        printf "\\x$(printf %02x $((m | n)))"
    elif ((n < 0x100)); then
        printf "\\x$(printf %02x $((m | 24)))\\x$(printf %02x "$n")"
    elif ((n < 0x10000)); then
        printf "\\x$(printf %02x $((m | 25)))\\x$(printf %02x $((n >> 8)))\\x$(printf %02x $((n & 255)))"
    else
        printf "\\x$(printf %02x $((m | 26)))"
        printf "\\x$(printf %02x $((n >> 24 & 255)))\\x$(printf %02x $((n >> 16 & 255)))"
        printf "\\x$(printf %02x $((n >> 8 & 255)))\\x$(printf %02x $((n & 255)))"
    fi
}
cbor_map() { cbor_head 5 "$1"; }                     # a map of N pairs follows
cbor_uint() { cbor_head 0 "$1"; }
cbor_text() { cbor_head 3 "${#1}"; printf '%s' "$1"; } # ASCII text
cbor_text_file() { cbor_head 3 "$(wc -c <"$1")"; cat "$1"; }
cbor_bytes_file() { cbor_head 2 "$(wc -c <"$1")"; cat "$1"; }
cbor_zeros() { cbor_head 2 "$1"; head -c "$1" /dev/zero; } # N zero bytes
# The CBOR collateral: real chains and CRLs; whole PCS responses stand in
# for the signed members (the decoder reads them as text, nothing more).
gtg="$vectors/tdx/go-tdx-guest"
for f in tcb_info_issuer_chain.pem pck_crl_issuer_chain.pem sample_tcbInfo_response \
    sample_qeIdentity_response rootcrl.der pckcrl; do
    need "$gtg/$f"
done
collateral_cbor() {
    cbor_map 9
    cbor_text pck_crl_issuer_chain; cbor_text_file "$gtg/pck_crl_issuer_chain.pem"
    cbor_text tcb_info_issuer_chain; cbor_text_file "$gtg/tcb_info_issuer_chain.pem"
    cbor_text tcb_info; cbor_text_file "$gtg/sample_tcbInfo_response"
    cbor_text tcb_info_signature; cbor_zeros 64
    cbor_text qe_identity_issuer_chain; cbor_text_file "$gtg/tcb_info_issuer_chain.pem"
    cbor_text qe_identity; cbor_text_file "$gtg/sample_qeIdentity_response"
    cbor_text qe_identity_signature; cbor_zeros 64
    cbor_text root_ca_crl; cbor_bytes_file "$gtg/rootcrl.der"
    cbor_text pck_crl; cbor_bytes_file "$gtg/pckcrl"
}
rm -f "$corpus/tdx_collateral/collateral.cbor"
collateral_cbor >"$corpus/tdx_collateral/collateral.cbor"
n_coll=$((n_coll + 1))

# bundle: claims, and bundles around real SNP and TDX evidence.
claims_cbor() {
    cbor_map 7
    cbor_text hpke_public_key; cbor_zeros 32
    cbor_text receipt_public_key; cbor_zeros 65
    cbor_text image_id; cbor_text "cocoon-image-2026.11"
    cbor_text model_digests; cbor_head 4 1
    cbor_map 2; cbor_text name; cbor_text minilm; cbor_text sha256; cbor_zeros 32
    cbor_text config_digest; cbor_zeros 32
    cbor_text epoch; cbor_uint 7
    cbor_text client_nonce; cbor_zeros 16
}
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
claims_cbor >"$tmp"
put "$corpus/bundle/claims.cbor" "$tmp"
need "$snp/genoa-v5-oak/report.bin"
need "$snp/genoa-v5-oak/vcek.der"
need "$snp/amd-roots/ask_ark_genoa.pem"
need "$vectors/tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat"
rm -f "$corpus/bundle/snp-genoa-v5-oak.cbor" "$corpus/bundle/tdx-gtg-spr-e4.cbor"
{
    cbor_map 3
    cbor_text version; cbor_uint 1
    cbor_text platform; cbor_map 4
    cbor_text type; cbor_text snp
    cbor_text report; cbor_bytes_file "$snp/genoa-v5-oak/report.bin"
    cbor_text vek; cbor_bytes_file "$snp/genoa-v5-oak/vcek.der"
    cbor_text chain; cbor_bytes_file "$snp/amd-roots/ask_ark_genoa.pem"
    cbor_text claims; cbor_bytes_file "$tmp"
} >"$corpus/bundle/snp-genoa-v5-oak.cbor"
{
    cbor_map 3
    cbor_text version; cbor_uint 1
    cbor_text platform; cbor_map 3
    cbor_text type; cbor_text tdx
    cbor_text quote; cbor_bytes_file "$vectors/tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat"
    cbor_text collateral; collateral_cbor
    cbor_text claims; cbor_bytes_file "$tmp"
} >"$corpus/bundle/tdx-gtg-spr-e4.cbor"
n_bundle=3

# The protocol targets need no vectors: their seeds are written here.
ptmp="$(mktemp -d)"
trap 'rm -f "$tmp"; rm -rf "$ptmp"' EXIT
mkdir -p "$corpus/frame_decoder" "$corpus/sealed_request" "$corpus/receipt"
# frame HEADER: length (u32 BE), stream id (u32 BE), type (u8); then the payload.
frame() { # frame STREAM TYPE PAYLOAD_TEXT
    local n=${#3}
    printf "\\x$(printf %02x $((n >> 24 & 255)))\\x$(printf %02x $((n >> 16 & 255)))\\x$(printf %02x $((n >> 8 & 255)))\\x$(printf %02x $((n & 255)))"
    printf "\\x00\\x00\\x00\\x$(printf %02x "$1")\\x$(printf %02x "$2")"
    printf '%s' "$3"
}
frames() {
    frame 0 6 ""                     # evidence request
    frame 1 1 "sealed request bytes" # request
    frame 1 2 "chunk 0"              # response chunk
    frame 1 3 "receipt"              # receipt
    frame 2 5 ""                     # cancel
    frame 3 4 "model busy"           # error
}
# First byte: (bit 4: 256-byte decoder limit) | (push size - 1, 0 = all at once).
{ printf '\x00'; frames; } >"$corpus/frame_decoder/all-types-whole"
{ printf '\x02'; frames; } >"$corpus/frame_decoder/all-types-3-byte-pushes"
{ printf '\x10'; frames; printf '\x00\x00\x01\x01\x00\x00\x00\x01\x02'; } >"$corpus/frame_decoder/over-small-limit"
{ printf '\x00'; frame 1 1 "x"; printf '\x00\x10\x00\x01\x00\x00\x00\x01\x01'; } >"$corpus/frame_decoder/oversize-header"
{ printf '\x00'; frame 1 99 "unknown type"; } >"$corpus/frame_decoder/unknown-type"
{ printf '\x00'; frame 1 2 "cut"; printf '\x00\x00'; } >"$corpus/frame_decoder/truncated"
# Billing metadata and a sealed request around it (enc and ciphertext are
# zeros: the decoder does not look inside them).
{
    cbor_map 6
    cbor_text model; cbor_text minilm
    cbor_text max_tokens; cbor_uint 256
    cbor_text price_quote_id; cbor_text quote-17
    cbor_text unit_price; cbor_map 3; cbor_text prompt; cbor_uint 100; cbor_text cached; cbor_uint 25; cbor_text completion; cbor_uint 300
    cbor_text multiplier_milli; cbor_uint 1000
    cbor_text client_account; cbor_zeros 32
} >"$ptmp/meta"
cp "$ptmp/meta" "$corpus/sealed_request/billing-meta"
{
    cbor_map 3
    cbor_text enc; cbor_zeros 32
    cbor_text meta; cbor_bytes_file "$ptmp/meta"
    cbor_text ciphertext; cbor_zeros 48
} >"$corpus/sealed_request/sealed-request"
# A receipt payload, and a COSE_Sign1 (tag 18) around it with an ES256
# protected header and a zero signature.
{
    cbor_map 11
    cbor_text request_id; cbor_zeros 32
    cbor_text model; cbor_text minilm
    cbor_text prompt_tokens; cbor_uint 12
    cbor_text cached_tokens; cbor_uint 2
    cbor_text completion_tokens; cbor_uint 30
    cbor_text total_tokens; cbor_uint 42
    cbor_text unit_price; cbor_map 3; cbor_text prompt; cbor_uint 100; cbor_text cached; cbor_uint 25; cbor_text completion; cbor_uint 300
    cbor_text multiplier_milli; cbor_uint 1000
    cbor_text time; cbor_uint 1795000000
    cbor_text enclave_seq; cbor_uint 7
    cbor_text client_account; cbor_zeros 32
} >"$ptmp/payload"
cp "$ptmp/payload" "$corpus/receipt/payload"
printf '\xa1\x01\x26' >"$ptmp/protected"
{
    cbor_head 6 18; cbor_head 4 4
    cbor_bytes_file "$ptmp/protected"
    cbor_map 0
    cbor_bytes_file "$ptmp/payload"
    cbor_zeros 64
} >"$corpus/receipt/cose-sign1-zero-signature"
# Plaintext messages (request bodies, response events) and host API bodies.
mkdir -p "$corpus/message" "$corpus/api"
{
    cbor_map 2
    cbor_text kind; cbor_text chat
    cbor_text messages; cbor_head 4 1
    cbor_map 2; cbor_text role; cbor_text user; cbor_text content; cbor_text "hello"
} >"$corpus/message/chat-request"
{
    cbor_map 2
    cbor_text kind; cbor_text embeddings
    cbor_text inputs; cbor_head 4 2; cbor_text a; cbor_text "b c"
} >"$corpus/message/embeddings-request"
{
    cbor_map 3
    cbor_text kind; cbor_text chat
    cbor_text messages; cbor_head 4 1
    cbor_map 2; cbor_text role; cbor_text user; cbor_text content; cbor_text "hello"
    cbor_text sampling; cbor_map 9
    cbor_text temperature; cbor_uint 700
    cbor_text top_p; cbor_uint 900
    cbor_text seed; cbor_uint 7
    cbor_text stop; cbor_head 4 1; cbor_text END
    cbor_text presence_penalty; cbor_head 1 499 # -500
    cbor_text frequency_penalty; cbor_uint 250
    cbor_text logit_bias; cbor_head 4 1; cbor_head 4 2; cbor_uint 5; cbor_head 1 999 # [[5, -1000]]
    cbor_text logprobs; printf '\xf5'
    cbor_text top_logprobs; cbor_uint 2
} >"$corpus/message/chat-request-sampling"
{ cbor_map 1; cbor_text text; cbor_text "piece"; } >"$corpus/message/text-event"
{
    cbor_map 1; cbor_text logprobs
    cbor_map 3; cbor_text token; cbor_head 2 2; printf hi
    cbor_text logprob; cbor_head 1 249999 # -0.25
    cbor_text top; cbor_head 4 1
    cbor_map 2; cbor_text token; cbor_head 2 1; printf '\xe2'
    cbor_text logprob; cbor_head 1 1999999
} >"$corpus/message/logprobs-event"
{
    cbor_map 1; cbor_text embedding
    cbor_map 2; cbor_text index; cbor_uint 1; cbor_text vector; cbor_zeros 8
} >"$corpus/message/embedding-event"
{
    cbor_map 1; cbor_text end
    cbor_map 2; cbor_text finish; cbor_text stop
    cbor_text receipt; cbor_bytes_file "$corpus/receipt/cose-sign1-zero-signature"
} >"$corpus/message/end-event"
{
    cbor_map 1; cbor_text end
    cbor_map 4; cbor_text code; cbor_text context_length_exceeded
    cbor_text error; cbor_text "input of 600 tokens is over the model's limit"
    cbor_text finish; cbor_text refused
    cbor_text receipt; cbor_bytes_file "$corpus/receipt/cose-sign1-zero-signature"
} >"$corpus/message/end-refused-event"
{
    cbor_map 1; cbor_text end
    cbor_map 3; cbor_text error; cbor_text "inference failed: device lost"
    cbor_text finish; cbor_text failed
    cbor_text receipt; cbor_bytes_file "$corpus/receipt/cose-sign1-zero-signature"
} >"$corpus/message/end-failed-event"
{ cbor_head 4 2; cbor_zeros 3; cbor_bytes_file "$corpus/bundle/claims.cbor"; } >"$corpus/api/evidence-list"
{
    cbor_head 4 1
    cbor_map 3
    cbor_text ledger_seq; cbor_uint 4
    cbor_text receipt; cbor_bytes_file "$corpus/receipt/cose-sign1-zero-signature"
    cbor_text receipt_public_key; cbor_zeros 65
} >"$corpus/api/receipt-list"
{ printf '\x03'; printf '\x00\x00\x00\x05hello\x00\x00\x00\x00\x00\x00\x00\x03abc'; } >"$corpus/api/chunk-records"
# Settlement: a price table, a sheet around it, an acknowledgement, a tab
# update and a signed authorization (zero signatures: the decoders do not
# check them).
mkdir -p "$corpus/settlement"
price_table() {
    cbor_map 3
    cbor_text models; cbor_map 1; cbor_text minilm
    cbor_map 3; cbor_text prompt; cbor_uint 100; cbor_text cached; cbor_uint 25; cbor_text completion; cbor_uint 300
    cbor_text min_multiplier_milli; cbor_uint 1000
    cbor_text max_multiplier_milli; cbor_uint 3000
}
price_table >"$corpus/settlement/price-table"
{
    cbor_map 6
    cbor_text quote_id; cbor_text q-1
    cbor_text issued_at; cbor_uint 1795000000
    cbor_text valid_until; cbor_uint 1795000060
    cbor_text utilisation_milli; cbor_uint 120
    cbor_text enclaves; cbor_head 4 1
    cbor_map 3; cbor_text evidence_digest; cbor_zeros 32; cbor_text prices; price_table; cbor_text multiplier_milli; cbor_uint 1000
    cbor_text settlement; printf '\xf6'
} >"$corpus/settlement/price-sheet"
head -c 128 /dev/zero | tr '\0' '\7' >"$corpus/settlement/ack-two"
{ printf 'CCT1'; head -c 112 /dev/zero; } >"$corpus/settlement/tab-update-one"
{ printf 'CCA1'; head -c 65 /dev/zero; printf '\x02'; head -c 32 /dev/zero | tr '\0' '\1'; head -c 72 /dev/zero; } >"$corpus/settlement/authorization"
# OCSP responses (RFC 6960) about NVIDIA's Device Identity CA: shaped like
# real ones (right CertID and ResponderID), but signed by a test key, so the
# target must reject them at the signature. Written by the verifier's OCSP
# test PKI code; plus a tryLater and a bare successful status.
mkdir -p "$corpus/ocsp"
hex_bytes() { # hex_bytes HEX: the bytes it spells (whitespace ignored)
    local h i
    h="$(printf '%s' "$1" | tr -d ' \n')"
    for ((i = 0; i < ${#h}; i += 2)); do printf "\\x${h:i:2}"; done
}
hex_bytes "
308201950a0100a082018e3082018a06092b06010505073001010482017b308201773081fea1373035312230200603550403
0c194e564944494120446576696365204964656e74697479204341310f300d060355040a0c064e5649444941180f32303235
313030313037303030305a3081b13081ae308185300d0609608648016503040202050004304136e1670d50cca9ec47097e7a
edbf9eeea0870b9d2824160e179ddfe0dfaa32dae76e1cc1ced67320042471685e01d80430caf2995c609f0c5f443308d6c9
b5ca90138c3adee0f0c7076cec3fed65c1b6c2c7b7dc8425843e799af7b07dcbaeba5202102d3670b1ca100411c1fec0e82a
065b548000180f32303235313030313037303030305aa011180f32303235313030323038303030305a300a06082a8648ce3d
04030303680030650230151d2f21479158a39bd75cfa32707f651bb3a313bb030e0dd9188bdfe96b9512e15aa8e075cdec0e
19b610db33cfa5830231008c00b84eff5b95bf6f5cdd5e6f2f8841435d352957e97cec4e8412d6fcac558550e67d0de0293b
57165fe386e9a3f617
" >"$corpus/ocsp/good-by-issuer-forged"
hex_bytes "
3082037b0a0100a08203743082037006092b0601050507300101048203613082035d3081e0a1163014311230100603550403
0c09526573706f6e646572180f32303235313030313037303030305a3081b43081b1308185300d0609608648016503040202
050004304136e1670d50cca9ec47097e7aedbf9eeea0870b9d2824160e179ddfe0dfaa32dae76e1cc1ced67320042471685e
01d80430caf2995c609f0c5f443308d6c9b5ca90138c3adee0f0c7076cec3fed65c1b6c2c7b7dc8425843e799af7b07dcbae
ba5202102d3670b1ca100411c1fec0e82a065b54a116180f32303235303933303038303030305aa0030a0106180f32303235
313030313037303030305a300a06082a8648ce3d04030303670030640230618b757accd77cf6e41a87d841d2c733eea0cfad
e0452229f5d77c347b9a167b0f6303d7c94e0d3933fa16bec910579d02305f39aaa57c1564a7c3662812076df83014cdd7e4
f1c27fd5f0e14ddb793074702d028f46f0879babd438295adebce0eba0820201308201fd308201f93082017fa00302010202
0103300a06082a8648ce3d0403033041311b3019060355040a0c124e564944494120436f72706f726174696f6e3122302006
035504030c194e564944494120446576696365204964656e74697479204341301e170d3235303933303038303030305a170d
3235313033313038303030305a30143112301006035504030c09526573706f6e6465723076301006072a8648ce3d02010605
2b81040022036200043ae4c40a7b1506027070b9038b92e2a36c4285474a81a86f5d254d5367607722b8a2c9c9de81ca4cc2
6732c0e6a19467e92f6f2711b2872ee7a58aa7e49bfd9d04fab7c94ebfc42551453b05275875391d4c6694226016fd744777
4aeeba7837a3783076301d0603551d0e041604146602a9d3af2b1b537b5028ecf6ad846b4886303c301f0603551d23041830
1680146602a9d3af2b1b537b5028ecf6ad846b4886303c300c0603551d130101ff04023000300e0603551d0f0101ff040403
0206c030160603551d250101ff040c300a06082b06010505070309300a06082a8648ce3d0403030368003065023048058c92
3a2f5df831c79bb58480620534df5dae156d9c8f6bbda62cd8db72140fe0a79a74fc70bdadeff4f46708b49002310080d8ba
9fd69d14e1bafcc3ef9dda8b02220d4c8072a05dbebeca665656ac637e0482d2773355118b00e93e199d77d837
" >"$corpus/ocsp/on-hold-by-delegated-responder-forged"
hex_bytes "3003 0a01 03" >"$corpus/ocsp/try-later"
hex_bytes "3003 0a01 00" >"$corpus/ocsp/successful-without-bytes"
# local_auth: Host and Authorization header values and token-file text.
mkdir -p "$corpus/local_auth"
printf '127.0.0.1:8088' >"$corpus/local_auth/host-loopback"
printf '[::1]:8088' >"$corpus/local_auth/host-ipv6"
printf 'rebound.example:8088' >"$corpus/local_auth/host-foreign"
printf 'Bearer cocoon-local-%s' "$(head -c 64 /dev/zero | tr '\0' 'a')" >"$corpus/local_auth/bearer"
printf 'Basic dXNlcjpwYXNz' >"$corpus/local_auth/basic"
printf 'cocoon-admin-%s\n' "$(head -c 64 /dev/zero | tr '\0' '0')" >"$corpus/local_auth/token-file"
# provider_settings: a provider's settings file and its canonical CBOR.
mkdir -p "$corpus/provider_settings"
printf 'payment_contract = "0:%s"\nmax_concurrent = 8\n[prices.smollm2-135m-instruct]\nprompt = 20\ncompletion = 60\n' "$(head -c 64 /dev/zero | tr '\0' 'a')" >"$corpus/provider_settings/toml"
hex_bytes "a1 66 707269636573 a1 61 6d a3 66 70726f6d7074 01 66 636163686564 01 6a 636f6d706c6574696f6e 02" >"$corpus/provider_settings/cbor"
# release_manifest: a canonical manifest with one measurement per platform
# (the layout protocol/src/release.rs documents).
mkdir -p "$corpus/release_manifest"
rep() { local out="" i; for ((i = 0; i < $2; i++)); do out+="$1"; done; printf '%s' "$out"; }
h32="$(rep ab 32)"
printf '{"version":1,"release":"cocoon-guest-0.2.0","kernel_sha256":"%s","initrd_sha256":"%s","cmdline":"console=ttyS0 -- --verity-root %s","disk_verity_root":"%s","models":[{"name":"smollm2-135m-instruct","version":"0.1.2","sha256":"%s","tokenizer_sha256":"%s"}],"prices_from":"provider","price_bounds":{"smollm2-135m-instruct":{"prompt":[1,100000],"completion":[1,300000]}},"max_request_lifetime_secs":600,"min_tcb":{"snp":{"fmc":null,"bootloader":10,"tee":0,"snp":23,"microcode":213},"tdx":{"tee_tcb_svn":"%s"}},"measurements":[{"platform":"snp","vcpus":2,"values":{"launch_measurement":"%s"}},{"platform":"tdx","vcpus":2,"memory_mib":2048,"values":{"mrtd":"%s","rtmr0":"%s","rtmr1":"%s","rtmr2":"%s"}},{"platform":"simulated","vcpus":1,"values":{"measurement":"%s"}}]}' \
    "$h32" "$h32" "$h32" "$h32" "$h32" "$h32" "$(rep 02 16)" "$(rep 5a 48)" "$(rep 11 48)" "$(rep 22 48)" "$(rep 33 48)" "$(rep 44 48)" "$(rep ee 48)" \
    >"$corpus/release_manifest/three-platforms"
echo "fuzz/seed.sh: protocol seeds: $(seeds frame_decoder sealed_request receipt message api local_auth settlement ocsp provider_settings release_manifest) files (in fuzz/corpus/)"

# spdm_report: each NVIDIA report (hex text decoded to bytes) followed by its
# PEM chain; one hex-text report as it is.
mkdir -p "$corpus/spdm_report" "$corpus/gpu_evidence"
nv="$vectors/nvidia"
unhex() { local h; h="$(tr -d ' \r\n' <"$1" | sed 's/../\\x&/g')"; printf "$h"; }
for pair in "h100-nvtrust-sample/hopperAttestationReport.txt h100-nvtrust-sample/hopperCertChain.txt" \
    "h100-535-vbios-rim/hopperAttestationReport.txt h100-535-vbios-rim/hopperCertChain.txt" \
    "nvswitch-ls10/switchAttestationReport.txt nvswitch-ls10/switchCertChain.txt" \
    "negative/hopperAttestationReportInvalidSignature.txt negative/hopperCertChainExpired.txt"; do
    read -r report chain <<<"$pair"
    need "$nv/$report"
    need "$nv/$chain"
    rm -f "$corpus/spdm_report/$(tr '/' '-' <<<"$report")"
    { unhex "$nv/$report"; cat "$nv/$chain"; } >"$corpus/spdm_report/$(tr '/' '-' <<<"$report")"
done
put "$corpus/spdm_report/hex-text" "$nv/h100-nvtrust-sample/hopperAttestationReport.txt"
# The driver's buffer: a report zero-filled after its signature, then its chain.
{ unhex "$nv/h100-nvtrust-sample/hopperAttestationReport.txt"; head -c 1024 /dev/zero
    cat "$nv/h100-nvtrust-sample/hopperCertChain.txt"; } >"$corpus/spdm_report/zero-padded"
# gpu_evidence: a CBOR evidence set around one real report and chain.
rm -f "$corpus/gpu_evidence/one-h100.cbor"
unhex "$nv/h100-nvtrust-sample/hopperAttestationReport.txt" >"$tmp"
{
    cbor_map 4
    cbor_text nonce; cbor_zeros 32
    cbor_text cc_enabled; printf '\xf5'
    cbor_text devtools; printf '\xf4'
    cbor_text devices; cbor_head 4 1
    cbor_map 2; cbor_text report; cbor_bytes_file "$tmp"
    cbor_text cert_chain; cbor_bytes_file "$nv/h100-nvtrust-sample/hopperCertChain.txt"
} >"$corpus/gpu_evidence/one-h100.cbor"
# rim: every RIM in the vectors.
mkdir -p "$corpus/rim"
for r in rim/NV_GPU_DRIVER_GH100_550.144.03.xml h100-535-vbios-rim/1010_0200_882_96005E0001_PROD.swidtag \
    h100-535-vbios-rim/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml \
    nvswitch-ls10/switchVBIOSRim_NV_SWITCH_BIOS_5612_0002_890_9610550001.xml \
    negative/incorrect_signature_driver_rim.xml negative/incorrect_cert_chain_driver_rim.xml; do
    need "$nv/$r"
    put "$corpus/rim/$(tr '/' '-' <<<"$r")" "$nv/$r"
done
echo "fuzz/seed.sh: NVIDIA seeds: $(seeds spdm_report gpu_evidence rim) files (in fuzz/corpus/)"

# snp_cert_table: certificate tables (GHCB "SNP Extended Guest Request") as a
# host hands them to its guest: 24-byte entries (GUID in RFC 4122 byte order,
# offset u32 LE, length u32 LE), an all-zero terminator, then the DER
# certificates; one padded to 16 KiB as the Linux driver hands it out.
mkdir -p "$corpus/snp_cert_table"
le32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }
guid() { hex_bytes "$(tr -d '-' <<<"$1")"; }
pem_der() { # pem_der FILE N: the DER of the Nth (from 1) certificate in FILE
    awk -v n="$2" '/-----BEGIN CERTIFICATE-----/{i++; next} /-----END CERTIFICATE-----/{next} i==n' "$1" |
        tr -d ' \r\n' | base64 -d
}
cert_table() { # cert_table OUT (GUID FILE)...: a table naming each FILE
    local out="$1"
    shift
    local n=$(($# / 2)) offset args=("$@") i
    offset=$(((n + 1) * 24))
    rm -f "$out"
    {
        for ((i = 0; i < ${#args[@]}; i += 2)); do
            local size
            size=$(wc -c <"${args[i + 1]}")
            guid "${args[i]}"
            printf "$(le32 "$offset")$(le32 "$size")"
            offset=$((offset + size))
        done
        head -c 24 /dev/zero
        for ((i = 1; i < ${#args[@]}; i += 2)); do cat "${args[i]}"; done
    } >"$out"
}
VCEK=63da758d-e664-4564-adc5-f4b93be8accd VLEK=a8074bc2-a25a-483e-aae6-39c045a0b8a1
ASK=4ab7b379-bbac-4fe4-a02f-05aef327c782 ARK=c0b406a4-a803-4952-9743-3fb6014cd0ae
pem_der "$snp/amd-roots/ask_ark_milan.pem" 1 >"$ptmp/ask.der"
pem_der "$snp/amd-roots/ask_ark_milan.pem" 2 >"$ptmp/ark.der"
pem_der "$snp/amd-roots/ask_ark_milan_vlek.pem" 1 >"$ptmp/asvk.der"
cert_table "$corpus/snp_cert_table/milan-vcek-ask-ark" \
    "$VCEK" "$snp/milan-v2-gsg/vcek.der" "$ASK" "$ptmp/ask.der" "$ARK" "$ptmp/ark.der"
cert_table "$ptmp/padded" "$VCEK" "$snp/genoa-v5-oak/vcek.der"
{ cat "$ptmp/padded"; head -c $((16384 - $(wc -c <"$ptmp/padded"))) /dev/zero; } >"$ptmp/padded16k"
put "$corpus/snp_cert_table/genoa-vcek-only-16k" "$ptmp/padded16k"
cert_table "$corpus/snp_cert_table/milan-vlek-asvk-ark" \
    "$ASK" "$ptmp/asvk.der" "$VLEK" "$snp/milan-v3-vlek-trustee/vlek.der" "$ARK" "$ptmp/ark.der"
head -c 24 /dev/zero >"$corpus/snp_cert_table/empty"
echo "fuzz/seed.sh: $(seeds snp_cert_table) files (in fuzz/corpus/)"

# initramfs: small newc archives like the guest image's (a directory, an
# executable, a device node, a symlink, then the trailer and block padding).
mkdir -p "$corpus/initramfs"
python3 - "$corpus/initramfs" <<'PY'
import sys
def hdr(ino, mode, size, name, rdev=(0, 0)):
    f = [ino, mode, 0, 0, 2 if mode >> 12 == 4 else 1, 1795392000, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    h = b"070701" + b"".join(b"%08X" % v for v in f) + name.encode() + b"\0"
    return h + b"\0" * (-len(h) % 4)
def archive(entries):
    out = b""
    for i, (mode, name, data, rdev) in enumerate(entries, 1):
        out += hdr(i, mode, len(data), name, rdev) + data + b"\0" * (-len(data) % 4)
    out += hdr(0, 0, 0, "TRAILER!!!")
    return out + b"\0" * (-len(out) % 512)
d = sys.argv[1]
open(d + "/image", "wb").write(archive([
    (0o40755, "dev", b"", (0, 0)), (0o20600, "dev/console", b"", (5, 1)),
    (0o40755, "etc", b"", (0, 0)), (0o100644, "etc/enclave.toml", b'listen = "vsock:5000"\n', (0, 0)),
    (0o100755, "init", b"\x7fELF" + b"\0" * 60, (0, 0)), (0o120777, "lib64", b"lib", (0, 0))]))
open(d + "/empty", "wb").write(archive([]))
PY
echo "fuzz/seed.sh: $(seeds initramfs) files (in fuzz/corpus/)"

# mux_billing: move programs (fuzz/src/mux.rs): an honest request from open
# to tab; the same with a duplicated acknowledgement, a replay and a cut.
mkdir -p "$corpus/mux_billing"
python3 - "$corpus/mux_billing" <<'PY'
import sys
d = sys.argv[1]
OPEN, TO_ENCLAVE, TO_HOST, TIME, LEDGER = (0, 0), (8, 0), (10, 0), (4, 5), (19, 0)
CHUNK, FINISH = (5, 0, 0), (5, 0, 2)
honest = [OPEN, TO_ENCLAVE, CHUNK, FINISH, TO_HOST, TO_HOST, TO_HOST, LEDGER, TIME, TO_ENCLAVE, TO_HOST]
rough = [OPEN, OPEN, TO_ENCLAVE, TO_ENCLAVE, CHUNK, (5, 1, 2), FINISH, TO_HOST, TO_HOST, (13, 1),
         TO_HOST, TO_HOST, LEDGER, TO_HOST, LEDGER, TIME, (13, 0), TO_ENCLAVE, TO_ENCLAVE, (15, 3), TO_ENCLAVE,
         (18, 8), TO_ENCLAVE, TO_HOST, (2, 0), (3, 1), TO_ENCLAVE, TO_HOST]
for name, prog in (("honest", honest), ("rough", rough)):
    open(f"{d}/{name}", "wb").write(bytes(b for move in prog for b in move))
PY
echo "fuzz/seed.sh: $(seeds mux_billing) files (in fuzz/corpus/)"

echo "fuzz/seed.sh: seeded from $vectors: snp_report $n_report, snp_verify $n_verify, certificates $n_cert, tdx_quote $n_tdx, tdx_collateral $n_coll, bundle $n_bundle files (in fuzz/corpus/)"

# ton_boc: bags of cells as a chain API returns them (written by @ton/core
# 0.63.1): a dictionary of uint32 → uint16 (three entries), a cell with an
# address, coins and that dictionary (with index and CRC), the payment
# contract's claim body header, and two addresses in text.
mkdir -p "$corpus/ton_boc"
hex_bytes "b5ee9c724101050100190002012001040202dd0203000550007800054000880006df0009d27d8209" >"$corpus/ton_boc/dict-u32"
hex_bytes "b5ee9c72c1010601004000272c31363b4001472000888888888888888888888888888888888888888888888888888888888888888882e00102012002050202dd0304000550007800054000880006df0009b52a782d" >"$corpus/ton_boc/fields-indexed"
hex_bytes "b5ee9c72410102010008000201c001010002ab0974d146" >"$corpus/ton_boc/shared-leaf"
hex_bytes "b5ee9c72410101010013000021c0c0a003000000000000000143b9aca008141e1e89" >"$corpus/ton_boc/withdraw-body"
printf 'EQCD39VS5jcptHL8vMjEXrzGaRcCVYto7HUn4bpAOg8xqB2N' >"$corpus/ton_boc/address-friendly"
printf '0:83dfd552e63729b472fcbcc8c45ebcc6691702558b68ec7527e1ba403a0f31a8' >"$corpus/ton_boc/address-raw"
# A transaction the sandbox chain wrote (a transfer to an account without code).
printf '%s' "te6cckECBQEAAQsAA694Pf1VLmNym0cvy8yMRevMZpFwJVi2jsdSfhukA6DzGoAAAAAAAtxsAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaxbCdgAAAIAQMEAQGgAgCzSAGCV0EWWeL6lAKu7Vp9FlcSOdwsQ/TFCOSXh/WA2kt5ZwAg9/VUuY3KbRy/LzIxF68xmkXAlWLaOx1J+G6QDoPMahQEqBfIAAYII1oAAAAAAD0JAtYthOxAAIJy6y3KPnqFoMsD+BMVP0+dCDM3212rKqBuoCoEQAFgIxYpQvxRlfS+wk6JVM/UmG0oc/ayk4AIJn+CzwM2dKn4+gARDAlASoF8gAEgKmxUpQ==" | base64 -d >"$corpus/ton_boc/transaction-transfer"
echo "fuzz/seed.sh: $(seeds ton_boc) files (in fuzz/corpus/)"

# registry_results: get-method results of the registry in @ton/sandbox
# (contracts/scripts/registry-fixtures.mjs): the releases dictionary (one
# active, one revoked), the providers dictionary (three), an address slice,
# and an endpoint of two cells.
mkdir -p "$corpus/registry_results"
hex_bytes "b5ee9c724101090100bc0002016201030153bf6020202020202020202020202020202020202020202020202020202020202021357ec365357ec36a60020045a0084848484848484848484848484848484848484848484848484848484848484840500153bf6262626262626262626262626262626262626262626262626262626262626262b57ec36000000000600402012005060005dffff002012007080044bfa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1010005ffc0501b14e825" >"$corpus/registry_results/releases"
hex_bytes "b5ee9c724102090100022b000201200103019ebfc8ede3ab94a42d9336f4c3808655b340c1c92cbca3ece327febb90b7cc53b54f4004312a11ad85a155513b22ab7df5ea3f09cd7749e3e6822bc712a5f9067b8b1266afd86de6afd86de459682f0002002e687474703a2f2f31302e312e322e333a383038302f76310201200407019dbf92bb14c37f67ff461a4881855cc056acf0c3cb5de2501f2b6bdd358675dbd054801e3fd1de277f38ef6050f779931059fc4fc109b41c25148c241282ee9cc902f28d5fb0dc6d5fb0dc68b2d05e010501fe68747470733a2f2f78787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878780600f67878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878782e6578616d706c653a343433019dbfa533236520bb1c1d34b2db85982b7edc527e46b59ae9c15e46e5bedfa5aa7542800aa20b74708125e02a2eed9c8774744ab9e50fbd1c017e5db34516137378bc690d5fb0db2d5fb0db28b2d05e0108002268747470733a2f2f612e6578616d706c65408470e6" >"$corpus/registry_results/providers"
hex_bytes "b5ee9c724101010100240000438008751cd89939e14c1d70e115368f5e09b4e9093ebaf574f8f2443b0b064643c630861d11a9" >"$corpus/registry_results/address"
hex_bytes "b5ee9c724101020100ff0001fe68747470733a2f2f78787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878780100f67878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878782e6578616d706c653a34343312d21f48" >"$corpus/registry_results/endpoint"
echo "fuzz/seed.sh: $(seeds registry_results) files (in fuzz/corpus/)"
