// Initial storage of the contract (layout of `struct Storage` in cocoon_payment.tolk):
//   provider:address providerBalance:coins withdrawDelay:uint32
//   clients:(HashmapE 256 Client) paid:(HashmapE 256 uint64)
import { beginCell } from '@ton/core';

export function buildInitData({ provider, withdrawDelay, providerBalance = 0n }) {
  if (!Number.isInteger(withdrawDelay) || withdrawDelay < 0 || withdrawDelay > 0xffffffff) {
    throw new RangeError('withdrawDelay must be a uint32 number of seconds');
  }
  return beginCell()
    .storeAddress(provider)
    .storeCoins(BigInt(providerBalance))
    .storeUint(withdrawDelay, 32)
    .storeBit(0) // clients: empty map
    .storeBit(0) // paid: empty map
    .endCell();
}
