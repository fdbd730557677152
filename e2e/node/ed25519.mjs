// Asymmetric (v1a) Standard Webhooks signatures with Node's own crypto,
// which nothing in this repository wrote:
//
//   node ed25519.mjs keys
//     prints a new ed25519 key pair, one per line: the public key as
//     whpk_ and the base64 of its 32 raw bytes, then the private key as
//     the base64 of its PKCS#8 DER.
//   node ed25519.mjs sign PRIVATE_KEY ID TIMESTAMP < body
//     prints the v1a signature entry of "ID.TIMESTAMP.body".
//   node ed25519.mjs verify WHPK_PUBLIC_KEY HEADERS_FILE < body
//     judges a delivery whose HEADERS_FILE holds "name: value" lines (as
//     `caddy openai-webhook sign` prints them); exits 0 only if a v1a entry
//     of its webhook-signature verifies under the public key.
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify } from "node:crypto";
import { readFileSync } from "node:fs";
import { readAll } from "./common.mjs";

const [command, ...args] = process.argv.slice(2);

// signed is the content both versions sign: id, timestamp and the body's
// exact bytes.
function signed(id, timestamp, body) {
  return Buffer.concat([Buffer.from(`${id}.${timestamp}.`), body]);
}

function publicKey(whpk) {
  if (!whpk.startsWith("whpk_")) throw new Error("the public key does not start with whpk_");
  const raw = Buffer.from(whpk.slice("whpk_".length), "base64");
  if (raw.length !== 32) throw new Error(`the public key decodes to ${raw.length} bytes, want 32`);
  return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: raw.toString("base64url") }, format: "jwk" });
}

switch (command) {
  case "keys": {
    const { publicKey: pub, privateKey: priv } = generateKeyPairSync("ed25519");
    const raw = Buffer.from(pub.export({ format: "jwk" }).x, "base64url");
    console.log(`whpk_${raw.toString("base64")}`);
    console.log(priv.export({ format: "der", type: "pkcs8" }).toString("base64"));
    break;
  }
  case "sign": {
    const [private64, id, timestamp] = args;
    const key = createPrivateKey({ key: Buffer.from(private64, "base64"), format: "der", type: "pkcs8" });
    const body = await readAll(process.stdin);
    console.log(`v1a,${sign(null, signed(id, timestamp, body), key).toString("base64")}`);
    break;
  }
  case "verify": {
    const [whpk, headersFile] = args;
    const headers = {};
    for (const line of readFileSync(headersFile, "utf8").split("\n")) {
      const i = line.indexOf(":");
      if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    const body = await readAll(process.stdin);
    const content = signed(headers["webhook-id"], headers["webhook-timestamp"], body);
    const key = publicKey(whpk);
    const entries = (headers["webhook-signature"] ?? "").split(" ").filter((e) => e.startsWith("v1a,"));
    if (entries.some((e) => verify(null, content, key, Buffer.from(e.slice("v1a,".length), "base64")))) {
      console.log(`verified: ${headers["webhook-id"]}`);
    } else {
      console.log(`refused: none of ${entries.length} v1a entries verifies`);
      process.exit(1);
    }
    break;
  }
  default:
    console.error(`unknown command ${command}: want keys, sign or verify`);
    process.exit(2);
}
