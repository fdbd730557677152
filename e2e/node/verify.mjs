// Usage: node verify.mjs SECRET HEADERS_FILE < body
// Judges a delivery with the official openai package: verifySignature, then
// unwrap (which also parses the JSON). HEADERS_FILE holds "name: value"
// lines, as `caddy openai-webhook sign` prints them. Exits 0 only if both
// accept it.
import { readFileSync } from "node:fs";
import OpenAI from "openai";
import { readAll } from "./common.mjs";

const [secret, headersFile] = process.argv.slice(2);
const headers = {};
for (const line of readFileSync(headersFile, "utf8").split("\n")) {
  const i = line.indexOf(":");
  if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
}
const payload = (await readAll(process.stdin)).toString("utf8");
const client = new OpenAI({ apiKey: "unused", webhookSecret: secret });
try {
  await client.webhooks.verifySignature(payload, headers);
  const event = await client.webhooks.unwrap(payload, headers);
  console.log(`verified and unwrapped: ${event.type}`);
} catch (err) {
  console.log(`refused: ${err.name}: ${err.message}`);
  process.exit(1);
}
