// The payment contract in @ton/sandbox (no network): deposits, claims paid
// against a client authorization and an enclave tab, every refusal by its
// exit code with balances unchanged, withdrawals, the network fee split
// between provider and treasury, and the committed build equal to a fresh
// compile.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { Blockchain } from '@ton/sandbox';
import { Address, beginCell, contractAddress, toNano } from '@ton/core';
import { compilePaymentContract, readBuild } from '../lib/compile.mjs';
import { buildInitData } from '../lib/storage.mjs';
import {
  DEPOSIT_FEE, depositBody, claimBody, providerWithdrawBody,
  clientWithdrawRequestBody, clientWithdrawFinishBody, treasuryWithdrawBody,
} from '../lib/messages.mjs';
import { generateKey, authCell, tabCell, tabBytes, authBytes, signedCell, signP256, ownerSignature } from '../lib/signing.mjs';
import { computeOf, getClient, getNetworkFee, getPaid, getProvider } from '../lib/chain.mjs';

const DELAY = 3600;
let code;

before(async () => {
  code = (await compilePaymentContract()).code;
});

/** A fresh chain with the contract deployed, a provider, a treasury taking `feeBps`, two funded clients. */
async function setup({ feeBps = 0 } = {}) {
  const bc = await Blockchain.create();
  bc.now = 1_795_000_000;
  const provider = await bc.treasury('provider');
  const treasury = await bc.treasury('network-treasury');
  const data = buildInitData({ provider: provider.address, withdrawDelay: DELAY, treasury: treasury.address, feeBps });
  const address = contractAddress(0, { code, data });
  const deployer = await bc.treasury('deployer');
  const r = await deployer.send({ to: address, value: toNano('1'), init: { code, data }, body: beginCell().storeUint(0, 32).endCell() });
  // The deploy message's empty op is refused (0xffff), but the account is
  // initialised by its state init.
  assert.equal(computeOf(r.transactions, address).exitCode, 0xffff);
  const contract = bc.provider(address);
  const enclave = generateKey();
  const alice = { key: generateKey(), wallet: await bc.treasury('alice') };
  const bob = { key: generateKey(), wallet: await bc.treasury('bob') };
  return { bc, provider, treasury, address, contract, enclave, alice, bob };
}

async function send(from, to, body, value = toNano('0.1')) {
  const r = await from.send({ to, value, body, bounce: true });
  return computeOf(r.transactions, to);
}

/** A deposit body for `key`'s account naming `owner`, signed by `signer` (the key itself unless forged). */
function depositFor(env, key, owner, signer = key) {
  return depositBody(key.uncompressed, owner, ownerSignature(signer, { contract: env.address, owner }));
}

async function deposit(env, who, amount) {
  return send(who.wallet, env.address, depositFor(env, who.key, who.wallet.address), amount);
}

function claim(env, who, { total, count = 1, cap = toNano('10'), enclave = env.enclave, contract = env.address, tabAccount = who.key.accountId, signer = enclave }) {
  const auth = authCell(who.key, { contract, accountId: who.key.accountId, enclaveKey: enclave.compressed, cap });
  const tab = tabCell(signer, { accountId: tabAccount, count, total });
  return claimBody(auth, tab);
}

async function state(env) {
  return {
    provider: (await getProvider(env.contract)).balance,
    alice: (await getClient(env.contract, BigInt('0x' + env.alice.key.accountId.toString('hex')))).balance,
    bob: (await getClient(env.contract, BigInt('0x' + env.bob.key.accountId.toString('hex')))).balance,
  };
}

test('the committed build is what the source compiles to', async () => {
  const { code: built, manifest } = readBuild();
  assert.equal(code.hash().toString('hex'), manifest.codeHash);
  assert.ok(built.equals(code));
});

test('deposit: the fee is taken exactly, the key-signed owner owns the account, later deposits add', async () => {
  const env = await setup();
  const c = await deposit(env, env.alice, toNano('2'));
  assert.equal(c.success, true);
  const id = BigInt('0x' + env.alice.key.accountId.toString('hex'));
  let s = await getClient(env.contract, id);
  assert.equal(s.exists, true);
  assert.equal(s.balance, toNano('2') - DEPOSIT_FEE);
  // Anyone may top up (the owner named in a top-up is ignored); the balance adds.
  assert.equal((await send(env.bob.wallet, env.address, depositFor(env, env.alice.key, env.bob.wallet.address, env.bob.key), toNano('1'))).success, true);
  s = await getClient(env.contract, id);
  assert.equal(s.balance, toNano('3') - 2n * DEPOSIT_FEE);
  // Not more than the fee: refused.
  assert.equal((await deposit(env, env.bob, DEPOSIT_FEE)).exitCode, 100);
  // A key that is not uncompressed SEC1.
  const bad = Buffer.from(env.bob.key.uncompressed);
  bad[0] = 5;
  assert.equal((await send(env.bob.wallet, env.address, depositBody(bad, env.bob.wallet.address, Buffer.alloc(64)), toNano('1'))).exitCode, 116);
});

test('deposit: knowing a key is not enough to open its account (no squatting)', async () => {
  const env = await setup();
  const mallory = await env.bc.treasury('mallory');
  const id = env.alice.key.accountId;
  const idInt = BigInt('0x' + id.toString('hex'));
  // Mallory names herself as the owner of Alice's account: her own signature,
  // Alice's signature for another contract, or Alice's signature naming Alice
  // replayed with Mallory as owner are all refused, and no account opens.
  const other = Address.parse('0:' + '11'.repeat(32));
  const attempts = [
    depositFor(env, env.alice.key, mallory.address, env.bob.key),
    depositBody(env.alice.key.uncompressed, mallory.address, ownerSignature(env.alice.key, { contract: other, owner: mallory.address })),
    depositBody(env.alice.key.uncompressed, mallory.address, ownerSignature(env.alice.key, { contract: env.address, owner: env.alice.wallet.address })),
    depositBody(env.alice.key.uncompressed, mallory.address, Buffer.alloc(64)),
  ];
  for (const body of attempts) {
    assert.equal((await send(mallory, env.address, body, toNano('1'))).exitCode, 117);
    assert.equal((await getClient(env.contract, idInt)).exists, false);
  }
  // A deposit Alice signed may be sent by anyone (an exchange, a friend); it
  // opens the account for the owner Alice named, and only she can withdraw.
  assert.equal((await send(mallory, env.address, depositFor(env, env.alice.key, env.alice.wallet.address), toNano('2'))).success, true);
  assert.equal((await send(env.alice.wallet, env.address, depositFor(env, env.alice.key, mallory.address, env.bob.key), toNano('3'))).success, true);
  assert.equal((await getClient(env.contract, idInt)).balance, toNano('5') - 2n * DEPOSIT_FEE);
  assert.equal((await send(mallory, env.address, clientWithdrawRequestBody(id, 1n))).exitCode, 113);
  assert.equal((await send(env.alice.wallet, env.address, clientWithdrawRequestBody(id, 1n))).success, true);
});

test('claims pay the increase of a tab once, to the nanoton', async () => {
  const env = await setup();
  await deposit(env, env.alice, toNano('2'));
  const s0 = await state(env);
  const c1 = await send(env.provider, env.address, claim(env, env.alice, { total: 123_456_789n, count: 3 }));
  assert.equal(c1.success, true, `exit ${c1.exitCode}`);
  let s = await state(env);
  assert.equal(s.provider - s0.provider, 123_456_789n);
  assert.equal(s0.alice - s.alice, 123_456_789n);
  assert.equal(await getPaid(env.contract, BigInt('0x' + env.alice.key.accountId.toString('hex')), env.enclave.compressed), 123_456_789n);
  // A later tab pays only the difference.
  assert.equal((await send(env.provider, env.address, claim(env, env.alice, { total: 200_000_000n, count: 5 }))).success, true);
  s = await state(env);
  assert.equal(s.provider - s0.provider, 200_000_000n);
  assert.equal(s0.alice - s.alice, 200_000_000n);
  // The same tab again, or an older one: a double claim, nothing moves.
  for (const total of [200_000_000n, 123_456_789n]) {
    const again = await send(env.provider, env.address, claim(env, env.alice, { total }));
    assert.equal(again.exitCode, 109);
    assert.deepEqual(await state(env), s);
  }
  // Another enclave key is another tab.
  const other = generateKey();
  assert.equal((await send(env.provider, env.address, claim(env, env.alice, { total: 5n, enclave: other }))).success, true);
  assert.equal((await state(env)).provider - s0.provider, 200_000_005n);
});

test('every refusal has its exit code and leaves balances unchanged', async () => {
  const env = await setup();
  await deposit(env, env.alice, toNano('1'));
  await deposit(env, env.bob, toNano('1'));
  const s0 = await state(env);
  const forger = generateKey();
  const otherContract = Address.parseRaw('0:' + 'ab'.repeat(32));
  const cases = [
    // A forged receipt: the tab signed by a key the client never authorized.
    ['forged tab', claim(env, env.alice, { total: 1000n, signer: forger }), 108],
    // A tab edited after signing.
    ['edited tab', (() => {
      const auth = authCell(env.alice.key, { contract: env.address, accountId: env.alice.key.accountId, enclaveKey: env.enclave.compressed, cap: toNano('1') });
      const data = tabBytes({ accountId: env.alice.key.accountId, count: 1, total: 1000n });
      const sig = signP256(env.enclave.privateKey, data);
      const inflated = tabBytes({ accountId: env.alice.key.accountId, count: 1, total: 1_000_000n });
      return claimBody(auth, signedCell(inflated, sig));
    })(), 108],
    // An authorization not signed by the account's key.
    ['forged authorization', (() => {
      const data = authBytes({ contract: env.address, accountId: env.alice.key.accountId, enclaveKey: env.enclave.compressed, cap: toNano('1') });
      const auth = signedCell(data, signP256(forger.privateKey, data));
      return claimBody(auth, tabCell(env.enclave, { accountId: env.alice.key.accountId, count: 1, total: 1000n }));
    })(), 105],
    ['authorization for another contract', claim(env, env.alice, { total: 1000n, contract: otherContract }), 103],
    ['tab for another account', claim(env, env.alice, { total: 1000n, tabAccount: env.bob.key.accountId }), 107],
    ['over the cap (over budget)', claim(env, env.alice, { total: 5000n, cap: 4999n }), 110],
    ['more than the deposit', claim(env, env.alice, { total: toNano('1'), cap: toNano('2') }), 111],
    ['unknown account', (() => {
      const stranger = { key: generateKey() };
      return claim(env, stranger, { total: 1n });
    })(), 104],
    ['malformed authorization', claimBody(beginCell().storeUint(1, 8).endCell(), tabCell(env.enclave, { accountId: env.alice.key.accountId, count: 1, total: 1n })), 102],
    ['malformed tab', claimBody(authCell(env.alice.key, { contract: env.address, accountId: env.alice.key.accountId, enclaveKey: env.enclave.compressed, cap: 10n }), beginCell().storeUint(1, 8).endCell()), 106],
    ['extra bits in the body', beginCell().storeUint(0xc0c0a002, 32).storeUint(0, 64).storeUint(1, 1).endCell(), 102],
  ];
  for (const [what, body, code] of cases) {
    const c = await send(env.provider, env.address, body);
    assert.equal(c.exitCode, code, what);
    assert.deepEqual(await state(env), s0, `${what}: balances moved`);
  }
  // Only the provider may claim.
  const c = await send(env.bob.wallet, env.address, claim(env, env.alice, { total: 1000n }));
  assert.equal(c.exitCode, 101);
  // Unknown ops and empty bodies.
  assert.equal((await send(env.bob.wallet, env.address, beginCell().storeUint(0x12345678, 32).storeUint(0, 64).endCell())).exitCode, 0xffff);
  assert.equal((await send(env.bob.wallet, env.address, beginCell().endCell())).exitCode, 0xffff);
  assert.deepEqual(await state(env), s0);
});

test('the provider withdraws what was claimed, no more', async () => {
  const env = await setup();
  await deposit(env, env.alice, toNano('3'));
  await send(env.provider, env.address, claim(env, env.alice, { total: toNano('2') }));
  const before = await env.bc.getContract(env.provider.address);
  const balanceBefore = before.balance;
  assert.equal((await send(env.provider, env.address, providerWithdrawBody(toNano('2') + 1n))).exitCode, 112);
  assert.equal((await send(env.bob.wallet, env.address, providerWithdrawBody(1n))).exitCode, 101);
  const r = await env.provider.send({ to: env.address, value: toNano('0.05'), body: providerWithdrawBody(toNano('1.5')), bounce: true });
  assert.equal(computeOf(r.transactions, env.address).success, true);
  assert.equal((await getProvider(env.contract)).balance, toNano('0.5'));
  const after = await env.bc.getContract(env.provider.address);
  // The wallet got 1.5 TON back plus what was left of its 0.05, minus fees.
  const gain = after.balance - balanceBefore;
  assert.ok(gain > toNano('1.5') - toNano('0.05') && gain < toNano('1.5'), `provider wallet moved by ${gain}`);
});

test('client withdrawal waits out the notice period; claims still draw meanwhile', async () => {
  const env = await setup();
  await deposit(env, env.alice, toNano('2'));
  const id = env.alice.key.accountId;
  const idInt = BigInt('0x' + id.toString('hex'));
  const credit = toNano('2') - DEPOSIT_FEE;
  assert.equal((await send(env.bob.wallet, env.address, clientWithdrawRequestBody(id, 1n))).exitCode, 113);
  assert.equal((await send(env.alice.wallet, env.address, clientWithdrawRequestBody(id, credit + 1n))).exitCode, 112);
  assert.equal((await send(env.alice.wallet, env.address, clientWithdrawFinishBody(id))).exitCode, 114);
  assert.equal((await send(env.alice.wallet, env.address, clientWithdrawRequestBody(id, credit))).success, true);
  let s = await getClient(env.contract, idInt);
  assert.equal(s.pending, credit);
  assert.equal(s.unlockAt, env.bc.now + DELAY);
  assert.equal((await send(env.alice.wallet, env.address, clientWithdrawFinishBody(id))).exitCode, 115);
  // The provider claims during the delay: the payout shrinks by that much.
  assert.equal((await send(env.provider, env.address, claim(env, env.alice, { total: toNano('0.5') }))).success, true);
  env.bc.now += DELAY;
  const w0 = (await env.bc.getContract(env.alice.wallet.address)).balance;
  assert.equal((await send(env.alice.wallet, env.address, clientWithdrawFinishBody(id), toNano('0.05'))).success, true);
  s = await getClient(env.contract, idInt);
  assert.equal(s.balance, 0n);
  assert.equal(s.pending, 0n);
  const gain = (await env.bc.getContract(env.alice.wallet.address)).balance - w0;
  const payout = credit - toNano('0.5');
  assert.ok(gain > payout - toNano('0.05') && gain < payout, `owner got ${gain}, payout ${payout}`);
  assert.equal((await getProvider(env.contract)).balance, toNano('0.5'));
});

test('a withdrawal request lapses one delay after it unlocks', async () => {
  const env = await setup();
  await deposit(env, env.alice, toNano('2'));
  const id = env.alice.key.accountId;
  const idInt = BigInt('0x' + id.toString('hex'));
  assert.equal((await send(env.alice.wallet, env.address, clientWithdrawRequestBody(id, toNano('1')))).success, true);
  // Unlocked, then the finish window (one more delay) passes unused.
  env.bc.now += 2 * DELAY + 1;
  assert.equal((await send(env.alice.wallet, env.address, clientWithdrawFinishBody(id))).exitCode, 118);
  let s = await getClient(env.contract, idInt);
  assert.equal(s.balance, toNano('2') - DEPOSIT_FEE);
  // The provider's claims meet the full balance; a new request starts a new delay.
  assert.equal((await send(env.provider, env.address, claim(env, env.alice, { total: toNano('0.5') }))).success, true);
  assert.equal((await send(env.alice.wallet, env.address, clientWithdrawRequestBody(id, toNano('1')))).success, true);
  assert.equal((await send(env.alice.wallet, env.address, clientWithdrawFinishBody(id))).exitCode, 115);
  env.bc.now += DELAY;
  assert.equal((await send(env.alice.wallet, env.address, clientWithdrawFinishBody(id))).success, true);
  s = await getClient(env.contract, idInt);
  assert.equal(s.balance, toNano('2') - DEPOSIT_FEE - toNano('0.5') - toNano('1'));
});

test('scripts/address.mjs: the address pins the empty initial storage, not only the code', async () => {
  const { spawnSync } = await import('node:child_process');
  const { code: built } = readBuild();
  const provider = Address.parse('0:' + '5a'.repeat(32));
  const treasury = Address.parse('0:' + '7e'.repeat(32));
  const init = (extra) => buildInitData({ provider, withdrawDelay: DELAY, treasury, feeBps: 250, ...extra });
  const honest = contractAddress(0, { code: built, data: init({}) });
  // Same code hash, but deployed claiming 1000 TON that no deposit backs,
  // or with another fee, or paying the fee to someone else.
  const rigged = [
    contractAddress(0, { code: built, data: init({ providerBalance: toNano('1000') }) }),
    contractAddress(0, { code: built, data: init({ feeBps: 251 }) }),
    contractAddress(0, { code: built, data: init({ treasury: provider }) }),
    contractAddress(0, { code: built, data: init({ treasuryBalance: toNano('1000') }) }),
  ];
  const script = new URL('../scripts/address.mjs', import.meta.url).pathname;
  const check = (a) => spawnSync(process.execPath, [script, '--provider', provider.toRawString(), '--delay', String(DELAY),
    '--treasury', treasury.toRawString(), '--fee-bps', '250', '--check', a.toRawString()], { encoding: 'utf8' });
  const ok = check(honest);
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(ok.stdout.split('\n')[0], honest.toRawString());
  for (const r of rigged) {
    assert.ok(!honest.equals(r));
    const bad = check(r);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /NOT the payment contract/);
  }
});

test('bounced messages change nothing', async () => {
  const env = await setup();
  await deposit(env, env.alice, toNano('1'));
  const s0 = await state(env);
  // A bounced message arriving at the contract (as if one of its own sends
  // had bounced) is ignored.
  const bounced = beginCell().storeUint(0xffffffff, 32).storeUint(0xc0c0a003, 32).endCell();
  const r = await env.bc.sendMessage({
    info: { type: 'internal', ihrDisabled: true, bounce: false, bounced: true, src: env.provider.address, dest: env.address, value: { coins: toNano('0.1') }, ihrFee: 0n, forwardFee: 0n, createdLt: 0n, createdAt: 0 },
    body: bounced,
  });
  assert.equal(computeOf(r.transactions, env.address).success, true);
  assert.deepEqual(await state(env), s0);
});

test('network fee: every claim splits its delta, floor to the treasury, exactly delta in all', async () => {
  for (const [feeBps, deltas] of [
    [0, [1n, 9_999n, 123_456_789n]],
    [1, [1n, 9_999n, 10_000n, 10_001n, 19_999n, 123_456_789n]],
    [250, [1n, 39n, 40n, 41n, 999_999_999n]],
    [1000, [1n, 9n, 10n, 11n, 123_456_789n]],
  ]) {
    const env = await setup({ feeBps });
    await deposit(env, env.alice, toNano('5'));
    const f0 = await getNetworkFee(env.contract);
    assert.equal(f0.feeBps, feeBps);
    assert.ok(f0.treasury.equals(env.treasury.address));
    assert.equal(f0.balance, 0n);
    let total = 0n;
    let expectTreasury = 0n;
    let expectProvider = 0n;
    for (const delta of deltas) {
      const before = await state(env);
      const tBefore = (await getNetworkFee(env.contract)).balance;
      total += delta;
      const c = await send(env.provider, env.address, claim(env, env.alice, { total }));
      assert.equal(c.success, true, `fee ${feeBps} delta ${delta}: exit ${c.exitCode}`);
      const after = await state(env);
      const fee = (await getNetworkFee(env.contract)).balance - tBefore;
      const prov = after.provider - before.provider;
      // floor(delta * bps / 10000), computed here independently.
      assert.equal(fee, (delta * BigInt(feeBps)) / 10_000n, `fee ${feeBps} delta ${delta}`);
      assert.equal(fee + prov, delta, 'provider + treasury == delta');
      assert.equal(before.alice - after.alice, delta, 'the client pays exactly delta');
      expectTreasury += fee;
      expectProvider += prov;
    }
    const f = await getNetworkFee(env.contract);
    assert.equal(f.balance, expectTreasury);
    assert.equal((await getProvider(env.contract)).balance, expectProvider);
    assert.equal(expectTreasury + expectProvider, total);
  }
});

test('network fee: 1 bps rounds down to nothing below 10 000 nanoton', async () => {
  const env = await setup({ feeBps: 1 });
  await deposit(env, env.alice, toNano('1'));
  assert.equal((await send(env.provider, env.address, claim(env, env.alice, { total: 9_999n }))).success, true);
  assert.equal((await getNetworkFee(env.contract)).balance, 0n);
  assert.equal((await getProvider(env.contract)).balance, 9_999n);
  // The next claim's delta is 10 000 on its own: 1 nanoton of fee (the
  // rounding is per claim, on the delta, never on the cumulative total).
  assert.equal((await send(env.provider, env.address, claim(env, env.alice, { total: 19_999n }))).success, true);
  assert.equal((await getNetworkFee(env.contract)).balance, 1n);
  assert.equal((await getProvider(env.contract)).balance, 19_998n);
});

test('network fee: only the treasury withdraws its share, no more than it has', async () => {
  const env = await setup({ feeBps: 1000 });
  await deposit(env, env.alice, toNano('3'));
  assert.equal((await send(env.provider, env.address, claim(env, env.alice, { total: toNano('2') }))).success, true);
  assert.equal((await getNetworkFee(env.contract)).balance, toNano('0.2'));
  assert.equal((await getProvider(env.contract)).balance, toNano('1.8'));
  // Not the treasury (the provider, a client): 119; more than the balance: 112.
  assert.equal((await send(env.provider, env.address, treasuryWithdrawBody(1n))).exitCode, 119);
  assert.equal((await send(env.alice.wallet, env.address, treasuryWithdrawBody(1n))).exitCode, 119);
  assert.equal((await send(env.treasury, env.address, treasuryWithdrawBody(toNano('0.2') + 1n))).exitCode, 112);
  // The provider cannot take the treasury's share either.
  assert.equal((await send(env.provider, env.address, providerWithdrawBody(toNano('1.8') + 1n))).exitCode, 112);
  const w0 = (await env.bc.getContract(env.treasury.address)).balance;
  const r = await env.treasury.send({ to: env.address, value: toNano('0.05'), body: treasuryWithdrawBody(toNano('0.15')), bounce: true });
  assert.equal(computeOf(r.transactions, env.address).success, true);
  const gain = (await env.bc.getContract(env.treasury.address)).balance - w0;
  assert.ok(gain > toNano('0.15') - toNano('0.05') && gain < toNano('0.15'), `treasury wallet moved by ${gain}`);
  const f = await getNetworkFee(env.contract);
  assert.equal(f.balance, toNano('0.05'));
  assert.equal(f.paid, toNano('0.15'));
});

test('network fee: a contract whose init data names a fee above 10% cannot claim', async () => {
  const env = await setup({ feeBps: 1001 });
  await deposit(env, env.alice, toNano('1'));
  const s0 = await state(env);
  assert.equal((await send(env.provider, env.address, claim(env, env.alice, { total: 1000n }))).exitCode, 120);
  assert.deepEqual(await state(env), s0);
  // Its clients can still take their money back.
  const id = env.alice.key.accountId;
  assert.equal((await send(env.alice.wallet, env.address, clientWithdrawRequestBody(id, toNano('0.5')))).success, true);
});
