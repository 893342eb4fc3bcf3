#!/usr/bin/env node
// Build the contracts of x402gate's local chain (x402gate.testing): the EIP-3009 test token, the
// batch-settlement escrow with its EIP-3009 deposit collector, a Multicall3-compatible batcher
// and a minimal EIP-1271 smart wallet.
//
//   npm ci                                   # once: installs the pinned solc (solcjs, no download)
//   node scripts/build-token.mjs             # compile every contract in CONTRACTS, write artifacts
//   node scripts/build-token.mjs --check     # rebuild in memory; exit 1 if a committed one differs
//
// Output: src/x402gate/testing/artifacts/<Name>.json = {compiler, evmVersion, abi, bytecode}, plus
// deployedBytecode for contracts that the test kit places with anvil_setCode (runtime code only).
// The build is deterministic: same solc version + same settings + same source bytes give the same
// file (the bytecode embeds a metadata hash of the source, so even a comment change shows up).
// CI runs --check so no committed artifact can ever drift from its source.
//
// Settings are pinned here, never taken from solc's defaults, because defaults move between
// releases (0.8.37 defaults to evmVersion "osaka"). "cancun" deploys on anvil's default hardfork
// and on cancun/prague; build for "shanghai" only to target an older hardfork.

import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const ARTIFACTS = "src/x402gate/testing/artifacts";
// One self-contained source file per contract. The source key is part of the metadata hash: keep
// it relative. `runtime` adds the deployed (runtime) bytecode to the artifact.
const CONTRACTS = [
  { source: "contracts/TestUSDC.sol", name: "TestUSDC", runtime: false },
  { source: "contracts/BatchSettlement.sol", name: "BatchSettlement", runtime: true },
  {
    source: "contracts/ERC3009DepositCollector.sol",
    name: "ERC3009DepositCollector",
    runtime: true,
  },
  { source: "contracts/Multicall.sol", name: "Multicall", runtime: true },
  { source: "contracts/TestWallet.sol", name: "TestWallet", runtime: false },
];
const EVM_VERSION = "cancun";
const OPTIMIZER_RUNS = 200;

function fail(message) {
  process.stderr.write(`build-token: ${message}\n`);
  process.exit(1);
}

function loadSolc() {
  // Resolve from the repository, so the pinned node_modules/solc is used whatever the cwd.
  const require = createRequire(join(ROOT, "package.json"));
  try {
    return require("solc");
  } catch (error) {
    fail(`cannot load the npm 'solc' module (${error.message}); run 'npm ci' in ${ROOT}`);
  }
}

function compile(solc, { source, name }) {
  const input = {
    language: "Solidity",
    sources: { [source]: { content: readFileSync(join(ROOT, source), "utf8") } },
    settings: {
      optimizer: { enabled: true, runs: OPTIMIZER_RUNS },
      evmVersion: EVM_VERSION,
      outputSelection: {
        [source]: { [name]: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] },
      },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const messages = output.errors ?? [];
  for (const message of messages) {
    process.stderr.write(`${message.formattedMessage ?? message.message}\n`);
  }
  const errors = messages.filter((message) => message.severity === "error");
  if (errors.length > 0) {
    fail(`${source}: ${errors.length} compiler error(s)`);
  }
  const contract = output.contracts?.[source]?.[name];
  if (!contract || !contract.evm?.bytecode?.object) {
    fail(`no bytecode for ${name} in the compiler output`);
  }
  return contract;
}

function render(solc, contract, { runtime }) {
  // Fixed key order and formatting: the file is compared byte for byte by --check.
  const artifact = {
    compiler: `solc ${solc.version()}`,
    evmVersion: EVM_VERSION,
    abi: contract.abi,
    bytecode: `0x${contract.evm.bytecode.object}`,
  };
  if (runtime) {
    artifact.deployedBytecode = `0x${contract.evm.deployedBytecode.object}`;
  }
  return `${JSON.stringify(artifact, null, 2)}\n`;
}

function main(argv) {
  const unknown = argv.filter((arg) => arg !== "--check");
  if (unknown.length > 0) {
    fail(`unknown argument(s): ${unknown.join(" ")} (usage: build-token.mjs [--check])`);
  }
  const solc = loadSolc();
  const check = argv.includes("--check");
  const stale = [];
  for (const spec of CONTRACTS) {
    const contract = compile(solc, spec);
    const text = render(solc, contract, spec);
    const path = join(ROOT, ARTIFACTS, `${spec.name}.json`);
    const shown = relative(process.cwd(), path) || path;

    if (check) {
      let committed = null;
      try {
        committed = readFileSync(path, "utf8");
      } catch (error) {
        process.stderr.write(`build-token: cannot read ${shown}: ${error.message}\n`);
      }
      if (committed !== text) {
        process.stderr.write(`build-token: ${shown} is stale\n`);
        stale.push(shown);
      } else {
        process.stdout.write(`build-token: ${shown} is up to date (${solc.version()})\n`);
      }
      continue;
    }

    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, text);
    const runtimeBytes = contract.evm.deployedBytecode.object.length / 2;
    process.stdout.write(
      `build-token: wrote ${shown} (${solc.version()}, evm ${EVM_VERSION}, ` +
        `runtime ${runtimeBytes} bytes)\n`,
    );
  }
  if (stale.length > 0) {
    fail(`${stale.length} stale artifact(s): run 'node scripts/build-token.mjs' and commit them`);
  }
}

main(process.argv.slice(2));
