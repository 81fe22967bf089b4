// Internal message bodies: op:uint32 query_id:uint64 then the op's fields.
import { beginCell } from '@ton/core';

export const OP = Object.freeze({
  DEPOSIT: 0xc0c0a001,
  CLAIM: 0xc0c0a002,
  PROVIDER_WITHDRAW: 0xc0c0a003,
  CLIENT_WITHDRAW_REQUEST: 0xc0c0a004,
  CLIENT_WITHDRAW_FINISH: 0xc0c0a005,
  TREASURY_WITHDRAW: 0xc0c0a006,
});

export const DEPOSIT_FEE = 10_000_000n; // 0.01 TON, taken from every deposit

function head(op, queryId = 0n) {
  return beginCell().storeUint(op, 32).storeUint(BigInt(queryId), 64);
}

function accountInt(accountId) {
  const b = Buffer.isBuffer(accountId) ? accountId : Buffer.from(accountId, 'hex');
  if (b.length !== 32) throw new RangeError('account_id must be 32 bytes');
  return BigInt('0x' + b.toString('hex'));
}

/**
 * deposit: key = uncompressed SEC1 public key (65 bytes), owner = the
 * @ton/core Address that may withdraw, signature = 64 bytes by the key over
 * ownerBytes({contract, owner}) (checked when the deposit opens the account).
 */
export function depositBody(uncompressedKey, owner, signature, queryId = 0n) {
  if (uncompressedKey.length !== 65) throw new RangeError('deposit key must be 65 bytes');
  if (signature.length !== 64) throw new RangeError('deposit signature must be 64 bytes');
  return head(OP.DEPOSIT, queryId)
    .storeBuffer(uncompressedKey)
    .storeAddress(owner)
    .storeRef(beginCell().storeBuffer(signature).endCell())
    .endCell();
}

/** claim: two refs, ^auth ^tab. */
export function claimBody(authCell, tabCell, queryId = 0n) {
  return head(OP.CLAIM, queryId).storeRef(authCell).storeRef(tabCell).endCell();
}

export function providerWithdrawBody(amount, queryId = 0n) {
  return head(OP.PROVIDER_WITHDRAW, queryId).storeCoins(BigInt(amount)).endCell();
}

export function clientWithdrawRequestBody(accountId, amount, queryId = 0n) {
  return head(OP.CLIENT_WITHDRAW_REQUEST, queryId).storeUint(accountInt(accountId), 256).storeCoins(BigInt(amount)).endCell();
}

export function clientWithdrawFinishBody(accountId, queryId = 0n) {
  return head(OP.CLIENT_WITHDRAW_FINISH, queryId).storeUint(accountInt(accountId), 256).endCell();
}

export function treasuryWithdrawBody(amount, queryId = 0n) {
  return head(OP.TREASURY_WITHDRAW, queryId).storeCoins(BigInt(amount)).endCell();
}
