// The address a payment contract must have: the hash of the committed code
// and the empty initial storage (the provider, the withdrawal delay, a zero
// claimed balance, no accounts). A contract with the right code hash but any
// other initial data (a claimed balance no deposit backs, pre-opened
// accounts) has another address, so compare before depositing.
//
//   node contracts/scripts/address.mjs --provider <wc:hex> --delay <seconds> [--check <wc:hex>]
//
// Prints the raw address; with --check exits 1 when the given address differs.
import { Address, contractAddress } from '@ton/core';
import { readBuild } from '../lib/compile.mjs';
import { buildInitData } from '../lib/storage.mjs';

function fail(message, code = 2) {
  process.stderr.write(`address: ${message}\n`);
  process.exit(code);
}

const args = process.argv.slice(2);
const opts = {};
for (let i = 0; i < args.length; i += 2) {
  const [k, v] = [args[i], args[i + 1]];
  if (!['--provider', '--delay', '--check'].includes(k) || v === undefined) {
    fail('usage: address.mjs --provider <wc:hex> --delay <seconds> [--check <wc:hex>]');
  }
  opts[k.slice(2)] = v;
}
if (!opts.provider || !opts.delay) fail('--provider and --delay are required');
let provider;
try {
  provider = Address.parse(opts.provider);
} catch (e) {
  fail(`--provider: ${e.message}`);
}
const delay = Number(opts.delay);
if (!/^[0-9]+$/.test(opts.delay) || delay > 0xffffffff) fail('--delay: seconds, a uint32');
const { code } = readBuild();
const expected = contractAddress(provider.workChain, { code, data: buildInitData({ provider, withdrawDelay: delay }) });
console.log(expected.toRawString());
if (opts.check !== undefined) {
  let given;
  try {
    given = Address.parse(opts.check);
  } catch (e) {
    fail(`--check: ${e.message}`);
  }
  if (!given.equals(expected)) {
    fail(`${given.toRawString()} is NOT the payment contract of this provider and delay (code hash and empty initial storage)`, 1);
  }
  console.log('OK: the address is this code with empty initial storage');
}
