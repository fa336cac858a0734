// Compile a JSON Schema with ajv 8 in strict 2020-12 mode and validate documents against it.
// Usage: node check.mjs SCHEMA.json [DOCUMENT.json ...]
// Prints one JSON object: {"compiled": true, "warnings": [...], "documents": {path: [errors]}}
// or {"compiled": false, "error": "..."}. A warning (ajv logs what strict mode only reports) is a failure too.
import { readFileSync } from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";

const [schemaPath, ...documentPaths] = process.argv.slice(2);
const read = (path) => JSON.parse(readFileSync(path, "utf8"));
const warnings = [];
const logger = { log: () => {}, warn: (...args) => warnings.push(args.join(" ")), error: (...args) => warnings.push(args.join(" ")) };
const ajv = new Ajv2020({ strict: true, allErrors: true, logger });

let validate;
try {
  validate = ajv.compile(read(schemaPath));
} catch (error) {
  console.log(JSON.stringify({ compiled: false, error: String(error.message), warnings }));
  process.exit(0);
}
const documents = {};
for (const path of documentPaths) {
  documents[path] = validate(read(path))
    ? []
    : validate.errors.map((e) => ({ pointer: e.instancePath, keyword: e.keyword, message: e.message }));
}
console.log(JSON.stringify({ compiled: true, warnings, documents }));
