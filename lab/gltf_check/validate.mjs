// Khronos' glTF-Validator on .glb / .gltf files: `node validate.mjs FILE...` prints one JSON line per file,
// {"file", "numErrors", "numWarnings", "numInfos", "numHints", "messages": [{"code", "severity", "message",
// "pointer"}...]} (severity 0 error, 1 warning, 2 information, 3 hint), and exits 1 if any file has an error.
import { readFile } from "node:fs/promises";
import validator from "gltf-validator";

let failed = false;
for (const file of process.argv.slice(2)) {
  const report = await validator.validateBytes(new Uint8Array(await readFile(file)), {
    uri: file,
    maxIssues: 0,  // no limit on the messages reported
  });
  const { numErrors, numWarnings, numInfos, numHints, messages } = report.issues;
  failed ||= numErrors > 0;
  console.log(JSON.stringify({ file, numErrors, numWarnings, numInfos, numHints,
    messages: messages.map(({ code, severity, message, pointer }) => ({ code, severity, message, pointer })) }));
}
process.exit(failed ? 1 : 0);
