// The registry contract (cocoon_registry.tolk) from JavaScript: its initial
// storage, message bodies, get-method readers and events. Layouts are in
// contracts/README.md ("Registry"); protocol/src/registry.rs is the Rust side.
import { beginCell, Dictionary } from '@ton/core';

export const REGISTRY_OP = Object.freeze({
  ADD_RELEASE: 0xc0c0b001,
  REVOKE_RELEASE: 0xc0c0b002,
  SET_FEE: 0xc0c0b003,
  PROPOSE_OWNER: 0xc0c0b004,
  ACCEPT_OWNER: 0xc0c0b005,
  CANCEL_OWNER_TRANSFER: 0xc0c0b006,
  REGISTER_PROVIDER: 0xc0c0b011,
  UPDATE_PROVIDER: 0xc0c0b012,
  DEREGISTER_PROVIDER: 0xc0c0b013,
});

export const EVENT = Object.freeze({
  RELEASE_ADDED: 0xc0c0e001,
  RELEASE_REVOKED: 0xc0c0e002,
  FEE_CHANGED: 0xc0c0e003,
  OWNER_PROPOSED: 0xc0c0e004,
  OWNER_CHANGED: 0xc0c0e005,
  OWNER_TRANSFER_CANCELLED: 0xc0c0e006,
  PROVIDER_REGISTERED: 0xc0c0e011,
  PROVIDER_UPDATED: 0xc0c0e012,
  PROVIDER_DEREGISTERED: 0xc0c0e013,
});

export const PLATFORM = Object.freeze({ SNP: 1, TDX: 2, SIMULATED: 0xff });
export const REGISTER_GAS = 50_000_000n; // on top of the stake

function u256(v) {
  if (typeof v === 'bigint') return v;
  const b = Buffer.isBuffer(v) ? v : Buffer.from(v, 'hex');
  if (b.length !== 32) throw new RangeError('expected 32 bytes');
  return BigInt('0x' + b.toString('hex'));
}

/**
 * Initial storage: owner, no pending owner, no releases or providers, and
 * the config (treasury, fee, the payment code's hash and depth, the stake).
 */
export function buildRegistryData({ owner, treasury, feeBps, paymentCode, stake }) {
  const config = beginCell()
    .storeAddress(treasury)
    .storeUint(feeBps, 16)
    .storeUint(BigInt('0x' + paymentCode.hash().toString('hex')), 256)
    .storeUint(paymentCode.depth(), 16)
    .storeCoins(BigInt(stake))
    .endCell();
  return beginCell()
    .storeAddress(owner)
    .storeUint(0, 2) // pendingOwner: addr_none
    .storeUint(0, 32)
    .storeUint(0, 32)
    .storeBit(0) // releases
    .storeBit(0) // providers
    .storeRef(config)
    .endCell();
}

/** HashmapE 256 -> uint8 of [digest (32 bytes), platform] pairs. */
export function measurementsDict(pairs) {
  const d = Dictionary.empty(Dictionary.Keys.BigUint(256), Dictionary.Values.Uint(8));
  for (const [digest, platform] of pairs) d.set(u256(digest), platform);
  return d;
}

/** An endpoint URL as a snake of cells (127 bytes per cell, one ref onwards). */
export function endpointCell(url) {
  const bytes = Buffer.isBuffer(url) ? url : Buffer.from(url, 'utf8');
  const chunks = [];
  for (let i = 0; i < bytes.length; i += 127) chunks.push(bytes.subarray(i, i + 127));
  if (chunks.length === 0) chunks.push(Buffer.alloc(0));
  let cell = null;
  for (let i = chunks.length - 1; i >= 0; i--) {
    const b = beginCell().storeBuffer(chunks[i]);
    if (cell) b.storeRef(cell);
    cell = b.endCell();
  }
  return cell;
}

/** The bytes of a snake endpoint cell. */
export function endpointBytes(cell) {
  const parts = [];
  let c = cell;
  for (;;) {
    const s = c.beginParse();
    parts.push(s.loadBuffer(s.remainingBits / 8));
    if (s.remainingRefs === 0) break;
    c = s.loadRef();
  }
  return Buffer.concat(parts);
}

function head(op, queryId = 0n) {
  return beginCell().storeUint(op, 32).storeUint(BigInt(queryId), 64);
}

export function addReleaseBody(manifestHash, measurements, queryId = 0n) {
  return head(REGISTRY_OP.ADD_RELEASE, queryId)
    .storeUint(u256(manifestHash), 256)
    .storeDict(measurementsDict(measurements))
    .endCell();
}

export function revokeReleaseBody(manifestHash, queryId = 0n) {
  return head(REGISTRY_OP.REVOKE_RELEASE, queryId).storeUint(u256(manifestHash), 256).endCell();
}

export function setFeeBody(feeBps, queryId = 0n) {
  return head(REGISTRY_OP.SET_FEE, queryId).storeUint(feeBps, 16).endCell();
}

export function proposeOwnerBody(newOwner, queryId = 0n) {
  return head(REGISTRY_OP.PROPOSE_OWNER, queryId).storeAddress(newOwner).endCell();
}

export function acceptOwnerBody(queryId = 0n) {
  return head(REGISTRY_OP.ACCEPT_OWNER, queryId).endCell();
}

export function cancelOwnerTransferBody(queryId = 0n) {
  return head(REGISTRY_OP.CANCEL_OWNER_TRANSFER, queryId).endCell();
}

/** register_provider: payment address, ^endpoint, ^payment init data. */
export function registerProviderBody({ payment, endpoint, paymentInit }, queryId = 0n) {
  return head(REGISTRY_OP.REGISTER_PROVIDER, queryId)
    .storeAddress(payment)
    .storeRef(typeof endpoint === 'string' || Buffer.isBuffer(endpoint) ? endpointCell(endpoint) : endpoint)
    .storeRef(paymentInit)
    .endCell();
}

/** update_provider: ^endpoint, then Maybe ^(payment address, ^payment init data). */
export function updateProviderBody({ endpoint, payment = null, paymentInit = null }, queryId = 0n) {
  const b = head(REGISTRY_OP.UPDATE_PROVIDER, queryId)
    .storeRef(typeof endpoint === 'string' || Buffer.isBuffer(endpoint) ? endpointCell(endpoint) : endpoint);
  if (payment) {
    b.storeBit(1).storeRef(beginCell().storeAddress(payment).storeRef(paymentInit).endCell());
  } else {
    b.storeBit(0);
  }
  return b.endCell();
}

export function deregisterProviderBody(queryId = 0n) {
  return head(REGISTRY_OP.DEREGISTER_PROVIDER, queryId).endCell();
}

function maybeAddress(stack) {
  const item = stack.pop();
  if (item.type === 'null') return null;
  if (item.type !== 'slice' && item.type !== 'cell') throw new Error(`address expected, got ${item.type}`);
  return item.cell.beginParse().loadAddressAny();
}

/** get_registry. */
export async function getRegistry(contract) {
  const { stack } = await contract.get('get_registry', []);
  return {
    owner: stack.readAddress(),
    pendingOwner: maybeAddress(stack),
    treasury: stack.readAddress(),
    feeBps: stack.readNumber(),
    paymentCodeHash: stack.readBigNumber(),
    releaseCount: stack.readNumber(),
    providerCount: stack.readNumber(),
    paymentCodeDepth: stack.readNumber(),
    stake: stack.readBigNumber(),
  };
}

/** get_release(hash): null when unknown, else { status, addedAt, revokedAt, measurements: [[digestHex, platform]] }. */
export async function getRelease(contract, manifestHash) {
  const { stack } = await contract.get('get_release', [{ type: 'int', value: u256(manifestHash) }]);
  const found = stack.readBigNumber() !== 0n;
  const status = stack.readNumber();
  const addedAt = stack.readNumber();
  const revokedAt = stack.readNumber();
  const dictCell = stack.readCellOpt();
  if (!found) return null;
  return { status, addedAt, revokedAt, measurements: readMeasurements(dictCell) };
}

export function readMeasurements(rootCell) {
  if (!rootCell) return [];
  const d = Dictionary.loadDirect(Dictionary.Keys.BigUint(256), Dictionary.Values.Uint(8), rootCell);
  return [...d].map(([k, v]) => [k.toString(16).padStart(64, '0'), v]);
}

/** get_provider(owner hash): null when unknown. */
export async function getProviderEntry(contract, ownerHash) {
  const { stack } = await contract.get('get_provider', [{ type: 'int', value: u256(ownerHash) }]);
  const found = stack.readBigNumber() !== 0n;
  const payment = maybeAddress(stack);
  const endpoint = stack.readCellOpt();
  const registeredAt = stack.readNumber();
  const updatedAt = stack.readNumber();
  const stake = stack.readBigNumber();
  if (!found) return null;
  return { payment, endpoint: endpointBytes(endpoint).toString('utf8'), registeredAt, updatedAt, stake };
}

/** get_providers / get_releases: the dict root cell or null (with the gas the get-method used). */
export async function getDictRoot(contract, method) {
  const r = await contract.get(method, []);
  return { cell: r.stack.readCellOpt(), gasUsed: r.gasUsed };
}

/**
 * The registry's events in `transactions`: external-out messages from
 * `address`, decoded as { op, queryId, ...fields }.
 */
export function eventsOf(transactions, address) {
  const out = [];
  for (const tx of transactions) {
    for (const m of tx.outMessages.values()) {
      if (m.info.type !== 'external-out' || !m.info.src.equals(address)) continue;
      out.push(decodeEvent(m.body));
    }
  }
  return out;
}

export function decodeEvent(body) {
  const s = body.beginParse();
  const op = s.loadUint(32);
  const queryId = s.loadUintBig(64);
  const e = { op, queryId };
  switch (op) {
    case EVENT.RELEASE_ADDED: e.manifestHash = s.loadUintBig(256); break;
    case EVENT.RELEASE_REVOKED: e.manifestHash = s.loadUintBig(256); e.revokedAt = s.loadUint(32); break;
    case EVENT.FEE_CHANGED: e.feeBps = s.loadUint(16); break;
    case EVENT.OWNER_PROPOSED: case EVENT.OWNER_TRANSFER_CANCELLED: e.pendingOwner = s.loadAddress(); break;
    case EVENT.OWNER_CHANGED: e.owner = s.loadAddress(); break;
    case EVENT.PROVIDER_REGISTERED: case EVENT.PROVIDER_UPDATED:
      e.ownerHash = s.loadUintBig(256); e.payment = s.loadAddress(); break;
    case EVENT.PROVIDER_DEREGISTERED: e.ownerHash = s.loadUintBig(256); e.stake = s.loadCoins(); break;
    default: throw new Error(`unknown event op ${op.toString(16)}`);
  }
  s.endParse();
  return e;
}
