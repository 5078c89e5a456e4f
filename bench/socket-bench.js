// Socket-level measurements with the official socket.io client, driven by benches/sandpool.rs.
// Usage: node socket-bench.js <mode> <url> [args...]; prints one JSON line.
//   handout <n> <concurrency>   connect → `session`, and connect → ack of a first `exec true`
//   churn <seconds> <workers>   sessions that connect, exec once and end, back to back
//   hold <n>                    opens n sessions, prints {"held": n}, then waits for stdin EOF
"use strict";
const { io } = require("socket.io-client");

const [, , mode, url, a, b] = process.argv;
const now = () => Number(process.hrtime.bigint()) / 1e6;

function open() {
  return io(url, { transports: ["websocket"], reconnection: false, forceNew: true });
}

function once(s, ev, ms = 60000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timeout waiting for ${ev}`)), ms);
    s.once(ev, (v) => { clearTimeout(t); resolve(v); });
    s.once("error", (e) => { clearTimeout(t); reject(new Error(`${e.code}: ${e.message}`)); });
  });
}

// One session: returns {handoutMs, firstExecMs, acquireMs} and ends it.
async function oneSession() {
  const t0 = now();
  const s = open();
  try {
    const sess = await once(s, "session");
    const t1 = now();
    const r = await s.timeout(60000).emitWithAck("exec", { command: "true" });
    const t2 = now();
    if (!r.ok) throw new Error(`exec: ${r.error.code}`);
    await s.timeout(60000).emitWithAck("session:end");
    return { handoutMs: t1 - t0, firstExecMs: t2 - t0, acquireMs: sess.acquireMs };
  } finally {
    s.disconnect();
  }
}

async function handout(n, concurrency) {
  const results = [];
  let failures = 0;
  for (let done = 0; done < n; done += concurrency) {
    const batch = Math.min(concurrency, n - done);
    const rs = await Promise.allSettled(Array.from({ length: batch }, oneSession));
    for (const r of rs) {
      if (r.status === "fulfilled") results.push(r.value); else { failures++; console.error(String(r.reason)); }
    }
    // Let the pool scrub what came back before the next wave.
    await new Promise((r) => setTimeout(r, 400));
  }
  return {
    handoutMs: results.map((r) => r.handoutMs),
    firstExecMs: results.map((r) => r.firstExecMs),
    acquireMs: results.map((r) => r.acquireMs),
    failures,
  };
}

async function churn(seconds, workers) {
  const end = now() + seconds * 1000;
  let sessions = 0, failures = 0;
  const errors = {};
  async function worker() {
    while (now() < end) {
      try { await oneSession(); sessions++; } catch (e) { failures++; errors[e.message] = (errors[e.message] || 0) + 1; }
    }
  }
  const t0 = now();
  await Promise.all(Array.from({ length: workers }, worker));
  const elapsed = (now() - t0) / 1000;
  return { sessions, failures, errors, seconds: elapsed, perSecond: sessions / elapsed };
}

async function hold(n) {
  const sockets = [];
  const batch = 50;
  for (let i = 0; i < n; i += batch) {
    const group = Array.from({ length: Math.min(batch, n - i) }, () => { const s = open(); sockets.push(s); return once(s, "session"); });
    await Promise.all(group);
  }
  console.log(JSON.stringify({ held: sockets.length }));
  await new Promise((resolve) => { process.stdin.on("end", resolve); process.stdin.resume(); });
  for (const s of sockets) s.disconnect();
  return null;
}

(async () => {
  let out;
  if (mode === "handout") out = await handout(Number(a), Number(b));
  else if (mode === "churn") out = await churn(Number(a), Number(b));
  else if (mode === "hold") out = await hold(Number(a));
  else throw new Error(`unknown mode ${mode}`);
  if (out) console.log(JSON.stringify(out));
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
