#!/usr/bin/env node
// Pays one URL with an x402 v1 npm client, as a JavaScript buyer would, and prints the outcome.
//
//   X402_V1_PAYER_KEY=0x... node x402_v1_client.cjs <clients> <METHOD> <url> [json-body]
//
// <clients> is a comma-separated list, paid one after the other: "fetch" is x402-fetch 1.x
// (wrapFetchWithPayment), "axios" is x402-axios 0.x (withPaymentInterceptor). Both sign with
// createSigner("base-sepolia", key), which signs locally and never calls an RPC. One node
// process serves several clients because loading the x402 packages takes seconds. Prints one
// JSON line per client:
//   {"client", "status", "body", "paymentResponse", "paymentResponseRaw", "error"}
// where paymentResponse is the decoded X-PAYMENT-RESPONSE (null when absent) and error is set
// when the client itself threw (for example because it could not read the 402). Exit status 0
// when every line was printed; 2 for a usage error.
"use strict";

const TIMEOUT_MS = 30000;

function usage(message) {
  process.stderr.write(`${message}\nusage: X402_V1_PAYER_KEY=0x... node x402_v1_client.cjs <fetch,axios> <METHOD> <url> [json-body]\n`);
  process.exit(2);
}

function report(outcome) {
  process.stdout.write(`${JSON.stringify(outcome)}\n`);
}

function decodeReceipt(raw, decode) {
  if (!raw) return null;
  try {
    return decode(raw);
  } catch (error) {
    return { undecodable: String(error && error.message) };
  }
}

async function payWithFetch(method, url, body, key) {
  const { createSigner, decodeXPaymentResponse, wrapFetchWithPayment } = require("x402-fetch");
  const signer = await createSigner("base-sepolia", key); // a Promise in these versions
  const pay = wrapFetchWithPayment(fetch, signer);
  const init = { method, signal: AbortSignal.timeout(TIMEOUT_MS), headers: {} };
  if (body !== undefined) {
    init.body = body;
    init.headers["Content-Type"] = "application/json";
  }
  const response = await pay(url, init);
  const raw = response.headers.get("x-payment-response");
  return {
    client: "x402-fetch",
    status: response.status,
    body: await response.text(),
    paymentResponseRaw: raw,
    paymentResponse: decodeReceipt(raw, decodeXPaymentResponse),
  };
}

async function payWithAxios(method, url, body, key) {
  const axios = require("axios");
  const { createSigner, decodeXPaymentResponse, withPaymentInterceptor } = require("x402-axios");
  const signer = await createSigner("base-sepolia", key); // a Promise in these versions
  // axios parses JSON bodies itself: the interceptor reads the 402 terms from that object.
  const client = withPaymentInterceptor(axios.create({ timeout: TIMEOUT_MS }), signer);
  let response;
  try {
    response = await client.request({
      method,
      url,
      data: body,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
    });
  } catch (error) {
    // axios rejects every status >= 400; an answer that came back is still an outcome.
    if (!error || !error.response) throw error;
    response = error.response;
  }
  const raw = response.headers["x-payment-response"] || null;
  return {
    client: "x402-axios",
    status: response.status,
    body: typeof response.data === "string" ? response.data : JSON.stringify(response.data),
    paymentResponseRaw: raw,
    paymentResponse: decodeReceipt(raw, decodeXPaymentResponse),
  };
}

async function main() {
  const [clients, method, url, body] = process.argv.slice(2);
  const key = process.env.X402_V1_PAYER_KEY;
  if (!clients || !method || !url) usage("missing arguments");
  if (!key || !/^0x[0-9a-fA-F]{64}$/.test(key)) usage("X402_V1_PAYER_KEY must be a 0x-prefixed 32-byte hex key");
  const payers = { fetch: payWithFetch, axios: payWithAxios };
  const chosen = clients.split(",");
  for (const which of chosen) {
    if (!payers[which]) usage(`unknown client ${JSON.stringify(which)}`);
  }
  for (const which of chosen) {
    try {
      report(await payers[which](method.toUpperCase(), url, body, key));
    } catch (error) {
      report({ client: `x402-${which}`, status: null, error: String((error && error.message) || error) });
    }
  }
}

main();
