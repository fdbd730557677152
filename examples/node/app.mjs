// An OpenAI webhook receiver behind caddy-openai-webhook, Node.js only (no
// framework, no package).
//
// Caddy verifies every delivery before it reaches this app, so the app holds
// no secret and trusts what arrives. It listens on 127.0.0.1 only, so nothing
// can reach it but through Caddy. As OpenAI advises, it answers at once and
// does the work afterwards, once per event id: OpenAI retries a delivery it
// did not see answered, so the same event can arrive twice.
//
//     PORT=8000 node app.mjs
import { createServer } from "node:http";

const seen = new Set(); // event ids already taken; use your database in production

// handle is the slow part, after the answer: fetch the batch's results, etc.
async function handle(event) {
  const data = event.data ?? {};
  console.log(`processed ${event.type} ${event.id} about ${data.id ?? data.call_id}`);
}

const server = createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/hooks/openai") {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    let event;
    try {
      event = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      event = null;
    }
    if (typeof event?.id !== "string" || typeof event?.type !== "string") {
      // Verified, but not an event this app understands: say so, and
      // OpenAI will not retry it.
      res.writeHead(204).end();
      return;
    }
    const first = !seen.has(event.id);
    seen.add(event.id);
    res.writeHead(200, { "content-length": "0" }).end();
    if (first) setImmediate(() => handle(event).catch((err) => console.error(err)));
  });
});

const port = Number(process.env.PORT ?? 8000);
server.listen(port, "127.0.0.1", () => console.log(`listening on 127.0.0.1:${port}`));
