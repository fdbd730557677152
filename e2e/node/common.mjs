// Shared by the scripts: Node 18 has no crypto global, which the openai
// package's verifier needs.
import { webcrypto } from "node:crypto";

globalThis.crypto ??= webcrypto;

// readAll returns everything a stream gives, as one Buffer.
export async function readAll(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks);
}

// isUTF8 reports whether bytes decode to text that encodes back to them:
// the openai package verifies the text, so only such bodies can be checked
// with it.
export function isUTF8(bytes) {
  return Buffer.from(bytes.toString("utf8"), "utf8").equals(bytes);
}
