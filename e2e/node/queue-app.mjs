// Usage: node queue-app.mjs PORT APP_SECRET SENDER_SECRET
// An app behind webhook_queue with sign_with: it verifies every attempt
// with the standardwebhooks package and the app's own secret, as an app
// should, and also tries the sender's secret, which must not verify. It
// refuses (503) the first attempt of each webhook-id and accepts the next
// one that verifies. GET /__received lists every attempt's record.
import { createServer } from "node:http";
import { Webhook } from "standardwebhooks";
import { readAll } from "./common.mjs";

const [port, appSecret, senderSecret] = process.argv.slice(2);
const app = new Webhook(appSecret);
const sender = new Webhook(senderSecret);
const received = [];
const seen = new Set();

function verifies(webhook, body, headers) {
  try {
    webhook.verify(body, headers);
    return { ok: true };
  } catch (err) {
    return { ok: false, error: `${err.name}: ${err.message}` };
  }
}

createServer(async (req, res) => {
  if (req.method === "GET" && req.url === "/__received") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(received));
    return;
  }
  const body = await readAll(req);
  const id = req.headers["webhook-id"] ?? "";
  const byApp = verifies(app, body.toString("utf8"), req.headers);
  const bySender = verifies(sender, body.toString("utf8"), req.headers);
  const record = {
    webhook_id: id,
    attempt: req.headers["webhook-attempt"] ?? null,
    timestamp: req.headers["webhook-timestamp"] ?? null,
    received_at: Math.floor(Date.now() / 1000),
    verified: byApp.ok,
    error: byApp.error ?? null,
    verifies_under_sender: bySender.ok,
  };
  received.push(record);
  if (!seen.has(id)) {
    seen.add(id);
    res.writeHead(503).end();
    return;
  }
  res.writeHead(byApp.ok ? 200 : 400).end();
}).listen(Number(port), "127.0.0.1", () => console.log(`listening on 127.0.0.1:${port}`));

// The test holds standard input open; when it goes, so does this app.
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
