// Initial storage of the contract (layout of `struct Storage` in cocoon_payment.tolk):
//   provider:address providerBalance:coins withdrawDelay:uint32
//   clients:(HashmapE 256 Client) paid:(HashmapE 256 uint64)
//   treasury:address feeBps:uint16 treasuryBalance:coins treasuryPaid:coins
// The registry (cocoon_registry.tolk) accepts a payment contract only at the
// address of this code and exactly this empty storage naming the registering
// wallet as provider and the registry's own treasury and fee.
import { beginCell } from '@ton/core';

export const MAX_FEE_BPS = 1000;

export function buildInitData({
  provider, withdrawDelay, treasury, feeBps,
  providerBalance = 0n, treasuryBalance = 0n, treasuryPaid = 0n,
}) {
  if (!Number.isInteger(withdrawDelay) || withdrawDelay < 0 || withdrawDelay > 0xffffffff) {
    throw new RangeError('withdrawDelay must be a uint32 number of seconds');
  }
  if (!treasury) throw new RangeError('treasury: an address is required');
  if (!Number.isInteger(feeBps) || feeBps < 0 || feeBps > 0xffff) {
    throw new RangeError('feeBps must be a uint16 (basis points)');
  }
  return beginCell()
    .storeAddress(provider)
    .storeCoins(BigInt(providerBalance))
    .storeUint(withdrawDelay, 32)
    .storeBit(0) // clients: empty map
    .storeBit(0) // paid: empty map
    .storeAddress(treasury)
    .storeUint(feeBps, 16)
    .storeCoins(BigInt(treasuryBalance))
    .storeCoins(BigInt(treasuryPaid))
    .endCell();
}
