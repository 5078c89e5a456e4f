// Benchmarks of the scaled-out stack through nginx, with the official socket.io client.
//   node bench/scale-bench.js churn    URL SECONDS CONCURRENCY
//   node bench/scale-bench.js handover URL ROUNDS
//   node bench/scale-bench.js failover URL ROUNDS PROJECT
// Prints one JSON line of figures (milliseconds).
const { io } = require("socket.io-client");
const { execFileSync } = require("node:child_process");

const [, , mode, url, a, b, project] = process.argv;
const TIMEOUT = 30000;

function pct(xs, p) {
  if (!xs.length) return null;
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}
const summary = (xs) => ({ n: xs.length, p50: pct(xs, 50), p95: pct(xs, 95), p99: pct(xs, 99), max: pct(xs, 100) });

function session(auth, ms = 5000) {
  const s = io(url, { transports: ["websocket"], reconnection: false, forceNew: true, auth });
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { s.close(); reject(new Error("no session")); }, ms);
    s.once("session", (x) => { clearTimeout(t); s.session = x; s.handoutMs = performance.now() - t0; resolve(s); });
    s.once("connect_error", (e) => { clearTimeout(t); s.close(); reject(e); });
    s.on("sandpool:error", (e) => {
      if (["session_expired", "unavailable", "pool_exhausted", "queue_full"].includes(e.code)) {
        clearTimeout(t); s.close(); reject(new Error(e.code));
      }
    });
  });
}
const exec = (s, command) => s.timeout(TIMEOUT).emitWithAck("exec", { command });

async function resumeOn(auth, accept, ms = 15000) {
  const end = performance.now() + ms;
  let tries = 0;
  while (performance.now() < end) {
    tries += 1;
    try {
      const s = await session(auth);
      if (accept(s.session)) return { s, tries };
      s.close();
    } catch (_) { /* a dead replica, a refused resume: try again */ }
  }
  throw new Error("no resume in time");
}

async function churn(seconds, concurrency) {
  const end = performance.now() + seconds * 1000;
  const handouts = [];
  let failed = 0;
  const instances = new Set();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < end) {
      try {
        const s = await session(undefined, TIMEOUT);
        handouts.push(s.handoutMs);
        instances.add(s.session.instance);
        const r = await exec(s, "echo x");
        if (r.stdout !== "x\n") failed += 1;
        await s.timeout(TIMEOUT).emitWithAck("session:end");
        s.close();
      } catch (_) { failed += 1; }
    }
  }));
  return { sessions: handouts.length, perSecond: handouts.length / seconds, failed, replicasUsed: instances.size, handout: summary(handouts) };
}

async function handover(rounds) {
  const s = await session();
  const auth = { sessionId: s.session.sessionId, resumeToken: s.session.resumeToken };
  await exec(s, "echo kept > /workspace/f");
  let owner = s.session.instance;
  const moves = [];
  let attempts = 0;
  for (let i = 0; i < rounds; i++) {
    // Each attempt is a new connection through nginx; the one that reaches another replica
    // carries the hand-over. Its connect → `session` time is the figure.
    const { s: moved, tries } = await resumeOn(auth, (x) => x.instance !== owner);
    attempts += tries;
    moves.push(moved.handoutMs);
    const r = await exec(moved, "cat /workspace/f");
    if (r.stdout !== "kept\n") throw new Error("the file did not come along");
    owner = moved.session.instance;
  }
  return { handover: summary(moves), attempts };
}

function docker(...args) {
  return execFileSync("docker", args, { encoding: "utf8" }).trim();
}

async function failover(rounds) {
  const times = [];
  for (let i = 0; i < rounds; i++) {
    const s = await session(undefined, TIMEOUT);
    const auth = { sessionId: s.session.sessionId, resumeToken: s.session.resumeToken };
    await exec(s, `echo round-${i} > /workspace/f`);
    const victim = s.session.instance;
    const t0 = performance.now();
    docker("kill", victim);
    const { s: back } = await resumeOn(auth, (x) => x.instance !== victim);
    const r = await exec(back, "cat /workspace/f");
    if (r.stdout !== `round-${i}\n`) throw new Error("files lost in failover");
    times.push(performance.now() - t0);
    await back.timeout(TIMEOUT).emitWithAck("session:end");
    back.close();
    // Bring the replica back (same container, same instance id: it adopts what it left).
    docker("start", victim);
    const deadline = Date.now() + 60000;
    for (;;) {
      const ip = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", victim);
      try {
        const res = await fetch(`http://${ip}:3000/readyz`);
        if (res.ok) break;
      } catch (_) { /* not up yet */ }
      if (Date.now() > deadline) throw new Error(`replica ${victim} did not come back`);
      await new Promise((r2) => setTimeout(r2, 200));
    }
  }
  return { failover: summary(times), project };
}

(async () => {
  let out;
  if (mode === "churn") out = await churn(Number(a), Number(b));
  else if (mode === "handover") out = await handover(Number(a));
  else if (mode === "failover") out = await failover(Number(a));
  else throw new Error(`unknown mode ${mode}`);
  console.log(JSON.stringify(out));
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
