// npm run build: compile cocoon_payment.tolk and write the code cell BOC and its
// description (code hash, compiler version) to build/.
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { compilePaymentContract, BUILD_DIR, BUILD_BOC, BUILD_JSON, SOURCE_FILE, CONTRACTS_DIR } from '../lib/compile.mjs';

const { code, codeHashHex, tolkVersion } = await compilePaymentContract();
const boc = code.toBoc();
fs.mkdirSync(BUILD_DIR, { recursive: true });
fs.writeFileSync(BUILD_BOC, boc);
const source = fs.readFileSync(SOURCE_FILE);
const manifest = {
  contract: 'cocoon_payment',
  source: path.relative(CONTRACTS_DIR, SOURCE_FILE),
  sourceSha256: createHash('sha256').update(source).digest('hex'),
  compiler: { name: '@ton/tolk-js', tolkVersion },
  codeHash: codeHashHex,
  codeBocBase64: boc.toString('base64'),
};
fs.writeFileSync(BUILD_JSON, JSON.stringify(manifest, null, 2) + '\n');
console.log(`wrote ${path.relative(process.cwd(), BUILD_BOC)} (${boc.length} bytes)`);
console.log(`code hash ${codeHashHex} (tolk ${tolkVersion})`);
