// The scaled-out stack through nginx, with the official socket.io client: sessions spread
// over the replicas, a resume on a live non-owner replica moves the session there, and a
// session whose replica is killed resumes on another with its files.
//   node tests/js/scale.js http://127.0.0.1:8080
// Prints {"step": "kill", "instance": …} and waits for a line on stdin once the replica is
// killed; ends with one JSON line {"ok": true, …}.
const assert = require("node:assert/strict");
const readline = require("node:readline");
const { io } = require("socket.io-client");

const url = process.argv[2];
const TIMEOUT = 30000;
const lines = readline.createInterface({ input: process.stdin });
const waiting = [];
lines.on("line", () => { const r = waiting.shift(); if (r) r(); });
const step = (name, extra = {}) => new Promise((resolve) => {
  waiting.push(resolve);
  console.log(JSON.stringify({ step: name, ...extra }));
});

function connect(auth) {
  const s = io(url, { transports: ["websocket"], reconnection: false, forceNew: true, auth });
  s.errors = [];
  s.on("sandpool:error", (e) => s.errors.push(e));
  return s;
}

// A session event, or the first error/connect error, within `ms`.
function session(auth, ms = TIMEOUT) {
  const s = connect(auth);
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { s.close(); reject(new Error("no session event")); }, ms);
    s.once("session", (sess) => { clearTimeout(t); s.session = sess; resolve(s); });
    s.once("connect_error", (e) => { clearTimeout(t); s.close(); reject(e); });
    s.once("sandpool:error", (e) => {
      if (e.code === "session_expired") { clearTimeout(t); s.close(); reject(new Error(`${e.code}: ${e.message}`)); }
    });
  });
}

const exec = (s, command) => s.timeout(TIMEOUT).emitWithAck("exec", { command });

async function resumeUntil(auth, accept, what, ms = TIMEOUT) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      const s = await session(auth, 5000);
      if (accept(s.session)) return s;
      s.close();
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what}: ${last}`);
}

(async () => {
  // Sessions spread over the replicas although they all come from one address.
  const opened = await Promise.all(Array.from({ length: 8 }, () => session()));
  const instances = [...new Set(opened.map((s) => s.session.instance))];
  assert.ok(instances.length >= 2, `every session on one replica: ${instances}`);

  const s = opened[0];
  const auth = { sessionId: s.session.sessionId, resumeToken: s.session.resumeToken };
  const owner = s.session.instance;
  const w = await exec(s, "echo kept-across-replicas > /workspace/f; echo ok");
  assert.equal(w.stdout, "ok\n", JSON.stringify(w));

  // A resume that lands on a live replica other than the owner: the session moves there.
  const t0 = Date.now();
  const moved = await resumeUntil(auth, (sess) => sess.instance !== owner, "resume on a non-owner");
  const handoverMs = Date.now() - t0;
  assert.equal(moved.session.sessionId, auth.sessionId);
  assert.equal(moved.session.resumed, true);
  const r1 = await exec(moved, "cat /workspace/f");
  assert.equal(r1.stdout, "kept-across-replicas\n", JSON.stringify(r1));

  // The replica serving it is killed; the client resumes through nginx on another one.
  const victim = moved.session.instance;
  await step("kill", { instance: victim });
  const t1 = Date.now();
  const failed = await resumeUntil(auth, (sess) => sess.instance !== victim, "resume after a kill");
  const failoverMs = Date.now() - t1;
  assert.equal(failed.session.sessionId, auth.sessionId);
  const r2 = await exec(failed, "cat /workspace/f");
  assert.equal(r2.stdout, "kept-across-replicas\n", JSON.stringify(r2));

  // Every other session still works where it is (or was moved), and ends cleanly.
  for (const o of opened.slice(1)) {
    if (o.session.instance === victim) continue;
    const r = await exec(o, "echo alive");
    assert.equal(r.stdout, "alive\n", JSON.stringify(r));
    await o.timeout(TIMEOUT).emitWithAck("session:end");
  }
  await failed.timeout(TIMEOUT).emitWithAck("session:end");
  console.log(JSON.stringify({ ok: true, instances, owner, victim, handoverMs, failoverMs }));
  process.exit(0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
