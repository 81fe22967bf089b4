// Get-method results of a real registry in @ton/sandbox (no network), for
// protocol/tests/registry_stack.rs: the Rust parsers of protocol::registry
// read these stacks and must find what this script put in.
//
//   node contracts/scripts/registry-fixtures.mjs
//
// Prints one JSON object: for each call, the raw result stack (items
// {"type":"int","value":"<decimal>"}, {"type":"cell"|"slice","boc":"<hex>"},
// {"type":"null"}) and the values expected, in plain JSON.
import { Blockchain } from '@ton/sandbox';
import { contractAddress, toNano } from '@ton/core';
import { compilePaymentContract, compileRegistryContract } from '../lib/compile.mjs';
import { buildInitData } from '../lib/storage.mjs';
import {
  buildRegistryData, addReleaseBody, revokeReleaseBody, proposeOwnerBody, registerProviderBody,
} from '../lib/registry.mjs';

const bc = await Blockchain.create();
bc.now = 1_795_000_000;
const { code: paymentCode } = await compilePaymentContract();
const { code } = await compileRegistryContract();
const owner = await bc.treasury('owner');
const treasury = await bc.treasury('treasury', { workchain: -1 });
const stake = toNano('1.5');
const feeBps = 125;
const data = buildRegistryData({ owner: owner.address, treasury: treasury.address, feeBps, paymentCode, stake });
const address = contractAddress(0, { code, data });
await owner.send({ to: address, value: toNano('5'), init: { code, data } });

async function send(from, body, value = toNano('0.2')) {
  const r = await from.send({ to: address, value, body, bounce: true });
  const tx = r.transactions.find((t) => t.inMessage?.info?.dest?.equals?.(address));
  if (tx.description.computePhase.exitCode !== 0) throw new Error(`exit ${tx.description.computePhase.exitCode}`);
}

const hex32 = (b) => Buffer.alloc(32, b);
const releases = [
  { hash: hex32(0x31), m: [[hex32(0xa1), 1], [hex32(0x00), 0xff], [hex32(0xff), 2]] },
  { hash: hex32(0x10), m: [[hex32(0x42), 2]] },
];
await send(owner, addReleaseBody(releases[0].hash, releases[0].m));
bc.now += 10;
await send(owner, addReleaseBody(releases[1].hash, releases[1].m));
bc.now += 10;
await send(owner, revokeReleaseBody(releases[1].hash));
const revokedAt = bc.now;
const next = await bc.treasury('next-owner');
await send(owner, proposeOwnerBody(next.address));

const endpoints = ['https://a.example', 'http://10.1.2.3:8080/v1', 'https://' + 'x'.repeat(230) + '.example:443'];
const providers = [];
for (const [i, endpoint] of endpoints.entries()) {
  bc.now += 5;
  const wallet = await bc.treasury(`provider-${i}`);
  const paymentInit = buildInitData({ provider: wallet.address, withdrawDelay: 3600 * (i + 1), treasury: treasury.address, feeBps });
  const payment = contractAddress(0, { code: paymentCode, data: paymentInit });
  await send(wallet, registerProviderBody({ payment, endpoint, paymentInit }), stake + toNano('0.2'));
  providers.push({
    owner: wallet.address.toRawString(), payment: payment.toRawString(), endpoint,
    registered_at: bc.now, updated_at: bc.now, stake: stake.toString(),
    withdraw_delay: 3600 * (i + 1),
  });
}

function items(stack) {
  return stack.map((it) => {
    switch (it.type) {
      case 'int': return { type: 'int', value: it.value.toString() };
      case 'cell': case 'slice': return { type: it.type, boc: it.cell.toBoc().toString('hex') };
      case 'null': return { type: 'null' };
      default: throw new Error(`unexpected stack item ${it.type}`);
    }
  });
}

async function call(method, args = []) {
  const r = await bc.runGetMethod(address, method, args);
  if (r.exitCode !== 0) throw new Error(`${method}: exit ${r.exitCode}`);
  return items(r.stack);
}

const int = (b) => ({ type: 'int', value: BigInt('0x' + b.toString('hex')) });
const expectRelease = (r, i) => ({
  manifest_hash: r.hash.toString('hex'),
  status: i === 1 ? 2 : 1,
  added_at: 1_795_000_000 + 10 * i,
  revoked_at: i === 1 ? revokedAt : 0,
  measurements: [...r.m].map(([d, p]) => [p, d.toString('hex')]).sort((a, b) => (a[1] < b[1] ? -1 : 1)),
});
const out = {
  get_registry: {
    stack: await call('get_registry'),
    expect: {
      owner: owner.address.toRawString(), pending_owner: next.address.toRawString(),
      treasury: treasury.address.toRawString(), fee_bps: feeBps,
      payment_code_hash: paymentCode.hash().toString('hex'), release_count: 2, provider_count: 3,
      payment_code_depth: paymentCode.depth(), stake: stake.toString(),
    },
  },
  get_releases: {
    stack: await call('get_releases'),
    expect: releases.map(expectRelease).sort((a, b) => (a.manifest_hash < b.manifest_hash ? -1 : 1)),
  },
  get_release: releases.map((r, i) => ({ hash: r.hash.toString('hex'), expect: expectRelease(r, i) })),
  get_providers: {
    stack: await call('get_providers'),
    expect: [...providers].sort((a, b) => (a.owner < b.owner ? -1 : 1)),
  },
  get_provider: providers.map((p) => ({ owner_hash: p.owner.split(':')[1], expect: p })),
};
for (const r of out.get_release) r.stack = await call('get_release', [int(Buffer.from(r.hash, 'hex'))]);
for (const p of out.get_provider) p.stack = await call('get_provider', [int(Buffer.from(p.owner_hash, 'hex'))]);
out.unknown_release = await call('get_release', [int(hex32(0x99))]);
out.unknown_provider = await call('get_provider', [int(hex32(0x99))]);
// An empty registry: null dictionaries, no pending owner.
const emptyData = buildRegistryData({ owner: owner.address, treasury: treasury.address, feeBps: 0, paymentCode, stake: 0n });
const emptyAddress = contractAddress(0, { code, data: emptyData });
await owner.send({ to: emptyAddress, value: toNano('1'), init: { code, data: emptyData } });
const emptyCall = async (m) => items((await bc.runGetMethod(emptyAddress, m, [])).stack);
out.empty = {
  get_registry: await emptyCall('get_registry'),
  get_releases: await emptyCall('get_releases'),
  get_providers: await emptyCall('get_providers'),
};
process.stdout.write(JSON.stringify(out) + '\n');
