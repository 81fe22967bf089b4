// Compiles the contract from source with the pinned tolk-js (the Tolk compiler
// as WebAssembly, shipped inside the npm package: nothing is downloaded).
// Nothing cached is trusted: every caller gets a fresh compilation, and the
// tests compare its code hash with the committed build/cocoon_payment.json.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runTolkCompiler, getTolkCompilerVersion } from '@ton/tolk-js';
import { Cell } from '@ton/core';

export const CONTRACTS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const SOURCE_FILE = path.join(CONTRACTS_DIR, 'cocoon_payment.tolk');
export const BUILD_DIR = path.join(CONTRACTS_DIR, 'build');
export const BUILD_BOC = path.join(BUILD_DIR, 'cocoon_payment.boc');
export const BUILD_JSON = path.join(BUILD_DIR, 'cocoon_payment.json');
export const REGISTRY_SOURCE_FILE = path.join(CONTRACTS_DIR, 'cocoon_registry.tolk');
export const REGISTRY_BUILD_BOC = path.join(BUILD_DIR, 'cocoon_registry.boc');
export const REGISTRY_BUILD_JSON = path.join(BUILD_DIR, 'cocoon_registry.json');

/**
 * Compile a Tolk source file. `@stdlib/...` imports are resolved by tolk-js
 * itself; every other path is read relative to the entry file's folder.
 * Returns { code: Cell, codeHashHex, tolkVersion, fiftCode }.
 */
export async function compileTolk(entryFile, { source } = {}) {
  const dir = path.dirname(entryFile);
  const entry = path.basename(entryFile);
  const res = await runTolkCompiler({
    entrypointFileName: entry,
    fsReadCallback: (p) => {
      if (source !== undefined && p === entry) return source;
      return fs.readFileSync(path.resolve(dir, p), 'utf8');
    },
  });
  if (res.status !== 'ok') {
    throw new Error(`tolk compilation of ${entryFile} failed:\n${res.message}`);
  }
  const code = Cell.fromBase64(res.codeBoc64);
  const codeHashHex = code.hash().toString('hex');
  if (codeHashHex !== res.codeHashHex.toLowerCase()) {
    throw new Error(`code hash mismatch: cell ${codeHashHex} vs compiler ${res.codeHashHex}`);
  }
  return { code, codeHashHex, tolkVersion: res.tolkVersion, fiftCode: res.fiftCode, stderr: res.stderr };
}

/** Compile the payment contract from contracts/cocoon_payment.tolk. */
export async function compilePaymentContract() {
  return compileTolk(SOURCE_FILE);
}

/** Compile the registry contract from contracts/cocoon_registry.tolk. */
export async function compileRegistryContract() {
  return compileTolk(REGISTRY_SOURCE_FILE);
}

/** Compile a Tolk program given as a string (used by the benchmark's probes). */
export async function compileTolkSource(name, source) {
  return compileTolk(path.join(CONTRACTS_DIR, name), { source });
}

export { getTolkCompilerVersion };

/**
 * A committed build artifact: { code, manifest } (manifest = the JSON file).
 * The payment contract's unless `which` is 'registry'.
 */
export function readBuild(which = 'payment') {
  const [bocFile, jsonFile] = which === 'registry' ? [REGISTRY_BUILD_BOC, REGISTRY_BUILD_JSON] : [BUILD_BOC, BUILD_JSON];
  const boc = fs.readFileSync(bocFile);
  const cells = Cell.fromBoc(boc);
  if (cells.length !== 1) throw new Error(`${bocFile}: expected one root cell`);
  const manifest = JSON.parse(fs.readFileSync(jsonFile, 'utf8'));
  return { code: cells[0], manifest };
}
