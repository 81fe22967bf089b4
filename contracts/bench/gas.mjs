// Gas per payment-contract operation and per settlement, measured in one
// sandbox run, printed as gas units and ratios (no wall-clock times):
//   * deposit, first claim, later claim, provider withdrawal, client
//     withdrawal request and payout;
//   * a claim against one bare P256_CHKSIGNS (measured with a probe contract
//     in the same run);
//   * one claim settling N receipts against verifying the N receipts on
//     chain one by one (per receipt: a signature check and a dictionary
//     update, measured with the probe), N = 1, 100, 10 000;
//   * the fee of a claim in nanoton at the sandbox's basechain gas price;
//   * the registry: gas per operation, and with 1 000 providers registered
//     the gas of one more registration and the cost of listing them
//     (get_providers' gas and the size of the dictionary it returns).
//
//   node contracts/bench/gas.mjs
import crypto from 'node:crypto';
import { Blockchain } from '@ton/sandbox';
import { beginCell, contractAddress, toNano, Dictionary } from '@ton/core';
import { compilePaymentContract, compileRegistryContract, compileTolkSource } from '../lib/compile.mjs';
import {
  buildRegistryData, addReleaseBody, revokeReleaseBody, setFeeBody, proposeOwnerBody, acceptOwnerBody,
  cancelOwnerTransferBody, registerProviderBody, updateProviderBody, deregisterProviderBody, endpointCell,
  getDictRoot, getProviderEntry,
} from '../lib/registry.mjs';
import { createShardAccount } from '@ton/sandbox';
import { Address } from '@ton/core';
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

// The registry: gas per operation, then the same registry with 1 000
// providers. The 1 000 entries are written into the registry's storage
// directly (the layout of `struct Provider`, checked below by reading one
// back and deregistering it through the contract) rather than sent as 1 000
// registrations, which would only take longer to reach the same state.
async function registryBench() {
  const bc = await Blockchain.create();
  bc.now = 1_795_000_000;
  const owner = await bc.treasury('owner');
  const treasury = await bc.treasury('treasury');
  const { code: paymentCode } = await compilePaymentContract();
  const { code } = await compileRegistryContract();
  const stake = toNano('1');
  const feeBps = 100;
  const data = buildRegistryData({ owner: owner.address, treasury: treasury.address, feeBps, paymentCode, stake });
  const address = contractAddress(0, { code, data });
  await owner.send({ to: address, value: toNano('10'), init: { code, data } });
  const gas = [];
  const run = async (name, from, body, value = toNano('0.2')) => {
    const r = await from.send({ to: address, value, body, bounce: true });
    const c = computeOf(r.transactions, address);
    if (!c.success) throw new Error(`${name}: exit code ${c.exitCode}`);
    gas.push([name, c.gasUsed]);
    return c.gasUsed;
  };
  const paymentOf = (wallet, delay = 3600) => {
    const paymentInit = buildInitData({ provider: wallet.address, withdrawDelay: delay, treasury: treasury.address, feeBps });
    return { paymentInit, payment: contractAddress(0, { code: paymentCode, data: paymentInit }) };
  };
  const digests = (n, b) => Array.from({ length: n }, (_, i) => [Buffer.alloc(32, b + i), 1 + (i % 2)]);
  await run('add release (1 measurement)', owner, addReleaseBody(Buffer.alloc(32, 1), digests(1, 0x10)));
  await run('add release (4 measurements)', owner, addReleaseBody(Buffer.alloc(32, 2), digests(4, 0x20)));
  await run('revoke release', owner, revokeReleaseBody(Buffer.alloc(32, 1)));
  await run('set fee', owner, setFeeBody(feeBps));
  const next = await bc.treasury('next');
  await run('propose owner', owner, proposeOwnerBody(next.address));
  await run('cancel owner transfer', owner, cancelOwnerTransferBody());
  await run('propose owner', owner, proposeOwnerBody(next.address));
  gas.pop();
  await run('accept owner', next, acceptOwnerBody());
  const p1 = await bc.treasury('p1');
  const url = 'https://provider-0001.example.net:8443';
  await run('register provider (first)', p1, registerProviderBody({ endpoint: url, ...paymentOf(p1) }), stake + toNano('0.2'));
  await run('update provider (endpoint)', p1, updateProviderBody({ endpoint: url + '/v1' }));
  await run('update provider (endpoint + payment)', p1, updateProviderBody({ endpoint: url, ...paymentOf(p1, 7200) }));
  await run('deregister provider', p1, deregisterProviderBody());

  // 1 000 providers in storage.
  const N = 1000;
  const providerValue = {
    serialize: (v, b) => b.storeAddress(v.payment).storeRef(v.endpoint).storeUint(v.at, 32).storeUint(v.at, 32).storeCoins(v.stake),
    parse: () => { throw new Error('write only'); },
  };
  const dict = Dictionary.empty(Dictionary.Keys.BigUint(256), providerValue);
  let sampleKey = null;
  for (let i = 0; i < N; i++) {
    const wallet = { address: new Address(0, createHashOf(`provider-${i}`)) };
    const { payment } = paymentOf(wallet);
    const key = BigInt('0x' + wallet.address.hash.toString('hex'));
    if (i === 0) sampleKey = key;
    dict.set(key, { payment, endpoint: endpointCell(`https://provider-${String(i).padStart(4, '0')}.example.net:8443`), at: bc.now, stake });
  }
  const state = (await bc.getContract(address)).accountState;
  const cur = state.state.data.beginParse();
  const ownerNow = cur.loadAddress();
  cur.loadBits(2); // pending owner: none
  const releaseCount = cur.loadUint(32);
  cur.loadUint(32);
  const releases = cur.loadMaybeRef();
  cur.loadMaybeRef();
  const config = cur.loadRef();
  const big = beginCell().storeAddress(ownerNow).storeUint(0, 2).storeUint(releaseCount, 32).storeUint(N, 32)
    .storeMaybeRef(releases).storeDict(dict).storeRef(config).endCell();
  const balance = (await bc.getContract(address)).balance + stake * BigInt(N);
  await bc.setShardAccount(address, createShardAccount({ address, code, data: big, balance }));
  const contract = bc.provider(address);
  if (!(await getProviderEntry(contract, sampleKey))) throw new Error('the written entries do not read back');
  const pN = await bc.treasury('p-one-more');
  const regN = await run(`register provider (${N} registered)`, pN, registerProviderBody({ endpoint: url, ...paymentOf(pN) }), stake + toNano('0.2'));
  await run(`update provider (endpoint, ${N + 1} registered)`, pN, updateProviderBody({ endpoint: url + '/v1' }));
  await run(`deregister provider (${N + 1} registered)`, pN, deregisterProviderBody());
  const list = await getDictRoot(contract, 'get_providers');
  const boc = list.cell.toBoc();
  const one = await contract.get('get_provider', [{ type: 'int', value: sampleKey }]);
  let cells = 0;
  const seen = new Set();
  const walk = (c) => {
    const k = c.hash().toString('hex');
    if (seen.has(k)) return;
    seen.add(k);
    cells++;
    c.refs.forEach(walk);
  };
  walk(list.cell);
  const prices = gasPrice(bc);
  console.log('');
  console.log('registry, gas per operation (@ton/sandbox, one run):');
  console.log('| operation | gas | gas fee at the basechain price (TON) |');
  console.log('|---|---:|---:|');
  for (const [k, v] of gas) {
    const fee = prices ? Number((v * prices.perGasFixed) >> 16n) / 1e9 : NaN;
    console.log(`| ${k} | ${v} | ${fee.toFixed(5)} |`);
  }
  console.log(`| get_provider (${N} registered), get-method | ${one.gasUsed} | (free: a get-method) |`);
  console.log(`| get_providers (${N} registered), get-method | ${list.gasUsed} | (free: a get-method) |`);
  console.log(`listing ${N} providers: get_providers returns one dictionary of ${cells} cells, ${boc.length} bytes as a BOC (${(boc.length / N).toFixed(0)} bytes per provider; base64 in a JSON answer: ${Math.ceil(boc.length / 3) * 4} bytes)`);
  console.log(`one more registration with ${N} registered: ${regN} gas`);
}

function createHashOf(s) {
  return crypto.createHash('sha256').update(s).digest();
}

await main();
await registryBench();
