#!/usr/bin/env node
// Pays N requests with the official TypeScript client over one batch-settlement channel, as a
// JavaScript buyer would, and prints what it saw as one JSON line.
//
//   X402_PAYER_KEY=0x... X402_RPC_URL=http://127.0.0.1:8545 \
//     node pay_channel.mjs <network> <asset> <count> <url> [<url> ...]
//
// The client is @x402/fetch's wrapFetchWithPayment around an x402Client that knows only the
// batch-settlement scheme of @x402/evm (BatchSettlementEvmScheme), signing with a viem local
// account whose on-chain reads go to X402_RPC_URL (the local chain). <asset> is the accepted
// token, allowed by the client's spend controls. Request i goes to url[i % number of urls],
// one after the other, so every request after the first is paid by a voucher on the channel
// the first one deposited into. Output:
//   {"answers": [{"url", "status", "body", "paymentResponse"}],
//    "exchanges": [{"url", "paid", "status"}], "error": null | "message"}
// where answers are what the buyer's code got back (paymentResponse is the decoded
// PAYMENT-RESPONSE header, null when absent) and exchanges are every HTTP request the client
// really sent, paid meaning it carried a PAYMENT-SIGNATURE header. Exit status 0 when the line
// was printed, 2 for a usage error. With X402_REQUEST_BODY set (a JSON text), every request is
// a POST of that body as application/json (a metered route's request), else a GET.
//
// With X402_REFUND=1 the buyer then asks for its channel's cooperative refund on the first url
// (the scheme's refund): the output also has "refund", the settle response it got back.

import { BatchSettlementEvmScheme } from "@x402/evm/batch-settlement/client";
import { toClientEvmSigner } from "@x402/evm";
import { decodePaymentResponseHeader, wrapFetchWithPayment, x402Client } from "@x402/fetch";
import { createPublicClient, http } from "viem";
import { privateKeyToAccount } from "viem/accounts";

const TIMEOUT_MS = 60000;
// The spend cap per payment in atomic units; the client deposits at most five times this.
const MAX_AMOUNT_PER_PAYMENT = "1000000";

function usage(message) {
  process.stderr.write(
    `${message}\nusage: X402_PAYER_KEY=0x... X402_RPC_URL=... node pay_channel.mjs <network> <asset> <count> <url> [<url> ...]\n`,
  );
  process.exit(2);
}

function decodeReceipt(raw) {
  if (!raw) return null;
  try {
    return decodePaymentResponseHeader(raw);
  } catch (error) {
    return { undecodable: String(error && error.message) };
  }
}

async function main() {
  const [network, asset, countText, ...urls] = process.argv.slice(2);
  const key = process.env.X402_PAYER_KEY;
  const rpcUrl = process.env.X402_RPC_URL;
  if (!key || !/^0x[0-9a-fA-F]{64}$/.test(key)) usage("X402_PAYER_KEY must be a 0x-prefixed 32-byte hex key");
  if (!rpcUrl) usage("X402_RPC_URL is required");
  if (!network || !asset || urls.length === 0) usage("network, asset and at least one url are required");
  const count = Number.parseInt(countText, 10);
  if (!Number.isSafeInteger(count) || count < 1 || String(count) !== countText) usage("count must be a positive integer");

  const account = privateKeyToAccount(key);
  const publicClient = createPublicClient({ transport: http(rpcUrl) });
  const signer = toClientEvmSigner(account, publicClient);
  const client = new x402Client();
  const scheme = new BatchSettlementEvmScheme(signer);
  client.register(network, scheme);
  client.setSpendControls({
    allowedAssets: [{ network, asset, maxAmountPerPayment: MAX_AMOUNT_PER_PAYMENT }],
  });

  const exchanges = [];
  const seen = async (input, init) => {
    const request = new Request(input, init);
    const paid = request.headers.has("payment-signature");
    const response = await fetch(request);
    exchanges.push({ url: request.url, paid, status: response.status });
    return response;
  };
  const pay = wrapFetchWithPayment(seen, client);

  const body = process.env.X402_REQUEST_BODY;
  const answers = [];
  let error = null;
  let refund = null;
  try {
    for (let i = 0; i < count; i += 1) {
      const url = urls[i % urls.length];
      const init = { signal: AbortSignal.timeout(TIMEOUT_MS) };
      if (body !== undefined) {
        init.method = "POST";
        init.headers = { "content-type": "application/json" };
        init.body = body;
      }
      const response = await pay(url, init);
      const raw = response.headers.get("payment-response");
      answers.push({
        url,
        status: response.status,
        body: await response.text(),
        paymentResponse: decodeReceipt(raw),
      });
    }
    if (process.env.X402_REFUND === "1") {
      refund = await scheme.refund(urls[0]);
    }
  } catch (caught) {
    error = String((caught && caught.stack) || caught);
  }
  process.stdout.write(`${JSON.stringify({ answers, exchanges, refund, error })}\n`);
}

await main();
