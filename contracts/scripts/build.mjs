// npm run build: compile cocoon_payment.tolk and cocoon_registry.tolk and
// write each code cell's BOC and its description (code hash, code depth,
// compiler version) to build/.
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import {
  compilePaymentContract, compileRegistryContract, BUILD_DIR, BUILD_BOC, BUILD_JSON, SOURCE_FILE,
  REGISTRY_BUILD_BOC, REGISTRY_BUILD_JSON, REGISTRY_SOURCE_FILE, CONTRACTS_DIR,
} from '../lib/compile.mjs';

async function build(name, compile, sourceFile, bocFile, jsonFile) {
  const { code, codeHashHex, tolkVersion } = await compile();
  const boc = code.toBoc();
  fs.mkdirSync(BUILD_DIR, { recursive: true });
  fs.writeFileSync(bocFile, boc);
  const source = fs.readFileSync(sourceFile);
  const manifest = {
    contract: name,
    source: path.relative(CONTRACTS_DIR, sourceFile),
    sourceSha256: createHash('sha256').update(source).digest('hex'),
    compiler: { name: '@ton/tolk-js', tolkVersion },
    codeHash: codeHashHex,
    // The registry checks payment contract addresses from the payment code's
    // hash and depth (a StateInit's hash includes its code's depth).
    codeDepth: code.depth(),
    codeBocBase64: boc.toString('base64'),
  };
  fs.writeFileSync(jsonFile, JSON.stringify(manifest, null, 2) + '\n');
  console.log(`wrote ${path.relative(process.cwd(), bocFile)} (${boc.length} bytes)`);
  console.log(`${name}: code hash ${codeHashHex}, depth ${code.depth()} (tolk ${tolkVersion})`);
}

await build('cocoon_payment', compilePaymentContract, SOURCE_FILE, BUILD_BOC, BUILD_JSON);
await build('cocoon_registry', compileRegistryContract, REGISTRY_SOURCE_FILE, REGISTRY_BUILD_BOC, REGISTRY_BUILD_JSON);
