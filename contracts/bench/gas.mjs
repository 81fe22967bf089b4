// Gas per payment-contract operation and per settlement, measured in one
// sandbox run, printed as gas units and ratios (no wall-clock times):
//   * deposit, first claim, later claim, provider withdrawal, client
//     withdrawal request and payout;
//   * a claim against one bare P256_CHKSIGNS (measured with a probe contract
//     in the same run);
//   * one claim settling N receipts against verifying the N receipts on
//     chain one by one (per receipt: a signature check and a dictionary
//     update, measured with the probe), N = 1, 100, 10 000;
//   * the fee of a claim in nanoton at the sandbox's basechain gas price.
//
//   node contracts/bench/gas.mjs
import { Blockchain } from '@ton/sandbox';
import { beginCell, contractAddress, toNano, Dictionary } from '@ton/core';
import { compilePaymentContract, compileTolkSource } from '../lib/compile.mjs';
import { buildInitData } from '../lib/storage.mjs';
import { depositBody, claimBody, providerWithdrawBody, clientWithdrawRequestBody, clientWithdrawFinishBody } from '../lib/messages.mjs';
import { generateKey, authCell, tabCell, signP256, ownerSignature } from '../lib/signing.mjs';
import { computeOf } from '../lib/chain.mjs';

// A probe: one message = one P-256 check (op 1), or one check plus one
// dictionary update keyed by a 256-bit hash (op 2), as per-receipt
// verification on chain would need at the least.
const PROBE = `
tolk 1.3

@pure
fun p256Verify(data: slice, signature: slice, publicKey: slice): bool
    asm "P256_CHKSIGNS"

struct ProbeStore {
    seen: map<uint256, uint64>
}

fun onInternalMessage(in: InMessage) {
    var body = in.body;
    val op = body.loadUint(32);
    val data = body.loadRef().beginParse();
    val sig = body.loadRef().beginParse();
    val key = body.loadRef().beginParse();
    assert (p256Verify(data, sig, key)) throw 200;
    if (op == 2) {
        var st = ProbeStore.fromCell(contract.getData());
        st.seen.set(data.bitsHash(), 1);
        contract.setData(st.toCell());
    }
}
`;

async function main() {
  const bc = await Blockchain.create();
  bc.now = 1_795_000_000;
  const provider = await bc.treasury('provider');
  const { code } = await compilePaymentContract();
  const treasury = await bc.treasury('treasury');
  const data = buildInitData({ provider: provider.address, withdrawDelay: 60, treasury: treasury.address, feeBps: 100 });
  const address = contractAddress(0, { code, data });
  const deployer = await bc.treasury('deployer');
  await deployer.send({ to: address, value: toNano('1'), init: { code, data }, body: beginCell().storeUint(0, 32).endCell() });
  const gas = {};
  const run = async (name, from, body, value = toNano('0.2')) => {
    const r = await from.send({ to: address, value, body, bounce: true });
    const c = computeOf(r.transactions, address);
    if (!c.success) throw new Error(`${name}: exit code ${c.exitCode}`);
    gas[name] = c.gasUsed;
  };
  const enclave = generateKey();
  const alice = generateKey();
  const wallet = await bc.treasury('alice');
  const aliceDeposit = depositBody(alice.uncompressed, wallet.address, ownerSignature(alice, { contract: address, owner: wallet.address }));
  await run('deposit (first: owner signature checked)', wallet, aliceDeposit, toNano('5'));
  await run('deposit (top-up)', wallet, aliceDeposit, toNano('1'));
  const auth = authCell(alice, { contract: address, accountId: alice.accountId, enclaveKey: enclave.compressed, cap: toNano('4') });
  await run('claim (first for the pair)', provider, claimBody(auth, tabCell(enclave, { accountId: alice.accountId, count: 10, total: toNano('1') })));
  await run('claim (later tab)', provider, claimBody(auth, tabCell(enclave, { accountId: alice.accountId, count: 10_000, total: toNano('2') })));
  await run('provider withdrawal', provider, providerWithdrawBody(toNano('1')));
  await run('client withdrawal request', wallet, clientWithdrawRequestBody(alice.accountId, toNano('1')));
  bc.now += 60;
  await run('client withdrawal payout', wallet, clientWithdrawFinishBody(alice.accountId));

  // The probe, in the same chain.
  const probeCode = (await compileTolkSource('probe.tolk', PROBE)).code;
  const probeData = beginCell().storeBit(0).endCell();
  const probe = contractAddress(0, { code: probeCode, data: probeData });
  const key = generateKey();
  const msg = Buffer.from('CCT1' + 'x'.repeat(48));
  const probeBody = (op, m) => beginCell().storeUint(op, 32)
    .storeRef(beginCell().storeBuffer(m).endCell())
    .storeRef(beginCell().storeBuffer(signP256(key.privateKey, m)).endCell())
    .storeRef(beginCell().storeBuffer(key.compressed).endCell()).endCell();
  const deployProbe = await deployer.send({ to: probe, value: toNano('1'), init: { code: probeCode, data: probeData }, body: probeBody(1, msg) });
  const probeRun = async (op, m) => {
    const r = await deployer.send({ to: probe, value: toNano('0.2'), body: probeBody(op, m), bounce: true });
    const c = computeOf(r.transactions, probe);
    if (!c.success) throw new Error(`probe: exit ${c.exitCode}`);
    return c.gasUsed;
  };
  computeOf(deployProbe.transactions, probe);
  const bare = await probeRun(1, msg);
  // Per receipt: a check plus a dictionary update (measured with a few
  // entries in the dictionary already).
  let perReceipt = 0n;
  for (let i = 0; i < 4; i++) perReceipt = await probeRun(2, Buffer.from(`CCT1${i}`.padEnd(52, 'y')));

  // Gas prices from the sandbox's config (basechain, param 21).
  const prices = bc.config ? gasPrice(bc) : null;

  const claimGas = gas['claim (later tab)'];
  console.log('payment contract, gas per operation (@ton/sandbox, one run):');
  for (const [k, v] of Object.entries(gas)) console.log(`  ${k.padEnd(28)} ${v}`);
  console.log(`  bare P256_CHKSIGNS probe     ${bare}`);
  console.log(`  probe: check + dict update   ${perReceipt}`);
  console.log('ratios:');
  console.log(`  claim / one bare P-256 check: ${(Number(claimGas) / Number(bare)).toFixed(2)}x (a claim checks two signatures)`);
  for (const n of [1, 100, 10_000]) {
    const onChain = perReceipt * BigInt(n);
    console.log(`  N = ${String(n).padStart(6)} receipts: one claim ${claimGas} gas, one-by-one on chain ${onChain} gas; ratio one-by-one/claim = ${(Number(onChain) / Number(claimGas)).toFixed(2)}`);
  }
  if (prices) {
    const fee = (claimGas * prices.perGasFixed) >> 16n;
    console.log(`  claim fee at the basechain gas price: ${fee} nanoton (${Number(fee) / 1e9} TON); 1 000 000 gas limit per transaction: per-receipt checks cap at ${1_000_000n / perReceipt} receipts per transaction`);
  }
}

// ConfigParam 21 (basechain gas limits and prices; TL-B in block.tlb:
// gas_flat_pfx#d1 flat_gas_limit:uint64 flat_gas_price:uint64 other, then
// gas_prices_ext#de gas_price:uint64 ... or gas_prices#dd gas_price:uint64
// ...), gas_price being nanoton per 65536 gas units.
function gasPrice(bc) {
  const d = Dictionary.loadDirect(Dictionary.Keys.Int(32), Dictionary.Values.Cell(), bc.config);
  const p = d.get(21);
  if (!p) return null;
  const s = p.beginParse();
  let tag = s.loadUint(8);
  if (tag === 0xd1) {
    s.loadUintBig(64);
    s.loadUintBig(64);
    tag = s.loadUint(8);
  }
  if (tag !== 0xde && tag !== 0xdd) return null;
  return { perGasFixed: s.loadUintBig(64) };
}

await main();
