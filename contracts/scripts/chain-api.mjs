// SANDBOX CHAIN API — A TEST DOUBLE, NOT A TON NETWORK.
//
// An HTTP server answering the subset of the TON HTTP API v2 (the
// toncenter-compatible JSON API) that Cocoon's `cocoon-chain` client calls,
// backed by an in-memory @ton/sandbox blockchain, so that the production
// client runs unchanged in tests where no TON network is reachable:
//
//   GET  /api/v2/getAddressInformation?address=A
//   POST /api/v2/runGetMethod        {address, method, stack}
//   POST /api/v2/sendBocReturnHash   {boc}
//   GET  /api/v2/getTransactions?address=A&limit=N[&lt=L&hash=H]
//
// Answers follow the v2 shapes ({ok, result} / {ok: false, error, code}).
// Test-only extras, clearly not part of any TON API, under /sandbox/:
//
//   POST /sandbox/fund   {address, amount}          faucet from the sandbox treasury
//   POST /sandbox/deploy {code_boc, data_boc, value} → {address} (raw form)
//   POST /sandbox/time   {now}                      sets the sandbox clock (unix seconds)
//   GET  /sandbox/ready                             {ok: true}
//
// BOCs in /sandbox/ bodies are base64, like the v2 API's. Differences from
// a real network, on purpose: messages are processed when sent (the answer
// to sendBocReturnHash comes after the transactions ran), an external
// message that the contract does not accept is refused with HTTP 500 and
// "cannot apply external message" as a liteserver does, and a get-method
// on an account without code is refused with HTTP 400.
//
//   node scripts/chain-api.mjs [--port 0]
//
// Prints the banner, then `listening http://127.0.0.1:PORT` on its own line.
import http from 'node:http';
import { Address, Cell, beginCell, contractAddress, storeTransaction } from '@ton/core';
import { Blockchain } from '@ton/sandbox';

const BANNER = 'SANDBOX CHAIN API — A TEST DOUBLE, NOT A TON NETWORK';

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

console.log(BANNER);
const blockchain = await Blockchain.create();
const treasury = await blockchain.treasury('cocoon-sandbox-faucet', { balance: 1_000_000_000_000_000n });

// Every transaction the sandbox ran, per account (raw hex hash), newest last.
const txs = new Map();
function record(result) {
  for (const tx of result.transactions) {
    const key = tx.address.toString(16).padStart(64, '0');
    const raw = tx.raw ?? beginCell().store(storeTransaction(tx)).endCell();
    if (!txs.has(key)) txs.set(key, []);
    txs.get(key).push({ tx, raw });
  }
}

const b64 = (buf) => Buffer.from(buf).toString('base64');
const bocB64 = (cell) => b64(cell.toBoc());
const parseAddress = (s) => Address.parse(String(s));

function txId(lt, hash) {
  return { '@type': 'internal.transactionId', lt: lt.toString(), hash: b64(hash) };
}

async function addressInformation(q) {
  const address = parseAddress(q.get('address'));
  const c = await blockchain.getContract(address);
  const acc = c.account.account;
  let state = 'uninitialized', code = '', data = '', balance = 0n;
  let lastLt = 0n, lastHash = Buffer.alloc(32);
  if (acc) {
    balance = acc.storage.balance.coins;
    lastLt = c.account.lastTransactionLt;
    lastHash = Buffer.from(c.account.lastTransactionHash.toString(16).padStart(64, '0'), 'hex');
    const st = acc.storage.state;
    if (st.type === 'active') {
      state = 'active';
      if (st.state.code) code = bocB64(st.state.code);
      if (st.state.data) data = bocB64(st.state.data);
    } else if (st.type === 'frozen') {
      state = 'frozen';
    }
  }
  return {
    '@type': 'raw.fullAccountState',
    balance: balance.toString(),
    code,
    data,
    last_transaction_id: txId(lastLt, lastHash),
    frozen_hash: '',
    sync_utime: blockchain.now ?? Math.floor(Date.now() / 1000),
    state,
  };
}

function stackIn(item) {
  if (!Array.isArray(item) || item.length !== 2) throw new HttpError(400, `stack entry ${JSON.stringify(item)} is not [type, value]`);
  const [t, v] = item;
  switch (t) {
    case 'num': case 'int': case 'number':
      return { type: 'int', value: String(v).startsWith('-') ? -BigInt(String(v).slice(1)) : BigInt(String(v)) };
    case 'tvm.Cell': case 'cell':
      return { type: 'cell', cell: Cell.fromBase64(typeof v === 'string' ? v : v.bytes) };
    case 'tvm.Slice': case 'slice':
      return { type: 'slice', cell: Cell.fromBase64(typeof v === 'string' ? v : v.bytes) };
    default:
      throw new HttpError(400, `unsupported stack entry type ${t}`);
  }
}

function hexNum(n) {
  return n < 0n ? '-0x' + (-n).toString(16) : '0x' + n.toString(16);
}

// Elements inside a tuple or list, in the tonlib object form.
function element(item) {
  switch (item.type) {
    case 'int': return { '@type': 'tvm.stackEntryNumber', number: { '@type': 'tvm.numberDecimal', number: item.value.toString() } };
    case 'cell': return { '@type': 'tvm.stackEntryCell', cell: { '@type': 'tvm.cell', bytes: bocB64(item.cell) } };
    case 'slice': return { '@type': 'tvm.stackEntrySlice', slice: { '@type': 'tvm.slice', bytes: bocB64(item.cell) } };
    case 'builder': return { '@type': 'tvm.stackEntryCell', cell: { '@type': 'tvm.cell', bytes: bocB64(item.cell) } };
    case 'tuple': return { '@type': 'tvm.stackEntryTuple', tuple: { '@type': 'tvm.tuple', elements: item.items.map(element) } };
    case 'null': return { '@type': 'tvm.stackEntryUnsupported' };
    default: throw new Error(`stack entry ${item.type} not rendered`);
  }
}

function stackOut(item) {
  switch (item.type) {
    case 'int': return ['num', hexNum(item.value)];
    case 'nan': return ['num', 'NaN'];
    case 'null': return ['null', null];
    case 'cell': case 'builder': return ['cell', { bytes: bocB64(item.cell), object: {} }];
    case 'slice': return ['slice', { bytes: bocB64(item.cell), object: {} }];
    case 'tuple': return ['tuple', { '@type': 'tvm.tuple', elements: item.items.map(element) }];
    default: throw new Error(`stack entry ${item.type} not rendered`);
  }
}

async function runGetMethod(body) {
  const address = parseAddress(body.address);
  const c = await blockchain.getContract(address);
  if (c.account.account?.storage.state.type !== 'active') {
    throw new HttpError(400, `account ${address.toRawString()} is not active: no code to run get-method ${body.method}`);
  }
  const stack = (body.stack ?? []).map(stackIn);
  let result;
  try {
    result = await blockchain.runGetMethod(address, body.method, stack);
  } catch (e) {
    if (typeof e.exitCode === 'number') {
      return { '@type': 'smc.runResult', gas_used: Number(e.gasUsed ?? 0), stack: [], exit_code: e.exitCode };
    }
    throw e;
  }
  return {
    '@type': 'smc.runResult',
    gas_used: Number(result.gasUsed),
    stack: result.stack.map(stackOut),
    exit_code: result.exitCode,
  };
}

async function sendBoc(body) {
  const cell = Cell.fromBase64(String(body.boc));
  let result;
  try {
    result = await blockchain.sendMessage(cell);
  } catch (e) {
    throw new HttpError(500, `LITE_SERVER_UNKNOWN: cannot apply external message to current state : ${e.message}`);
  }
  record(result);
  return { '@type': 'raw.extMessageInfo', hash: b64(cell.hash()) };
}

function messageJson(msg) {
  if (!msg) return null;
  const info = msg.info;
  const body = msg.body;
  return {
    '@type': 'raw.message',
    source: info.type === 'internal' ? info.src.toString({ bounceable: info.bounce }) : '',
    destination: info.dest && Address.isAddress(info.dest) ? info.dest.toString() : '',
    value: info.type === 'internal' ? info.value.coins.toString() : '0',
    fwd_fee: info.type === 'internal' ? info.forwardFee.toString() : '0',
    ihr_fee: info.type === 'internal' ? info.ihrFee.toString() : '0',
    created_lt: info.type === 'internal' ? info.createdLt.toString() : '0',
    body_hash: b64(body.hash()),
    msg_data: { '@type': 'msg.dataRaw', body: bocB64(body), init_state: '' },
    message: '',
  };
}

function transactions(q) {
  const address = parseAddress(q.get('address'));
  const limit = Math.max(1, Math.min(Number(q.get('limit') ?? 10), 100));
  const key = address.hash.toString('hex');
  let list = [...(txs.get(key) ?? [])].reverse();
  const lt = q.get('lt');
  const hash = q.get('hash');
  if (lt && hash) {
    const want = Buffer.from(hash, hash.length === 64 ? 'hex' : 'base64');
    const i = list.findIndex(({ tx, raw }) => tx.lt === BigInt(lt) && raw.hash().equals(want));
    if (i < 0) throw new HttpError(404, `transaction ${lt}:${hash} not found`);
    list = list.slice(i);
  }
  return list.slice(0, limit).map(({ tx, raw }) => ({
    '@type': 'raw.transaction',
    address: { '@type': 'accountAddress', account_address: address.toString() },
    utime: tx.now,
    data: bocB64(raw),
    transaction_id: txId(tx.lt, raw.hash()),
    fee: tx.totalFees.coins.toString(),
    storage_fee: '0',
    other_fee: '0',
    in_msg: messageJson(tx.inMessage),
    out_msgs: [...tx.outMessages.values()].map(messageJson),
  }));
}

async function fund(body) {
  const to = parseAddress(body.address);
  const result = await treasury.send({ to, value: BigInt(body.amount), bounce: false });
  record(result);
  return { funded: to.toRawString() };
}

async function deploy(body) {
  const code = Cell.fromBase64(String(body.code_boc));
  const data = Cell.fromBase64(String(body.data_boc));
  const init = { code, data };
  const address = contractAddress(0, init);
  const result = await treasury.send({ to: address, value: BigInt(body.value ?? 1_000_000_000n), init, bounce: false });
  record(result);
  const c = await blockchain.getContract(address);
  if (c.account.account?.storage.state.type !== 'active') {
    throw new HttpError(400, `deploy of ${address.toRawString()} did not activate the account`);
  }
  return { address: address.toRawString() };
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpError(400, 'body is not JSON');
  }
}

const routes = {
  'GET /api/v2/getAddressInformation': (q) => addressInformation(q),
  'POST /api/v2/runGetMethod': (q, b) => runGetMethod(b),
  'POST /api/v2/sendBocReturnHash': (q, b) => sendBoc(b),
  'GET /api/v2/getTransactions': (q) => transactions(q),
  'POST /sandbox/fund': (q, b) => fund(b),
  'POST /sandbox/deploy': (q, b) => deploy(b),
  'POST /sandbox/time': (q, b) => { blockchain.now = Number(b.now); return { now: blockchain.now }; },
  'GET /sandbox/ready': () => ({ ready: true }),
};

// One request at a time: the sandbox is one in-memory chain.
let queue = Promise.resolve();

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  const handler = routes[`${req.method} ${url.pathname}`];
  const reply = (status, obj) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(obj));
  };
  if (!handler) {
    reply(404, { ok: false, error: `no route ${req.method} ${url.pathname} in the sandbox chain API`, code: 404 });
    return;
  }
  queue = queue.then(async () => {
    try {
      const body = req.method === 'POST' ? await readJson(req) : {};
      const result = await handler(url.searchParams, body);
      reply(200, { ok: true, result });
    } catch (e) {
      const status = e instanceof HttpError ? e.status : 500;
      reply(status, { ok: false, error: String(e.message ?? e), code: status });
    }
  });
});

server.listen(Number(arg('--port', '0')), '127.0.0.1', () => {
  console.log(`listening http://127.0.0.1:${server.address().port}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
