// Usage: node sign.mjs SECRET ID TIMESTAMP < body
// Prints the webhook-signature the npm standardwebhooks package makes for a
// text body; for a body that is not UTF-8 (that package decodes payloads as
// UTF-8), the one Node's own crypto makes over the raw bytes.
import { createHmac } from "node:crypto";
import { Webhook } from "standardwebhooks";
import { isUTF8, readAll } from "./common.mjs";

const [secret, id, timestamp] = process.argv.slice(2);
const body = await readAll(process.stdin);
if (isUTF8(body)) {
  const wh = new Webhook(secret.replace(/^whsec_/, ""));
  console.log(wh.sign(id, new Date(Number(timestamp) * 1000), body.toString("utf8")));
} else {
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const mac = createHmac("sha256", key).update(`${id}.${timestamp}.`).update(body).digest("base64");
  console.log(`v1,${mac}`);
}
