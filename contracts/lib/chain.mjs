// Reading results back from the sandbox: the compute phase of the
// contract's transaction, and the contract's get methods.
import { beginCell } from '@ton/core';

/**
 * The compute phase of the first transaction on `address` in `transactions`:
 * { success, exitCode, gasUsed (bigint) }. A skipped compute phase counts as
 * a failure with exit code -1.
 */
export function computeOf(transactions, address) {
  const tx = transactions.find((t) => {
    const info = t.inMessage?.info;
    return info?.type === 'internal' && info.dest.equals(address);
  });
  if (!tx) throw new Error(`no transaction on ${address.toRawString()}`);
  const d = tx.description;
  if (d.type !== 'generic' || d.computePhase.type !== 'vm') {
    return { success: false, exitCode: -1, gasUsed: 0n, tx };
  }
  return {
    success: d.computePhase.success && !d.aborted,
    exitCode: d.computePhase.exitCode,
    gasUsed: d.computePhase.gasUsed,
    tx,
  };
}

/** get_provider: { address, balance, withdrawDelay }. */
export async function getProvider(contract) {
  const { stack } = await contract.get('get_provider', []);
  return { address: stack.readAddress(), balance: stack.readBigNumber(), withdrawDelay: stack.readNumber() };
}

/** get_network_fee: { treasury, feeBps, balance (not yet withdrawn), paid (withdrawn) }. */
export async function getNetworkFee(contract) {
  const { stack } = await contract.get('get_network_fee', []);
  return { treasury: stack.readAddress(), feeBps: stack.readNumber(), balance: stack.readBigNumber(), paid: stack.readBigNumber() };
}

/** get_client: { exists, balance, pending, unlockAt }. */
export async function getClient(contract, accountId) {
  const { stack } = await contract.get('get_client', [{ type: 'int', value: BigInt(accountId) }]);
  return {
    exists: stack.readBigNumber() !== 0n,
    balance: stack.readBigNumber(),
    pending: stack.readBigNumber(),
    unlockAt: stack.readNumber(),
  };
}

/** get_paid: the total already paid for (account, compressed enclave key). */
export async function getPaid(contract, accountId, enclaveKey) {
  const { stack } = await contract.get('get_paid', [
    { type: 'int', value: BigInt(accountId) },
    { type: 'slice', cell: beginCell().storeBuffer(enclaveKey).endCell() },
  ]);
  return stack.readBigNumber();
}
