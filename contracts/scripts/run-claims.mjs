// Runs the claims `cocoon-host settle` wrote on the payment contract in
// @ton/sandbox (no network), for the end-to-end test and for providers who
// want to see what their claims will do before sending them.
//
//   node contracts/scripts/run-claims.mjs --manifest DIR/claims.json \
//        --deposits deposits.json [--twice] [--fee-bps N]
//
// deposits.json: [{"body": "<hex BOC of a deposit body, as `cocoon-client
//   payment-message deposit` writes it>", "amount": "<nanoton sent>"}]
//
// The contract is compiled from source and installed at the manifest's
// address (the clients signed their authorizations for that address), with a
// fresh provider wallet as its provider and a fresh sandbox wallet as the
// network's treasury, taking --fee-bps (default 0) of every claim. Each deposit body is sent from its
// own sandbox wallet (the body names and signs its owner), then the provider sends every claim body (and, with --twice, all of
// them again: each must be refused as a double claim). Prints one JSON object:
//   {"results":[{"index","pass","exit_code","success","gas_used","paid"}],
//    "provider_balance", "network_fee":{"fee_bps","treasury_balance"}, "clients":{"<account>":{"balance","deposited_credit"}},
//    "paid":[{"account","enclave_key","total"}]}
// Amounts are decimal strings in nanoton.
import fs from 'node:fs';
import { Blockchain, createShardAccount } from '@ton/sandbox';
import { Address, Cell, toNano } from '@ton/core';
import { compilePaymentContract } from '../lib/compile.mjs';
import { buildInitData, MAX_FEE_BPS } from '../lib/storage.mjs';
import { DEPOSIT_FEE } from '../lib/messages.mjs';
import { accountIdOf } from '../lib/signing.mjs';
import { computeOf, getClient, getNetworkFee, getPaid, getProvider } from '../lib/chain.mjs';

function fail(message) {
  process.stderr.write(`run-claims: ${message}\n`);
  process.exit(2);
}

function args(argv) {
  const out = { twice: false, feeBps: 0 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--twice') out.twice = true;
    else if (a === '--fee-bps') {
      const v = argv[++i];
      if (v === undefined || !/^[0-9]+$/.test(v) || Number(v) > MAX_FEE_BPS) fail(`--fee-bps: 0..${MAX_FEE_BPS}`);
      out.feeBps = Number(v);
    }
    else if (a === '--manifest' || a === '--deposits') {
      if (i + 1 >= argv.length) fail(`${a} needs a value`);
      out[a.slice(2)] = argv[++i];
    } else fail(`unknown argument ${a}`);
  }
  if (!out.manifest || !out.deposits) fail('usage: run-claims.mjs --manifest FILE --deposits FILE [--twice] [--fee-bps N]');
  return out;
}

function readJson(path, what) {
  try {
    return JSON.parse(fs.readFileSync(path, 'utf8'));
  } catch (e) {
    fail(`${what} ${path}: ${e.message}`);
  }
}

function nano(v, what) {
  if (typeof v !== 'string' || !/^[0-9]+$/.test(v)) fail(`${what} must be a decimal string`);
  return BigInt(v);
}

const opts = args(process.argv.slice(2));
const manifest = readJson(opts.manifest, 'manifest');
const deposits = readJson(opts.deposits, 'deposits');
if (manifest.version !== 1 || !Array.isArray(manifest.claims)) fail('manifest: version 1 with a claims array expected');
if (!Array.isArray(deposits)) fail('deposits: an array expected');
let contractAddress;
try {
  contractAddress = Address.parseRaw(manifest.contract);
} catch (e) {
  fail(`manifest.contract: ${e.message}`);
}

const bc = await Blockchain.create();
const provider = await bc.treasury('cocoon-provider');
const { code } = await compilePaymentContract();
const treasury = await bc.treasury('cocoon-network-treasury');
const data = buildInitData({ provider: provider.address, withdrawDelay: 86400, treasury: treasury.address, feeBps: opts.feeBps });
await bc.setShardAccount(
  contractAddress,
  createShardAccount({ address: contractAddress, code, data, balance: toNano('1') }),
);
const contract = bc.provider(contractAddress);

const clients = {};
for (const [i, d] of deposits.entries()) {
  let body;
  let key;
  try {
    body = Cell.fromBoc(Buffer.from(d.body ?? '', 'hex'))[0];
    const s = body.beginParse();
    s.skip(32 + 64);
    key = s.loadBuffer(65);
  } catch (e) {
    fail(`deposits[${i}].body: not a deposit message body (${e.message})`);
  }
  const amount = nano(d.amount, `deposits[${i}].amount`);
  const wallet = await bc.treasury(`cocoon-client-${i}`);
  const r = await wallet.send({ to: contractAddress, value: amount, body, bounce: true });
  const c = computeOf(r.transactions, contractAddress);
  if (!c.success) fail(`deposit ${i} refused with exit code ${c.exitCode}`);
  clients[accountIdOf(key).toString('hex')] = { credit: amount - DEPOSIT_FEE };
}

const results = [];
const passes = opts.twice ? [1, 2] : [1];
for (const pass of passes) {
  for (const [index, claim] of manifest.claims.entries()) {
    let body;
    try {
      const cells = Cell.fromBoc(Buffer.from(claim.body_boc, 'base64'));
      if (cells.length !== 1) throw new Error('one root expected');
      body = cells[0];
    } catch (e) {
      fail(`claims[${index}].body_boc: ${e.message}`);
    }
    const before = (await getProvider(contract)).balance;
    const r = await provider.send({ to: contractAddress, value: toNano('0.1'), body, bounce: true });
    const c = computeOf(r.transactions, contractAddress);
    const after = (await getProvider(contract)).balance;
    results.push({
      index,
      pass,
      exit_code: c.exitCode,
      success: c.success,
      gas_used: c.gasUsed.toString(),
      paid: (after - before).toString(),
    });
  }
}

const clientsOut = {};
for (const [account, { credit }] of Object.entries(clients)) {
  const state = await getClient(contract, BigInt('0x' + account));
  clientsOut[account] = { balance: state.balance.toString(), deposited_credit: credit.toString() };
}
const paid = [];
for (const claim of manifest.claims) {
  const total = await getPaid(contract, BigInt('0x' + claim.account), Buffer.from(claim.enclave_key, 'hex'));
  paid.push({ account: claim.account, enclave_key: claim.enclave_key, total: total.toString() });
}
process.stdout.write(
  JSON.stringify({
    results,
    provider_balance: (await getProvider(contract)).balance.toString(),
    network_fee: await (async () => {
      const f = await getNetworkFee(contract);
      return { fee_bps: f.feeBps, treasury_balance: f.balance.toString() };
    })(),
    clients: clientsOut,
    paid,
  }) + '\n',
);
