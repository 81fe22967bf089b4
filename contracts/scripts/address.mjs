// The address a payment contract must have: the hash of the committed code
// and the empty initial storage (the provider, the withdrawal delay, a zero
// claimed balance, no accounts, the network's treasury and fee with nothing
// accumulated). A contract with the right code hash but any
// other initial data (a claimed balance no deposit backs, pre-opened
// accounts) has another address, so compare before depositing.
//
//   node contracts/scripts/address.mjs --provider <wc:hex> --delay <seconds> \
//        --treasury <wc:hex> --fee-bps <0..1000> [--check <wc:hex>]
//
// (The registry's get_registry() names the treasury and fee a registered
// payment contract must carry.)
//
// Prints the raw address; with --check exits 1 when the given address differs.
import { Address, contractAddress } from '@ton/core';
import { readBuild } from '../lib/compile.mjs';
import { buildInitData, MAX_FEE_BPS } from '../lib/storage.mjs';

function fail(message, code = 2) {
  process.stderr.write(`address: ${message}\n`);
  process.exit(code);
}

const args = process.argv.slice(2);
const opts = {};
for (let i = 0; i < args.length; i += 2) {
  const [k, v] = [args[i], args[i + 1]];
  if (!['--provider', '--delay', '--treasury', '--fee-bps', '--check'].includes(k) || v === undefined) {
    fail('usage: address.mjs --provider <wc:hex> --delay <seconds> --treasury <wc:hex> --fee-bps <n> [--check <wc:hex>]');
  }
  opts[k.slice(2)] = v;
}
if (!opts.provider || !opts.delay || !opts.treasury || opts['fee-bps'] === undefined) {
  fail('--provider, --delay, --treasury and --fee-bps are required');
}
let provider;
try {
  provider = Address.parse(opts.provider);
} catch (e) {
  fail(`--provider: ${e.message}`);
}
const delay = Number(opts.delay);
if (!/^[0-9]+$/.test(opts.delay) || delay > 0xffffffff) fail('--delay: seconds, a uint32');
let treasury;
try {
  treasury = Address.parse(opts.treasury);
} catch (e) {
  fail(`--treasury: ${e.message}`);
}
const feeBps = Number(opts['fee-bps']);
if (!/^[0-9]+$/.test(opts['fee-bps']) || feeBps > MAX_FEE_BPS) fail(`--fee-bps: basis points, at most ${MAX_FEE_BPS}`);
const { code } = readBuild();
const expected = contractAddress(provider.workChain, { code, data: buildInitData({ provider, withdrawDelay: delay, treasury, feeBps }) });
console.log(expected.toRawString());
if (opts.check !== undefined) {
  let given;
  try {
    given = Address.parse(opts.check);
  } catch (e) {
    fail(`--check: ${e.message}`);
  }
  if (!given.equals(expected)) {
    fail(`${given.toRawString()} is NOT the payment contract of this provider, delay, treasury and fee (code hash and empty initial storage)`, 1);
  }
  console.log('OK: the address is this code with empty initial storage');
}
