// Usage: node svix-sign.mjs SECRET ID TIMESTAMP < body
// Prints the svix-signature that the npm svix package's Webhook.sign makes
// for a text body (it signs text, as Svix does).
import { Webhook } from "svix";
import { readAll } from "./common.mjs";

const [secret, id, timestamp] = process.argv.slice(2);
const body = await readAll(process.stdin);
console.log(new Webhook(secret).sign(id, new Date(Number(timestamp) * 1000), body.toString("utf8")));
