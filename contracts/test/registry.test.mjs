// The registry contract in @ton/sandbox (no network): releases, providers
// with their payment contracts checked against the payment code, ownership
// transfer, the fee bound, refusals by exit code with nothing changed, value
// handling (stake kept and returned, excess returned) and the events.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Blockchain } from '@ton/sandbox';
import { Address, Cell, beginCell, contractAddress, toNano } from '@ton/core';
import { compilePaymentContract, compileRegistryContract, readBuild } from '../lib/compile.mjs';
import { buildInitData } from '../lib/storage.mjs';
import { computeOf, getNetworkFee, getProvider } from '../lib/chain.mjs';
import {
  EVENT, PLATFORM, REGISTER_GAS, buildRegistryData, addReleaseBody, revokeReleaseBody, setFeeBody,
  proposeOwnerBody, acceptOwnerBody, cancelOwnerTransferBody, registerProviderBody, updateProviderBody,
  deregisterProviderBody, endpointCell, getRegistry, getRelease, getProviderEntry, getDictRoot, eventsOf,
  readMeasurements, endpointBytes,
} from '../lib/registry.mjs';

const STAKE = toNano('1');
const FEE_BPS = 100;
const DELAY = 3600;
let paymentCode;
let registryCode;

before(async () => {
  paymentCode = (await compilePaymentContract()).code;
  registryCode = (await compileRegistryContract()).code;
});

const h = (byte) => Buffer.alloc(32, byte);
const hex = (b) => BigInt('0x' + b.toString('hex'));

async function setup({ feeBps = FEE_BPS, code = paymentCode } = {}) {
  const bc = await Blockchain.create();
  bc.now = 1_795_000_000;
  const owner = await bc.treasury('registry-owner');
  const treasury = await bc.treasury('network-treasury');
  const data = buildRegistryData({ owner: owner.address, treasury: treasury.address, feeBps, paymentCode: code, stake: STAKE });
  const address = contractAddress(0, { code: registryCode, data });
  // An empty body is a plain top-up: it deploys the registry and funds it.
  const r = await owner.send({ to: address, value: toNano('1'), init: { code: registryCode, data } });
  assert.equal(computeOf(r.transactions, address).success, true);
  const contract = bc.provider(address);
  return { bc, owner, treasury, address, contract, feeBps };
}

async function send(env, from, body, value = toNano('0.1')) {
  const r = await from.send({ to: env.address, value, body, bounce: true });
  const c = computeOf(r.transactions, env.address);
  return { ...c, events: eventsOf(r.transactions, env.address), transactions: r.transactions };
}

/** A payment contract for `wallet` at the registry's treasury and fee (overridable). */
function paymentFor(env, wallet, extra = {}) {
  const paymentInit = buildInitData({ provider: wallet.address, withdrawDelay: DELAY, treasury: env.treasury.address, feeBps: env.feeBps, ...extra });
  return { paymentInit, payment: contractAddress(0, { code: paymentCode, data: paymentInit }) };
}

async function register(env, wallet, { endpoint = 'https://provider.example:8443', value = STAKE + toNano('0.1'), ...extra } = {}) {
  return send(env, wallet, registerProviderBody({ endpoint, ...paymentFor(env, wallet, extra) }), value);
}

/** Everything a refusal must leave as it was. */
async function snapshot(env) {
  const info = await getRegistry(env.contract);
  const releases = (await getDictRoot(env.contract, 'get_releases')).cell;
  const providers = (await getDictRoot(env.contract, 'get_providers')).cell;
  return { info: JSON.stringify(info, (k, v) => (typeof v === 'bigint' ? v.toString() : v?.toRawString?.() ?? v)), releases: releases?.hash().toString('hex') ?? null, providers: providers?.hash().toString('hex') ?? null };
}

test('the committed registry build is what the source compiles to', async () => {
  const { code: built, manifest } = readBuild('registry');
  assert.equal(registryCode.hash().toString('hex'), manifest.codeHash);
  assert.ok(built.equals(registryCode));
  // The payment build's recorded depth is what the registry is deployed with.
  assert.equal(readBuild().manifest.codeDepth, paymentCode.depth());
});

test('get_registry: the deployed configuration', async () => {
  const env = await setup();
  const info = await getRegistry(env.contract);
  assert.ok(info.owner.equals(env.owner.address));
  assert.equal(info.pendingOwner, null);
  assert.ok(info.treasury.equals(env.treasury.address));
  assert.equal(info.feeBps, FEE_BPS);
  assert.equal(info.paymentCodeHash, hex(paymentCode.hash()));
  assert.equal(info.paymentCodeDepth, paymentCode.depth());
  assert.equal(info.stake, STAKE);
  assert.equal(info.releaseCount, 0);
  assert.equal(info.providerCount, 0);
  assert.equal((await getDictRoot(env.contract, 'get_releases')).cell, null);
  assert.equal((await getDictRoot(env.contract, 'get_providers')).cell, null);
  assert.equal(await getRelease(env.contract, h(1)), null);
  assert.equal(await getProviderEntry(env.contract, h(1)), null);
});

test('releases: the owner adds and revokes; duplicates, unknown and repeated revocations refused', async () => {
  const env = await setup();
  const measurements = [[h(0xa1), PLATFORM.SNP], [h(0xa2), PLATFORM.TDX], [h(0xa3), PLATFORM.SIMULATED]];
  const add = await send(env, env.owner, addReleaseBody(h(7), measurements, 11n));
  assert.equal(add.success, true, `exit ${add.exitCode}`);
  assert.deepEqual(add.events, [{ op: EVENT.RELEASE_ADDED, queryId: 11n, manifestHash: hex(h(7)) }]);
  let r = await getRelease(env.contract, h(7));
  assert.deepEqual(r, {
    status: 1, addedAt: env.bc.now, revokedAt: 0,
    measurements: measurements.map(([d, p]) => [d.toString('hex'), p]),
  });
  assert.equal((await getRegistry(env.contract)).releaseCount, 1);
  // The dict get_releases returns holds the same value.
  const { cell } = await getDictRoot(env.contract, 'get_releases');
  const { Dictionary } = await import('@ton/core');
  const asRelease = {
    serialize: () => { throw new Error('read only'); },
    parse: (v) => ({ status: v.loadUint(2), addedAt: v.loadUint(32), revokedAt: v.loadUint(32), measurements: readMeasurements(v.loadMaybeRef()) }),
  };
  const all = Dictionary.loadDirect(Dictionary.Keys.BigUint(256), asRelease, cell);
  assert.deepEqual([...all], [[hex(h(7)), r]]);

  const s0 = await snapshot(env);
  const stranger = await env.bc.treasury('stranger');
  for (const [what, from, body, code] of [
    ['add by a stranger', stranger, addReleaseBody(h(8), measurements), 201],
    ['revoke by a stranger', stranger, revokeReleaseBody(h(7)), 201],
    ['add twice', env.owner, addReleaseBody(h(7), measurements), 204],
    ['revoke unknown', env.owner, revokeReleaseBody(h(9)), 205],
    ['no measurements', env.owner, addReleaseBody(h(8), []), 207],
    ['unknown platform', env.owner, addReleaseBody(h(8), [[h(1), 3]]), 207],
    ['platform 0', env.owner, addReleaseBody(h(8), [[h(1), 1], [h(2), 0]]), 207],
  ]) {
    const c = await send(env, from, body);
    assert.equal(c.exitCode, code, what);
    assert.equal(c.events.length, 0, what);
    assert.deepEqual(await snapshot(env), s0, what);
  }

  env.bc.now += 500;
  const rev = await send(env, env.owner, revokeReleaseBody(h(7), 12n));
  assert.equal(rev.success, true);
  assert.deepEqual(rev.events, [{ op: EVENT.RELEASE_REVOKED, queryId: 12n, manifestHash: hex(h(7)), revokedAt: env.bc.now }]);
  r = await getRelease(env.contract, h(7));
  assert.equal(r.status, 2);
  assert.equal(r.revokedAt, env.bc.now);
  assert.equal(r.addedAt, env.bc.now - 500);
  assert.equal((await send(env, env.owner, revokeReleaseBody(h(7)))).exitCode, 206);
  // A revoked release stays listed and cannot be added again.
  assert.equal((await send(env, env.owner, addReleaseBody(h(7), measurements))).exitCode, 204);
  assert.equal((await getRegistry(env.contract)).releaseCount, 1);
});

test('providers: register with a checked payment contract, update, deregister; the stake comes back', async () => {
  const env = await setup();
  const wallet = await env.bc.treasury('provider-1');
  const key = wallet.address.hash;
  const reg0 = (await env.bc.getContract(env.address)).balance;
  const w0 = (await env.bc.getContract(wallet.address)).balance;
  const value = STAKE + toNano('0.5');
  const c = await register(env, wallet, { value });
  assert.equal(c.success, true, `exit ${c.exitCode}`);
  const { payment, paymentInit } = paymentFor(env, wallet);
  assert.deepEqual(c.events.map((e) => ({ ...e, payment: e.payment.toRawString() })), [
    { op: EVENT.PROVIDER_REGISTERED, queryId: 0n, ownerHash: hex(key), payment: payment.toRawString() },
  ]);
  // The registry keeps exactly the stake; the rest of the value (less gas
  // and the log message) went back to the wallet.
  assert.equal((await env.bc.getContract(env.address)).balance - reg0, STAKE);
  const spent = w0 - (await env.bc.getContract(wallet.address)).balance;
  assert.ok(spent > STAKE && spent < STAKE + toNano('0.05'), `the wallet spent ${spent}`);
  let e = await getProviderEntry(env.contract, key);
  assert.ok(e.payment.equals(payment));
  assert.equal(e.endpoint, 'https://provider.example:8443');
  assert.equal(e.registeredAt, env.bc.now);
  assert.equal(e.updatedAt, env.bc.now);
  assert.equal(e.stake, STAKE);
  assert.equal((await getRegistry(env.contract)).providerCount, 1);
  assert.equal((await register(env, wallet)).exitCode, 211);

  // End to end: a payment contract deployed at that address carries the
  // registry's treasury and fee.
  const deployer = await env.bc.treasury('deployer');
  await deployer.send({ to: payment, value: toNano('0.5'), init: { code: paymentCode, data: paymentInit } });
  const fee = await getNetworkFee(env.bc.provider(payment));
  assert.ok(fee.treasury.equals(env.treasury.address));
  assert.equal(fee.feeBps, FEE_BPS);
  assert.ok((await getProvider(env.bc.provider(payment))).address.equals(wallet.address));

  // Update: the endpoint alone, then a new payment contract (another delay).
  env.bc.now += 100;
  const long = 'https://' + 'a'.repeat(240) + '.example'; // 256 bytes, three cells
  assert.equal(Buffer.byteLength(long), 256);
  let u = await send(env, wallet, updateProviderBody({ endpoint: long }, 5n));
  assert.equal(u.success, true, `exit ${u.exitCode}`);
  assert.equal(u.events[0].op, EVENT.PROVIDER_UPDATED);
  assert.equal(u.events[0].queryId, 5n);
  assert.ok(u.events[0].payment.equals(payment));
  e = await getProviderEntry(env.contract, key);
  assert.equal(e.endpoint, long);
  assert.equal(e.updatedAt, env.bc.now);
  assert.equal(e.registeredAt, env.bc.now - 100);
  const second = paymentFor(env, wallet, { withdrawDelay: 7200 });
  u = await send(env, wallet, updateProviderBody({ endpoint: 'http://10.0.0.1:8080', ...second }));
  assert.equal(u.success, true, `exit ${u.exitCode}`);
  e = await getProviderEntry(env.contract, key);
  assert.ok(e.payment.equals(second.payment));
  assert.equal(e.endpoint, 'http://10.0.0.1:8080');
  // A wrong payment contract in an update changes nothing.
  const s0 = await snapshot(env);
  assert.equal((await send(env, wallet, updateProviderBody({ endpoint: long, payment: second.payment, paymentInit }))).exitCode, 215);
  assert.deepEqual(await snapshot(env), s0);

  // Deregister: the entry goes, the stake comes back with the excess.
  const w1 = (await env.bc.getContract(wallet.address)).balance;
  const d = await send(env, wallet, deregisterProviderBody(9n), toNano('0.1'));
  assert.equal(d.success, true);
  assert.deepEqual(d.events, [{ op: EVENT.PROVIDER_DEREGISTERED, queryId: 9n, ownerHash: hex(key), stake: STAKE }]);
  const gain = (await env.bc.getContract(wallet.address)).balance - w1;
  assert.ok(gain > STAKE - toNano('0.05') && gain < STAKE, `the wallet got back ${gain}`);
  assert.equal(await getProviderEntry(env.contract, key), null);
  assert.equal((await getRegistry(env.contract)).providerCount, 0);
  assert.equal((await getDictRoot(env.contract, 'get_providers')).cell, null);
  assert.equal((await send(env, wallet, deregisterProviderBody())).exitCode, 212);
  assert.equal((await send(env, wallet, updateProviderBody({ endpoint: long }))).exitCode, 212);
  // It may register again.
  assert.equal((await register(env, wallet)).success, true);
});

test('registration with a wrong payment contract is refused (214 init data, 215 address)', async () => {
  const env = await setup();
  const wallet = await env.bc.treasury('provider-1');
  const other = await env.bc.treasury('someone-else');
  const good = paymentFor(env, wallet);
  const initWith = (extra) => buildInitData({ provider: wallet.address, withdrawDelay: DELAY, treasury: env.treasury.address, feeBps: env.feeBps, ...extra });
  const at = (data, code = paymentCode) => contractAddress(0, { code, data });
  const s0 = await snapshot(env);
  const cases = [
    // The init data does not name this provider, treasury and fee, or is not empty.
    ['another provider', { paymentInit: initWith({ provider: other.address }) }, 214],
    ['another treasury', { paymentInit: initWith({ treasury: other.address }) }, 214],
    ['another fee', { paymentInit: initWith({ feeBps: FEE_BPS + 1 }) }, 214],
    ['pre-claimed provider balance', { paymentInit: initWith({ providerBalance: toNano('1000') }) }, 214],
    ['treasury balance', { paymentInit: initWith({ treasuryBalance: 1n }) }, 214],
    ['treasury paid', { paymentInit: initWith({ treasuryPaid: 1n }) }, 214],
    ['pre-opened accounts', { paymentInit: (() => {
      const s = initWith({}).beginParse();
      const b = beginCell().storeAddress(s.loadAddress()).storeCoins(s.loadCoins()).storeUint(s.loadUint(32), 32);
      s.loadUint(2);
      return b.storeBit(1).storeRef(beginCell().storeUint(0, 8).endCell()).storeBit(0).storeSlice(s).endCell();
    })() }, 214],
    ['extra bits', { paymentInit: beginCell().storeSlice(initWith({}).beginParse()).storeUint(0, 1).endCell() }, 214],
    ['garbage', { paymentInit: beginCell().storeUint(5, 3).endCell() }, 214],
    // Right init data, wrong address: other code, other data, other workchain.
    ['the address of other code', { paymentInit: good.paymentInit, payment: at(good.paymentInit, registryCode) }, 215],
    ['the address of other init data', { paymentInit: good.paymentInit, payment: at(initWith({ withdrawDelay: 1 })) }, 215],
    ['a made-up address', { paymentInit: good.paymentInit, payment: Address.parse('0:' + '12'.repeat(32)) }, 215],
    ['on the masterchain', { paymentInit: good.paymentInit, payment: new Address(-1, good.payment.hash) }, 210],
  ];
  for (const [what, over, code] of cases) {
    const fields = { endpoint: 'https://p.example', payment: at(over.paymentInit), ...over };
    const c = await send(env, wallet, registerProviderBody(fields), STAKE + toNano('0.1'));
    assert.equal(c.exitCode, code, what);
    assert.equal(c.events.length, 0);
    assert.deepEqual(await snapshot(env), s0, what);
  }
  // A contract of the registry's own code (the wrong code) whose init data
  // looks right is refused too: the hash is of the payment code only.
  assert.equal((await register(env, wallet)).success, true);
});

test('ownership moves in two steps; a wrong accepter is refused; a transfer can be cancelled', async () => {
  const env = await setup();
  const next = await env.bc.treasury('next-owner');
  const mallory = await env.bc.treasury('mallory');
  assert.equal((await send(env, mallory, proposeOwnerBody(mallory.address))).exitCode, 201);
  assert.equal((await send(env, next, acceptOwnerBody())).exitCode, 203);
  assert.equal((await send(env, env.owner, cancelOwnerTransferBody())).exitCode, 203);
  const p = await send(env, env.owner, proposeOwnerBody(next.address, 3n));
  assert.equal(p.success, true);
  assert.equal(p.events[0].op, EVENT.OWNER_PROPOSED);
  assert.ok(p.events[0].pendingOwner.equals(next.address));
  let info = await getRegistry(env.contract);
  assert.ok(info.pendingOwner.equals(next.address));
  assert.ok(info.owner.equals(env.owner.address), 'the owner stays until the new one accepts');
  // Only the proposed owner can accept, and the proposer cannot either.
  assert.equal((await send(env, mallory, acceptOwnerBody())).exitCode, 202);
  assert.equal((await send(env, env.owner, acceptOwnerBody())).exitCode, 202);
  // Cancel, then accepting is refused.
  const c = await send(env, env.owner, cancelOwnerTransferBody(4n));
  assert.equal(c.success, true);
  assert.equal(c.events[0].op, EVENT.OWNER_TRANSFER_CANCELLED);
  assert.equal((await getRegistry(env.contract)).pendingOwner, null);
  assert.equal((await send(env, next, acceptOwnerBody())).exitCode, 203);
  // Propose again and accept.
  assert.equal((await send(env, env.owner, proposeOwnerBody(next.address))).success, true);
  const a = await send(env, next, acceptOwnerBody(5n));
  assert.equal(a.success, true);
  assert.deepEqual(a.events.map((e) => [e.op, e.queryId, e.owner.toRawString()]), [[EVENT.OWNER_CHANGED, 5n, next.address.toRawString()]]);
  info = await getRegistry(env.contract);
  assert.ok(info.owner.equals(next.address));
  assert.equal(info.pendingOwner, null);
  // The old owner has no power left; the new one has it.
  assert.equal((await send(env, env.owner, addReleaseBody(h(1), [[h(2), 1]]))).exitCode, 201);
  assert.equal((await send(env, next, addReleaseBody(h(1), [[h(2), 1]]))).success, true);
});

test('the fee: at most 1000 bps, owner only, for later registrations', async () => {
  const env = await setup();
  const stranger = await env.bc.treasury('stranger');
  assert.equal((await send(env, env.owner, setFeeBody(1001))).exitCode, 208);
  assert.equal((await send(env, env.owner, setFeeBody(0xffff))).exitCode, 208);
  assert.equal((await send(env, stranger, setFeeBody(10))).exitCode, 201);
  assert.equal((await getRegistry(env.contract)).feeBps, FEE_BPS);
  const early = await env.bc.treasury('early');
  assert.equal((await register(env, early)).success, true);
  const s = await send(env, env.owner, setFeeBody(1000, 2n));
  assert.equal(s.success, true);
  assert.deepEqual(s.events, [{ op: EVENT.FEE_CHANGED, queryId: 2n, feeBps: 1000 }]);
  assert.equal((await getRegistry(env.contract)).feeBps, 1000);
  // A registration must now name 1000 bps; the early provider keeps its entry.
  const late = await env.bc.treasury('late');
  assert.equal((await register(env, late)).exitCode, 214);
  assert.equal((await register(env, late, { feeBps: 1000 })).success, true);
  assert.ok(await getProviderEntry(env.contract, early.address.hash));
  // A registry deployed with a fee above the bound registers nobody.
  const bad = await setup({ feeBps: 2000 });
  const w = await bad.bc.treasury('p');
  assert.equal((await register(bad, w)).exitCode, 208);
});

test('malformed and unauthorised messages are refused by exit code, nothing changes', async () => {
  const env = await setup();
  const wallet = await env.bc.treasury('provider-1');
  const ok = paymentFor(env, wallet);
  await send(env, env.owner, addReleaseBody(h(1), [[h(2), 1]]));
  const s0 = await snapshot(env);
  const reg = (endpoint) => registerProviderBody({ endpoint, ...ok });
  const cases = [
    ['unknown op', beginCell().storeUint(0xc0c0b0ff, 32).storeUint(0, 64).endCell(), 0xffff],
    ['a payment-contract op', beginCell().storeUint(0xc0c0a001, 32).storeUint(0, 64).endCell(), 0xffff],
    ['under 32 bits', beginCell().storeUint(1, 8).endCell(), 0xffff],
    ['no query id', beginCell().storeUint(0xc0c0b013, 32).endCell(), 200],
    ['register without refs', beginCell().storeUint(0xc0c0b011, 32).storeUint(0, 64).storeAddress(ok.payment).endCell(), 200],
    ['register with extra bits', beginCell().storeSlice(reg('https://a.example').beginParse()).storeUint(1, 1).endCell(), 200],
    ['revoke with a short hash', beginCell().storeUint(0xc0c0b002, 32).storeUint(0, 64).storeUint(1, 255).endCell(), 200],
    ['update, maybe bit missing', beginCell().storeUint(0xc0c0b012, 32).storeUint(0, 64).storeRef(endpointCell('https://a.example')).endCell(), 200],
    ['endpoint: ftp', reg('ftp://files.example'), 213],
    ['endpoint: no host', reg('https://'), 213],
    ['endpoint: http:// alone', reg('http://'), 213],
    ['endpoint: 257 bytes', reg('https://' + 'a'.repeat(249)), 213],
    ['endpoint: not whole bytes', reg(beginCell().storeBuffer(Buffer.from('https://a.example')).storeUint(1, 1).endCell()), 213],
    ['endpoint: an empty cell in the snake', reg(beginCell().storeBuffer(Buffer.from('https://a.example')).storeRef(beginCell().endCell()).endCell()), 213],
    ['endpoint: two refs', reg(beginCell().storeBuffer(Buffer.from('https://a.example')).storeRef(endpointCell('x')).storeRef(endpointCell('y')).endCell()), 213],
    ['endpoint: HTTPS in capitals', reg('HTTPS://a.example'), 213],
  ];
  for (const [what, body, code] of cases) {
    const c = await send(env, wallet, body, STAKE + toNano('0.1'));
    assert.equal(c.exitCode, code, what);
    assert.deepEqual(await snapshot(env), s0, what);
  }
  // Value: the stake plus REGISTER_GAS at least.
  assert.equal((await send(env, wallet, reg('https://a.example'), STAKE + REGISTER_GAS - 1n)).exitCode, 216);
  // A provider wallet outside the basechain.
  const master = await env.bc.treasury('master-provider', { workchain: -1 });
  const m = paymentFor(env, master);
  assert.equal((await send(env, master, registerProviderBody({ endpoint: 'https://m.example', ...m }), STAKE + toNano('0.1'))).exitCode, 210);
  // Governance from a provider, provider ops the owner cannot do for others:
  // the owner's update or deregistration only ever addresses its own entry.
  assert.equal((await send(env, wallet, revokeReleaseBody(h(1)))).exitCode, 201);
  assert.equal((await send(env, wallet, proposeOwnerBody(wallet.address))).exitCode, 201);
  assert.equal((await register(env, wallet)).success, true);
  const s1 = await snapshot(env);
  assert.equal((await send(env, env.owner, deregisterProviderBody())).exitCode, 212);
  assert.equal((await send(env, env.owner, updateProviderBody({ endpoint: 'https://evil.example' }))).exitCode, 212);
  assert.deepEqual(await snapshot(env), s1);
  // A plain transfer is a top-up and changes no state.
  const t = await send(env, env.owner, beginCell().endCell(), toNano('2'));
  assert.equal(t.success, true);
  assert.deepEqual(await snapshot(env), s1);
});

test('bounced messages change nothing; governance messages return their excess', async () => {
  const env = await setup();
  const s0 = await snapshot(env);
  const r = await env.bc.sendMessage({
    info: { type: 'internal', ihrDisabled: true, bounce: false, bounced: true, src: env.owner.address, dest: env.address, value: { coins: toNano('0.1') }, ihrFee: 0n, forwardFee: 0n, createdLt: 0n, createdAt: 0 },
    body: beginCell().storeUint(0xffffffff, 32).storeUint(0xc0c0b013, 32).endCell(),
  });
  assert.equal(computeOf(r.transactions, env.address).success, true);
  assert.deepEqual(await snapshot(env), s0);
  // An add_release with 5 TON attached costs the owner only gas and fees.
  const b0 = (await env.bc.getContract(env.owner.address)).balance;
  const reg0 = (await env.bc.getContract(env.address)).balance;
  assert.equal((await send(env, env.owner, addReleaseBody(h(1), [[h(2), 1]]), toNano('5'))).success, true);
  const spent = b0 - (await env.bc.getContract(env.owner.address)).balance;
  assert.ok(spent > 0n && spent < toNano('0.05'), `owner spent ${spent}`);
  assert.equal((await env.bc.getContract(env.address)).balance, reg0);
});

test('the JS measurement and endpoint helpers round-trip', () => {
  const pairs = [[h(3), 2], [h(1), 1]];
  const body = addReleaseBody(h(0), pairs).beginParse();
  body.skip(32 + 64 + 256);
  const root = body.loadMaybeRef();
  assert.deepEqual(readMeasurements(root), [[h(1).toString('hex'), 1], [h(3).toString('hex'), 2]]);
  const url = 'https://' + 'b'.repeat(200);
  assert.equal(endpointBytes(endpointCell(url)).toString(), url);
  assert.equal(endpointCell(url).refs.length, 1);
  assert.ok(Cell.fromBoc(endpointCell(url).toBoc())[0].equals(endpointCell(url)));
});

test('the Rust builders (protocol::registry) make the same cells, and the registry accepts each', async () => {
  const { internal } = await import('@ton/sandbox');
  const fx = JSON.parse(fs.readFileSync(new URL('./fixtures/registry-rust.json', import.meta.url), 'utf8'));
  const A = (s) => Address.parseRaw(s);
  const cellOf = (hexBoc) => {
    const cells = Cell.fromBoc(Buffer.from(hexBoc, 'hex'));
    assert.equal(cells.length, 1);
    return cells[0];
  };
  // The payment code the Rust side read from the committed build is this source's.
  assert.equal(fx.payment_code_hash, paymentCode.hash().toString('hex'));
  assert.equal(fx.payment_code_depth, paymentCode.depth());
  // Payment init data and address: the same as the JS side's.
  const [owner, nextOwner, treasury, provider] = [A(fx.owner), A(fx.next_owner), A(fx.treasury), A(fx.provider)];
  const init = buildInitData({ provider, withdrawDelay: 3600, treasury, feeBps: fx.fee_bps });
  const init2 = buildInitData({ provider, withdrawDelay: 7200, treasury, feeBps: fx.fee_bps });
  assert.ok(cellOf(fx.payment_init).equals(init));
  assert.ok(cellOf(fx.payment_init_2).equals(init2));
  assert.ok(A(fx.payment).equals(contractAddress(0, { code: paymentCode, data: init })));
  assert.ok(A(fx.payment_2).equals(contractAddress(0, { code: paymentCode, data: init2 })));
  const measurements = fx.measurements.map(([d, p]) => [Buffer.from(d, 'hex'), p]);
  const release = Buffer.from(fx.release, 'hex');
  const js = {
    add_release: addReleaseBody(release, measurements, 1n),
    add_release_one: addReleaseBody(h(0x78), [[h(0x42), 1]], 2n),
    revoke_release: revokeReleaseBody(h(0x78), 3n),
    set_fee: setFeeBody(fx.fee_bps, 4n),
    propose_owner: proposeOwnerBody(nextOwner, 5n),
    cancel_owner_transfer: cancelOwnerTransferBody(6n),
    propose_owner_again: proposeOwnerBody(nextOwner, 7n),
    accept_owner: acceptOwnerBody(8n),
    register_provider: registerProviderBody({ payment: A(fx.payment), endpoint: 'https://provider.example:8443', paymentInit: init }, 9n),
    update_provider_endpoint: updateProviderBody({ endpoint: fx.long_endpoint }, 10n),
    update_provider_payment: updateProviderBody({ endpoint: 'http://10.0.0.7:8080', payment: A(fx.payment_2), paymentInit: init2 }, 11n),
    deregister_provider: deregisterProviderBody(12n),
  };
  assert.deepEqual(fx.messages.map((m) => m.name), Object.keys(js));

  const bc = await Blockchain.create();
  bc.now = 1_795_000_000;
  const data = buildRegistryData({ owner, treasury, feeBps: 100, paymentCode, stake: STAKE });
  const address = contractAddress(0, { code: registryCode, data });
  const funder = await bc.treasury('funder');
  await funder.send({ to: address, value: toNano('1'), init: { code: registryCode, data } });
  const contract = bc.provider(address);
  for (const m of fx.messages) {
    const body = cellOf(m.body);
    assert.ok(body.equals(js[m.name]), `${m.name}: the Rust cell differs from the JavaScript one`);
    const value = m.name === 'register_provider' ? STAKE + toNano('0.1') : toNano('0.1');
    const r = await bc.sendMessage(internal({ from: A(m.from), to: address, value, body, bounce: true }));
    const c = computeOf(r.transactions, address);
    assert.equal(c.success, true, `${m.name}: exit ${c.exitCode}`);
    const events = eventsOf(r.transactions, address);
    assert.equal(events.length, 1, m.name);
    assert.equal(events[0].queryId, BigInt(fx.messages.indexOf(m) + 1), m.name);
    if (m.name === 'add_release') {
      const got = await getRelease(contract, release);
      assert.deepEqual(got.measurements, [...fx.measurements].sort((a, b) => (a[0] < b[0] ? -1 : 1)));
    }
    if (m.name === 'revoke_release') assert.equal((await getRelease(contract, h(0x78))).status, 2);
    if (m.name === 'set_fee') assert.equal((await getRegistry(contract)).feeBps, fx.fee_bps);
    if (m.name === 'accept_owner') assert.ok((await getRegistry(contract)).owner.equals(nextOwner));
    if (m.name === 'register_provider') assert.ok((await getProviderEntry(contract, provider.hash)).payment.equals(A(fx.payment)));
    if (m.name === 'update_provider_endpoint') assert.equal((await getProviderEntry(contract, provider.hash)).endpoint, fx.long_endpoint);
    if (m.name === 'update_provider_payment') assert.ok((await getProviderEntry(contract, provider.hash)).payment.equals(A(fx.payment_2)));
    if (m.name === 'deregister_provider') assert.equal(await getProviderEntry(contract, provider.hash), null);
  }
});
