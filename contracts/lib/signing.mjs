// Byte layouts of the signed messages (spec v1: AUTH "CCA1", TAB "CCT1") and
// P-256 keys/signatures with node:crypto. All integers are big-endian.
import crypto from 'node:crypto';
import { beginCell } from '@ton/core';

export const AUTH_LEN = 110;
export const TAB_LEN = 52;
export const SIG_LEN = 64;
export const AUTH_TAG = Buffer.from('CCA1', 'ascii');
export const TAB_TAG = Buffer.from('CCT1', 'ascii');
export const OWNER_TAG = Buffer.from('CCD1', 'ascii');
export const OWNER_LEN = 70;

// Order of the P-256 group; signatures are normalised to s <= n/2 ("low S").
const P256_N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;

const U64_MAX = (1n << 64n) - 1n;

function u64(v, what) {
  const n = BigInt(v);
  if (n < 0n || n > U64_MAX) throw new RangeError(`${what} does not fit in u64: ${v}`);
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(n);
  return b;
}

function bytes(v, len, what) {
  const b = Buffer.isBuffer(v) ? v : Buffer.from(v, 'hex');
  if (b.length !== len) throw new RangeError(`${what}: expected ${len} bytes, got ${b.length}`);
  return b;
}

/** Compressed SEC1 (33 bytes) from uncompressed SEC1 (65 bytes, 0x04 || X || Y). */
export function compressKey(uncompressed) {
  const u = bytes(uncompressed, 65, 'uncompressed key');
  if (u[0] !== 0x04) throw new RangeError('uncompressed key must start with 0x04');
  return Buffer.concat([Buffer.from([0x02 + (u[64] & 1)]), u.subarray(1, 33)]);
}

/** account_id = SHA-256 of the uncompressed key (65 bytes). */
export function accountIdOf(uncompressed) {
  return crypto.createHash('sha256').update(bytes(uncompressed, 65, 'uncompressed key')).digest();
}

/** A fresh P-256 key pair: { privateKey (KeyObject), uncompressed, compressed, accountId }. */
export function generateKey() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return keyInfo(privateKey, publicKey);
}

function keyInfo(privateKey, publicKey) {
  const jwk = publicKey.export({ format: 'jwk' });
  const uncompressed = Buffer.concat([
    Buffer.from([0x04]),
    Buffer.from(jwk.x, 'base64url'),
    Buffer.from(jwk.y, 'base64url'),
  ]);
  return { privateKey, publicKey, uncompressed, compressed: compressKey(uncompressed), accountId: accountIdOf(uncompressed) };
}

/** Deterministic key from a 32-byte scalar (tests and benchmarks that want fixed keys). */
export function keyFromScalar(scalar) {
  const d = bytes(scalar, 32, 'private scalar');
  const ecdh = crypto.createECDH('prime256v1');
  ecdh.setPrivateKey(d);
  const pub = ecdh.getPublicKey(); // uncompressed
  const jwk = {
    kty: 'EC', crv: 'P-256', d: d.toString('base64url'),
    x: pub.subarray(1, 33).toString('base64url'), y: pub.subarray(33, 65).toString('base64url'),
  };
  const privateKey = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
  return keyInfo(privateKey, crypto.createPublicKey(privateKey));
}

/** ECDSA P-256 / SHA-256 over `message`, as 64 bytes r || s with low S. */
export function signP256(privateKey, message) {
  const sig = crypto.sign('sha256', message, { key: privateKey, dsaEncoding: 'ieee-p1363' });
  let s = BigInt('0x' + sig.subarray(32).toString('hex'));
  if (s > P256_N / 2n) {
    s = P256_N - s;
    Buffer.from(s.toString(16).padStart(64, '0'), 'hex').copy(sig, 32);
  }
  return sig;
}

/** Verify a 64-byte r||s signature with a compressed or uncompressed key (node:crypto). */
export function verifyP256(publicKeyBytes, message, signature) {
  const key = crypto.createPublicKey({
    key: Buffer.concat([Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex'), bytes(publicKeyBytes, 33, 'compressed key')]),
    format: 'der', type: 'spki',
  });
  return crypto.verify('sha256', message, { key, dsaEncoding: 'ieee-p1363' }, signature);
}

/**
 * AUTH bytes (110): "CCA1" | workchain i8 | contract hash 32 | account_id 32 |
 * enclave key 33 (compressed) | cap u64.
 * `contract` is an @ton/core Address.
 */
export function authBytes({ contract, accountId, enclaveKey, cap }) {
  const wc = Buffer.alloc(1);
  wc.writeInt8(contract.workChain);
  const out = Buffer.concat([
    AUTH_TAG, wc, bytes(contract.hash, 32, 'contract hash'), bytes(accountId, 32, 'account_id'),
    bytes(enclaveKey, 33, 'enclave key'), u64(cap, 'cap'),
  ]);
  if (out.length !== AUTH_LEN) throw new Error('AUTH length');
  return out;
}

/**
 * OWNER bytes (70): "CCD1" | contract workchain i8 | contract hash 32 |
 * owner workchain i8 | owner hash 32. Signed by the account key in the
 * deposit that opens the account. `contract` and `owner` are @ton/core Addresses.
 */
export function ownerBytes({ contract, owner }) {
  const wc = (a) => { const b = Buffer.alloc(1); b.writeInt8(a.workChain); return b; };
  const out = Buffer.concat([
    OWNER_TAG, wc(contract), bytes(contract.hash, 32, 'contract hash'), wc(owner), bytes(owner.hash, 32, 'owner hash'),
  ]);
  if (out.length !== OWNER_LEN) throw new Error('OWNER length');
  return out;
}

/** TAB bytes (52): "CCT1" | account_id 32 | count u64 | total u64. */
export function tabBytes({ accountId, count, total }) {
  const out = Buffer.concat([TAB_TAG, bytes(accountId, 32, 'account_id'), u64(count, 'count'), u64(total, 'total')]);
  if (out.length !== TAB_LEN) throw new Error('TAB length');
  return out;
}

/** A cell whose data is `data` and whose one ref holds the signature bytes. */
export function signedCell(data, signature) {
  return beginCell().storeBuffer(data).storeRef(beginCell().storeBuffer(signature).endCell()).endCell();
}

/** Client-signed ^auth cell. */
export function authCell(clientKey, fields) {
  const data = authBytes(fields);
  return signedCell(data, signP256(clientKey.privateKey, data));
}

/** Enclave-signed ^tab cell. */
export function tabCell(enclaveKey, fields) {
  const data = tabBytes(fields);
  return signedCell(data, signP256(enclaveKey.privateKey, data));
}

/** The `paid` map key: SHA-256(account_id || compressed enclave key). */
export function paidKey(accountId, enclaveKey) {
  return crypto.createHash('sha256')
    .update(Buffer.concat([bytes(accountId, 32, 'account_id'), bytes(enclaveKey, 33, 'enclave key')]))
    .digest();
}

/** The 64-byte signature by `clientKey` naming `owner` for deposits to `contract`. */
export function ownerSignature(clientKey, { contract, owner }) {
  return signP256(clientKey.privateKey, ownerBytes({ contract, owner }));
}
