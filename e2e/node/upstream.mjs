// Usage: node upstream.mjs PORT SECRET
// An app behind the gateway that re-verifies every request it gets, as if
// it did not trust the gateway: with the openai package's webhooks.unwrap
// for JSON, its verifySignature for other UTF-8 text (unwrap would parse
// it), and Node's own HMAC for bytes that are not UTF-8 (the package signs
// text). Answers 200 with what it found, or 400 with why it refused.
// GET /__received lists every request's verdict.
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import OpenAI from "openai";
import { isUTF8, readAll } from "./common.mjs";

const [port, secret] = process.argv.slice(2);
const client = new OpenAI({ apiKey: "unused", webhookSecret: secret });
const received = [];

async function verdict(req, body) {
  const payload = body.toString("utf8");
  if (!isUTF8(body)) {
    const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
    const mac = createHmac("sha256", key)
      .update(`${req.headers["webhook-id"]}.${req.headers["webhook-timestamp"]}.`)
      .update(body)
      .digest();
    const ok = (req.headers["webhook-signature"] ?? "").split(" ").some((entry) => {
      const got = Buffer.from(entry.replace(/^v1,/, ""), "base64");
      return got.length === mac.length && timingSafeEqual(got, mac);
    });
    if (!ok) throw new Error("node:crypto: no signature matches");
    return "node:crypto";
  }
  let json = true;
  try {
    JSON.parse(payload);
  } catch {
    json = false;
  }
  if (json) {
    await client.webhooks.unwrap(payload, req.headers);
    return "openai.webhooks.unwrap";
  }
  await client.webhooks.verifySignature(payload, req.headers);
  return "openai.webhooks.verifySignature";
}

createServer(async (req, res) => {
  if (req.method === "GET" && req.url === "/__received") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(received));
    return;
  }
  const body = await readAll(req);
  const record = {
    webhook_id: req.headers["webhook-id"] ?? null,
    bytes: body.length,
    sha256: createHash("sha256").update(body).digest("hex"),
    content_length: req.headers["content-length"] ?? null,
    transfer_encoding: req.headers["transfer-encoding"] ?? null,
  };
  try {
    record.verified_by = await verdict(req, body);
    received.push(record);
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(record));
  } catch (err) {
    record.error = `${err.name}: ${err.message}`;
    received.push(record);
    res.writeHead(400, { "content-type": "application/json" });
    res.end(JSON.stringify(record));
  }
}).listen(Number(port), "127.0.0.1", () => console.log(`listening on 127.0.0.1:${port}`));

// The test holds standard input open; when it goes, so does this app.
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
