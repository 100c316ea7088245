#!/usr/bin/env node
// Validate a .glb / .gltf file with the Khronos glTF validator (npm package `gltf-validator`, installed by
// scripts/setup.sh into .cache/npm). Prints one JSON object with the report's issue counts and the error and
// warning messages; exits 0 without errors, 1 with errors, 2 when it cannot run (usage, unreadable file, no
// validator package).
//
//   node scripts/gltf_validate.mjs mesh.glb
//   GLTF_VALIDATOR=/path/to/node_modules/gltf-validator node scripts/gltf_validate.mjs mesh.glb
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const packageDir = process.env.GLTF_VALIDATOR || join(repo, ".cache", "npm", "node_modules", "gltf-validator");

function fail(message) {
  console.error(`gltf_validate: ${message}`);
  process.exit(2);
}

const file = process.argv[2];
if (process.argv.length !== 3 || file.startsWith("-")) {
  fail("usage: node scripts/gltf_validate.mjs FILE.glb");
}
let validator;
try {
  validator = createRequire(import.meta.url)(packageDir);
} catch (err) {
  fail(`cannot load the gltf-validator package from ${packageDir} (run scripts/setup.sh): ${err.message}`);
}
let bytes;
try {
  bytes = new Uint8Array(readFileSync(file));
} catch (err) {
  fail(`cannot read ${file}: ${err.message}`);
}

const messages = (issues, severity) => issues.messages
  .filter((m) => m.severity === severity)
  .map((m) => ({ code: m.code, message: m.message, pointer: m.pointer }));

try {
  // external resources (a .gltf's .bin / images) resolve beside the file
  const report = await validator.validateBytes(bytes, {
    uri: basename(file),
    maxIssues: 0, // 0 = no limit
    externalResourceFunction: (uri) => Promise.resolve(
      new Uint8Array(readFileSync(join(dirname(file), decodeURIComponent(uri))))),
  });
  const issues = report.issues;
  console.log(JSON.stringify({
    file,
    validator: report.validatorVersion,
    numErrors: issues.numErrors,
    numWarnings: issues.numWarnings,
    numInfos: issues.numInfos,
    numHints: issues.numHints,
    errors: messages(issues, 0),
    warnings: messages(issues, 1),
  }));
  process.exit(issues.numErrors > 0 ? 1 : 0);
} catch (err) {
  fail(`${file}: the validator could not parse it: ${err}`);
}
