// Reference cells, bags of cells, dictionaries and addresses written by
// @ton/core, printed as one JSON document on stdout. The Rust reader's
// cross-check (protocol/tests/ton_core.rs) runs this at test time and
// checks its own parse, hashes and encodings against it; nothing is
// stored.
//
//   node scripts/ton-fixtures.mjs
import { Address, beginCell, Dictionary } from '@ton/core';

// Deterministic bytes (xorshift32), so runs agree.
let seed = 0x2545f491;
function rnd() {
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed;
}
function bytes(n) {
  return Buffer.from(Array.from({ length: n }, () => rnd() & 0xff));
}

const hex = (b) => Buffer.from(b).toString('hex');

// Cells: partial bytes, full cells, shared subtrees, a deep chain.
const cells = [];
function addCell(name, cell) {
  const bocs = [
    cell.toBoc(),
    cell.toBoc({ idx: true, crc32: true }),
    cell.toBoc({ idx: false, crc32: false }),
    cell.toBoc({ idx: true, crc32: false }),
  ].map(hex);
  cells.push({ name, bocs, hash: hex(cell.hash()), depth: cell.depth(), bits: cell.bits.length, refs: cell.refs.length });
}
addCell('empty', beginCell().endCell());
addCell('bits-13', beginCell().storeUint(0x1abc, 13).endCell());
addCell('full-1023', beginCell().storeBuffer(bytes(127)).storeUint(5, 7).endCell());
const leaf = beginCell().storeUint(0xab, 8).endCell();
const mid = beginCell().storeUint(3, 2).storeRef(leaf).storeRef(leaf).endCell();
addCell('shared', beginCell().storeBit(1).storeRef(mid).storeRef(leaf).storeRef(mid).endCell());
let chain = beginCell().storeUint(1, 1).endCell();
for (let i = 0; i < 300; i++) chain = beginCell().storeUint(i, 9).storeRef(chain).endCell();
addCell('chain-300', chain);
let wide = beginCell().storeBuffer(bytes(20)).endCell();
for (let i = 0; i < 8; i++) {
  const b = beginCell().storeUint(i, 8);
  for (let r = 0; r < 4; r++) b.storeRef(r % 2 ? wide : beginCell().storeUint(i * 4 + r, 16).storeRef(wide).endCell());
  wide = b.endCell();
}
addCell('wide-dag', wide);

// Slices: fields Rust reads back with CellSlice.
const addrs = [
  new Address(0, bytes(32)),
  new Address(-1, bytes(32)),
  new Address(0, Buffer.alloc(32, 0xff)),
];
const ref = beginCell().storeUint(77, 7).endCell();
const fields = beginCell()
  .storeUint(0xdeadbeefn, 32)
  .storeInt(-5, 9)
  .storeCoins(0n)
  .storeCoins(123456789012345678901234567n)
  .storeAddress(null)
  .storeAddress(addrs[1])
  .storeMaybeRef(null)
  .storeMaybeRef(ref)
  .storeUint(BigInt('0x' + hex(addrs[0].hash)), 256)
  .endCell();
const slice = {
  boc: hex(fields.toBoc()),
  u32: '3735928559',
  i9: '-5',
  coins: ['0', '123456789012345678901234567'],
  address: addrs[1].toRawString(),
  ref_hash: hex(ref.hash()),
  u256: hex(addrs[0].hash),
};

// Dictionaries: root cells (storeDictDirect) and their entries.
const dicts = [];
function addDict(name, keyBits, dict, keyHex, valueBits, valueOf) {
  const root = beginCell().storeDictDirect(dict).endCell();
  const entries = [...dict.keys()]
    .map((k) => ({ key: keyHex(k), value: valueOf(dict.get(k)).toString() }))
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  dicts.push({ name, key_bits: keyBits, value_bits: valueBits, boc: hex(root.toBoc()), entries });
}
{
  const d = Dictionary.empty(Dictionary.Keys.BigUint(256), Dictionary.Values.Uint(8));
  for (let i = 0; i < 40; i++) d.set(BigInt('0x' + hex(bytes(32))), i + 1);
  addDict('uint256->uint8', 256, d, (k) => k.toString(16).padStart(64, '0'), 8, (v) => v);
}
{
  const d = Dictionary.empty(Dictionary.Keys.Uint(32), Dictionary.Values.BigUint(64));
  for (let i = 0; i < 25; i++) d.set(rnd() >>> (i % 3 === 0 ? 28 : 0), BigInt(rnd()) * 1000n);
  addDict('uint32->uint64', 32, d, (k) => k.toString(16).padStart(8, '0'), 64, (v) => v);
}
{
  const d = Dictionary.empty(Dictionary.Keys.Uint(16), Dictionary.Values.Uint(16));
  d.set(0xffff, 1);
  addDict('single', 16, d, (k) => k.toString(16).padStart(4, '0'), 16, (v) => v);
}
{
  // Keys sharing long prefixes (hml_same and hml_long labels).
  const d = Dictionary.empty(Dictionary.Keys.BigUint(256), Dictionary.Values.Uint(8));
  d.set(0n, 1); d.set(1n, 2); d.set((1n << 256n) - 1n, 3); d.set(1n << 200n, 4);
  addDict('prefixes', 256, d, (k) => k.toString(16).padStart(64, '0'), 8, (v) => v);
}

// Addresses in every friendly form.
const addresses = addrs.map((a) => ({
  raw: a.toRawString(),
  forms: [
    [true, false], [false, false], [true, true], [false, true],
  ].map(([bounceable, testOnly]) => ({
    bounceable, testnet: testOnly,
    url: a.toString({ bounceable, testOnly, urlSafe: true }),
    std: a.toString({ bounceable, testOnly, urlSafe: false }),
  })),
}));

process.stdout.write(JSON.stringify({ cells, slice, dicts, addresses }));
