#!/usr/bin/env node
// Build the test EIP-3009 token used by x402gate's local chain (x402gate.testing).
//
//   npm ci                                   # once: installs the pinned solc (solcjs, no download)
//   node scripts/build-token.mjs             # compile contracts/TestUSDC.sol and write the artifact
//   node scripts/build-token.mjs --check     # rebuild in memory; exit 1 if the committed one differs
//
// Output: src/x402gate/testing/artifacts/TestUSDC.json = {compiler, evmVersion, abi, bytecode}.
// The build is deterministic: same solc version + same settings + same source bytes give the same
// file (the bytecode embeds a metadata hash of the source, so even a comment change shows up).
// CI runs --check so the committed artifact can never drift from the source.
//
// Settings are pinned here, never taken from solc's defaults, because defaults move between
// releases (0.8.37 defaults to evmVersion "osaka"). "cancun" deploys on anvil's default hardfork
// and on cancun/prague; build for "shanghai" only to target an older hardfork.

import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const SOURCE = "contracts/TestUSDC.sol"; // the key is part of the metadata hash: keep it relative
const CONTRACT = "TestUSDC";
const ARTIFACT = join(ROOT, "src/x402gate/testing/artifacts/TestUSDC.json");
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

function compile(solc) {
  const input = {
    language: "Solidity",
    sources: { [SOURCE]: { content: readFileSync(join(ROOT, SOURCE), "utf8") } },
    settings: {
      optimizer: { enabled: true, runs: OPTIMIZER_RUNS },
      evmVersion: EVM_VERSION,
      outputSelection: {
        [SOURCE]: { [CONTRACT]: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] },
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
    fail(`${errors.length} compiler error(s)`);
  }
  const contract = output.contracts?.[SOURCE]?.[CONTRACT];
  if (!contract || !contract.evm?.bytecode?.object) {
    fail(`no bytecode for ${CONTRACT} in the compiler output`);
  }
  return contract;
}

function render(solc, contract) {
  // Fixed key order and formatting: the file is compared byte for byte by --check.
  const artifact = {
    compiler: `solc ${solc.version()}`,
    evmVersion: EVM_VERSION,
    abi: contract.abi,
    bytecode: `0x${contract.evm.bytecode.object}`,
  };
  return `${JSON.stringify(artifact, null, 2)}\n`;
}

function main(argv) {
  const unknown = argv.filter((arg) => arg !== "--check");
  if (unknown.length > 0) {
    fail(`unknown argument(s): ${unknown.join(" ")} (usage: build-token.mjs [--check])`);
  }
  const solc = loadSolc();
  const contract = compile(solc);
  const text = render(solc, contract);
  const shown = relative(process.cwd(), ARTIFACT) || ARTIFACT;

  if (argv.includes("--check")) {
    let committed;
    try {
      committed = readFileSync(ARTIFACT, "utf8");
    } catch (error) {
      fail(`cannot read ${shown}: ${error.message}`);
    }
    if (committed !== text) {
      fail(`${shown} is stale: run 'node scripts/build-token.mjs' and commit the result`);
    }
    process.stdout.write(`build-token: ${shown} is up to date (${solc.version()})\n`);
    return;
  }

  mkdirSync(dirname(ARTIFACT), { recursive: true });
  writeFileSync(ARTIFACT, text);
  const runtimeBytes = contract.evm.deployedBytecode.object.length / 2;
  process.stdout.write(
    `build-token: wrote ${shown} (${solc.version()}, evm ${EVM_VERSION}, ` +
      `runtime ${runtimeBytes} bytes)\n`,
  );
}

main(process.argv.slice(2));
