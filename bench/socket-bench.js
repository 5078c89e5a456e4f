// Socket-level measurements with the official socket.io client, driven by benches/sandpool.rs.
// Usage: node socket-bench.js <mode> <url> [args...]; prints one JSON line.
//   handout <n> <concurrency>   connect → `session` (then the session ends), in waves
//   firstexec <n> <concurrency> connect → ack of a first `exec true`, in waves
//   churn <seconds> <workers>   sessions that connect, exec once and end, back to back
//   hold <n>                    opens n sessions, prints {"held": n}, then waits for stdin EOF
//   rtt <n> [setup]             one session, n sequential `exec true`: each ack's round trip
//                               (after `setup`, a shell command run once first, if given)
//   fsio <mib> <chunkMiB> <rounds>  one session: a <mib> MiB file written with `fs:write` and
//                               read back with `fs:read` in chunks (with `offset`), per round
//   cycle <n>                   n sessions one at a time: connect → exec `echo hi` → end acked
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
    s.once("sandpool:error", (e) => { clearTimeout(t); reject(new Error(`${e.code}: ${e.message}`)); });
  });
}

// One session: connect → `session` (handoutMs), optionally a first `exec true` (firstExecMs,
// from the connect), then `session:end`. Waves start together at `gate`.
async function oneSession(withExec, gate) {
  await gate;
  const t0 = now();
  const s = open();
  try {
    const sess = await once(s, "session");
    const t1 = now();
    let t2 = null;
    if (withExec) {
      const r = await s.timeout(60000).emitWithAck("exec", { command: "true" });
      t2 = now();
      if (!r.ok) throw new Error(`exec: ${r.error.code}`);
    }
    await s.timeout(60000).emitWithAck("session:end");
    return { handoutMs: t1 - t0, firstExecMs: t2 === null ? null : t2 - t0, acquireMs: sess.acquireMs };
  } finally {
    s.disconnect();
  }
}

// Waits until the pool has `n` idle sandboxes, so every wave starts from a warm pool.
async function waitIdle(n) {
  for (;;) {
    const pool = await (await fetch(`${url}/api/pool`)).json();
    if (pool.idle >= n && pool.scrubbing === 0) return;
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function waves(n, concurrency, withExec) {
  const results = [];
  let failures = 0;
  for (let done = 0; done < n; done += concurrency) {
    const batch = Math.min(concurrency, n - done);
    await waitIdle(batch);
    let go;
    const gate = new Promise((r) => { go = r; });
    const wave = Promise.allSettled(Array.from({ length: batch }, () => oneSession(withExec, gate)));
    go();
    for (const r of await wave) {
      if (r.status === "fulfilled") results.push(r.value); else { failures++; console.error(String(r.reason)); }
    }
  }
  return {
    handoutMs: results.map((r) => r.handoutMs),
    firstExecMs: results.filter((r) => r.firstExecMs !== null).map((r) => r.firstExecMs),
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
      try { await oneSession(true, null); sessions++; } catch (e) { failures++; errors[e.message] = (errors[e.message] || 0) + 1; }
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

// Round trips of `exec true` in one live session, one at a time.
async function rtt(n, setup) {
  const s = open();
  await once(s, "session");
  if (setup) {
    const r = await s.timeout(300000).emitWithAck("exec", { command: setup, timeoutMs: 120000 });
    if (!r.ok || r.exitCode !== 0) throw new Error(`setup failed: ${JSON.stringify(r).slice(0, 500)}`);
  }
  const samples = [];
  let failures = 0;
  for (let i = 0; i < n; i++) {
    const t0 = now();
    const r = await s.timeout(60000).emitWithAck("exec", { command: "true" });
    if (r.ok && r.exitCode === 0) samples.push(now() - t0); else failures++;
  }
  await s.timeout(60000).emitWithAck("session:end");
  s.disconnect();
  return { rttMs: samples, failures };
}

// Files through Socket.IO: `fs:write` of a <mib> MiB file in <chunk> MiB binary chunks (the
// first without `offset`, which creates the file; then each at its offset), then `fs:read`
// of it in slices of the same size; the SHA-256 of what came back is checked after the clock
// stops. The file is deleted after each round (not timed).
async function fsio(mib, chunkMiB, rounds) {
  const crypto = require("node:crypto");
  const size = mib * 1024 * 1024;
  const chunk = Math.floor(chunkMiB * 1024 * 1024);
  const data = crypto.randomBytes(size);
  const want = crypto.createHash("sha256").update(data).digest("hex");
  const s = open();
  await once(s, "session");
  const uploadMs = [], downloadMs = [];
  const checkpoints = { taken: 0, none: 0, errors: {} };
  const path = "bench/fsio.bin";
  const ack = async (ev, payload) => {
    const r = await s.timeout(120000).emitWithAck(ev, payload);
    if (!r.ok) throw new Error(`${ev}: ${JSON.stringify(r.error)}`);
    return r;
  };
  for (let round = 0; round < rounds; round++) {
    let t0 = now();
    for (let off = 0; off < size; off += chunk) {
      const content = data.subarray(off, Math.min(off + chunk, size));
      const r = await ack("fs:write", off === 0 ? { path, content } : { path, content, offset: off });
      if (r.checkpoint) checkpoints.taken++;
      else {
        checkpoints.none++;
        const code = (r.checkpointError && r.checkpointError.code) || "off";
        checkpoints.errors[code] = (checkpoints.errors[code] || 0) + 1;
      }
    }
    uploadMs.push(now() - t0);
    const parts = [];
    t0 = now();
    for (let off = 0; off < size; off += chunk) {
      const r = await ack("fs:read", { path, offset: off, length: Math.min(chunk, size - off) });
      parts.push(Buffer.from(r.content));
    }
    downloadMs.push(now() - t0);
    const got = Buffer.concat(parts);
    const sha = crypto.createHash("sha256").update(got).digest("hex");
    if (got.length !== size || sha !== want) throw new Error(`fs:read returned ${got.length} bytes, sha ${sha}, want ${size} bytes, sha ${want}`);
    await ack("fs:delete", { path });
  }
  await s.timeout(60000).emitWithAck("session:end");
  s.disconnect();
  return { bytes: size, chunkBytes: chunk, uploadMs, downloadMs, checkpoints };
}

// Whole sessions one at a time: connect → `session` → exec `echo hi` → `session:end` acked.
async function cycle(n) {
  const samples = [];
  let failures = 0;
  for (let i = 0; i < n; i++) {
    const t0 = now();
    const s = open();
    try {
      await once(s, "session");
      const r = await s.timeout(60000).emitWithAck("exec", { command: "echo hi" });
      if (!r.ok || r.stdout !== "hi\n") throw new Error("exec failed");
      await s.timeout(60000).emitWithAck("session:end");
      samples.push(now() - t0);
    } catch (e) {
      failures++;
      console.error(String(e));
    } finally {
      s.disconnect();
    }
  }
  return { cycleMs: samples, failures };
}

(async () => {
  let out;
  if (mode === "handout") out = await waves(Number(a), Number(b), false);
  else if (mode === "firstexec") out = await waves(Number(a), Number(b), true);
  else if (mode === "churn") out = await churn(Number(a), Number(b));
  else if (mode === "hold") out = await hold(Number(a));
  else if (mode === "rtt") out = await rtt(Number(a), b);
  else if (mode === "fsio") out = await fsio(Number(a), Number(b), Number(process.argv[6] || 1));
  else if (mode === "cycle") out = await cycle(Number(a));
  else throw new Error(`unknown mode ${mode}`);
  if (out) console.log(JSON.stringify(out));
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
