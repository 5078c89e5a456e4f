// Scenarios driven with the official socket.io client (v4) against a running sandpool.
// Usage: node scenarios.js <scenario> <url>
// Each scenario asserts with node:assert and prints one JSON line `{"ok":true,...}` at the end;
// a failure exits non-zero with the assertion. Lines `{"step":NAME}` ask the Rust test to act
// (change a fault, inspect the server); the script then waits for a line on stdin.
"use strict";
const assert = require("node:assert/strict");
const readline = require("node:readline");
const { io } = require("socket.io-client");

const [, , scenario, url] = process.argv;
const sockets = [];
const TIMEOUT = 60000;

const lines = readline.createInterface({ input: process.stdin });
const waiting = [];
lines.on("line", (l) => { const w = waiting.shift(); if (w) w(l); });
function step(name, extra = {}) {
  return new Promise((resolve) => {
    waiting.push(resolve);
    console.log(JSON.stringify({ step: name, ...extra }));
  });
}

function connect(auth, to = url) {
  const s = io(to, { transports: ["websocket"], reconnection: false, forceNew: true, auth });
  sockets.push(s);
  s.errors = [];
  s.outputs = [];
  s.results = [];
  s.requests = [];
  s.expired = [];
  s.on("sandpool:error", (e) => s.errors.push(e));
  s.on("tool:output", (o) => s.outputs.push(o));
  s.on("tool:result", (r) => s.results.push(r));
  s.on("tool:request", (r) => s.requests.push(r));
  s.on("session:expired", (e) => s.expired.push(e));
  s.on("session", (x) => { s.session = x; });
  return s;
}

function once(s, event, ms = TIMEOUT) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timeout waiting for ${event}`)), ms);
    s.once(event, (v) => { clearTimeout(t); resolve(v); });
  });
}

async function until(pred, what, ms = TIMEOUT) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timeout waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// A connection and its session; fails at once if the server disconnects it instead.
async function session(auth, to = url, ms = TIMEOUT) {
  const s = connect(auth, to);
  s.session = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("timeout waiting for session")), ms);
    s.once("session", (x) => { clearTimeout(t); resolve(x); });
    s.once("disconnect", (reason) => {
      clearTimeout(t);
      reject(new Error(`disconnected (${reason}) instead of a session: ${JSON.stringify(s.errors)}`));
    });
  });
  return s;
}

// A refused connection: the events it sees, in order, are `connect`, one `sandpool:error`
// with `code`, and the server's disconnect. Returns the error.
async function refused(code, auth, what, to = url) {
  const s = connect(auth, to);
  const seen = [];
  s.on("connect", () => seen.push("connect"));
  s.on("connect_error", (e) => seen.push("connect_error " + e.message));
  s.on("sandpool:error", (e) => seen.push("sandpool:error " + e.code));
  const reason = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what}: timeout waiting for the refusal`)), TIMEOUT);
    s.once("disconnect", (r) => { clearTimeout(t); resolve(r); });
    s.once("session", () => { clearTimeout(t); reject(new Error(`${what}: got a session, not ${code}`)); });
  });
  assert.deepEqual(seen, ["connect", "sandpool:error " + code], `${what}: ${JSON.stringify(s.errors)}`);
  assert.equal(reason, "io server disconnect", what);
  return s.errors[0];
}

const ack = (s, ev, data) => s.timeout(TIMEOUT).emitWithAck(ev, data);

async function exec(s, command, extra = {}) {
  return ack(s, "exec", { command, ...extra });
}

const scenarios = {
  // connect → session; exec streams and acks; message → request → approve → output + result;
  // reject; used and unknown callIds; unknown events; bad requests with and without ack; end.
  async basics() {
    // Events sent the moment the socket connects (before `session`) are not lost: they wait
    // for the session. Several sockets at once, to give the race a chance (the pool holds 6).
    const early = await Promise.all(Array.from({ length: 4 }, () => new Promise((resolve, reject) => {
      const e = connect();
      e.on("connect", () => {
        e.emit("message", "echo early-proposal");
        e.timeout(TIMEOUT).emitWithAck("exec", { command: "echo early" }).then((r) => resolve([e, r]), reject);
      });
    })));
    for (const [e, r] of early) {
      assert.equal(r.stdout, "early\n");
      await until(() => e.requests.length === 1, "tool:request for a message sent at connect");
      await ack(e, "session:end");
    }

    const s = await session();
    assert.match(s.session.sessionId, /^[0-9a-f-]{36}$/);
    assert.equal(s.session.resumeToken.length, 64);
    assert.equal(s.session.resumed, false);
    assert.equal(typeof s.session.acquireMs, "number");
    assert.ok(s.session.workspaceId.length >= 12);

    const r = await exec(s, "echo out; echo err >&2; id -u; pwd; exit 3");
    assert.equal(r.ok, true);
    assert.equal(r.status, "ok");
    assert.equal(r.exitCode, 3);
    assert.equal(r.stdout, "out\n1000\n/workspace\n");
    assert.equal(r.stderr, "err\n");
    assert.equal(r.truncated, false);
    const streamed = s.outputs.filter((o) => o.callId === r.callId);
    assert.equal(streamed.filter((o) => o.stream === "stdout").map((o) => o.data).join(""), r.stdout);
    assert.equal(streamed.filter((o) => o.stream === "stderr").map((o) => o.data).join(""), r.stderr);

    // Chat: propose, approve, stream, result.
    const m = await ack(s, "message", "echo approved-run > /workspace/a; cat /workspace/a");
    assert.equal(m.ok, true);
    await until(() => s.requests.length === 1, "tool:request");
    const req = s.requests[0];
    assert.deepEqual(req.args, { command: "echo approved-run > /workspace/a; cat /workspace/a" });
    assert.equal(req.tool, "exec");
    assert.equal(m.callIds[0], req.callId);
    const ap = await ack(s, "tool:approval", { callId: req.callId, approved: true });
    assert.deepEqual(ap, { ok: true, callId: req.callId });
    await until(() => s.results.some((x) => x.callId === req.callId), "tool:result");
    const res = s.results.find((x) => x.callId === req.callId);
    assert.equal(res.status, "ok");
    assert.equal(res.exitCode, 0);
    assert.equal(s.outputs.filter((o) => o.callId === req.callId).map((o) => o.data).join(""), "approved-run\n");

    // Rejection, with {text} form and no ack: nothing runs.
    s.emit("message", { text: "touch /workspace/rejected" });
    await until(() => s.requests.length === 2, "second tool:request");
    const req2 = s.requests[1];
    s.emit("tool:approval", { callId: req2.callId, approved: false });
    await until(() => s.results.some((x) => x.callId === req2.callId), "rejected result");
    assert.equal(s.results.find((x) => x.callId === req2.callId).status, "rejected");
    const ls = await exec(s, "ls /workspace");
    assert.equal(ls.stdout, "a\n", "the rejected command did not run");

    // A callId is used once; unknown ones are not found.
    const again = await ack(s, "tool:approval", { callId: req.callId, approved: true });
    assert.equal(again.error.code, "not_found");
    const unknown = await ack(s, "tool:approval", { callId: "nope", approved: true });
    assert.equal(unknown.error.code, "not_found");
    s.emit("tool:approval", { callId: "nope-no-ack", approved: false });
    await until(() => s.errors.some((e) => e.code === "not_found" && e.callId === "nope-no-ack"), "not_found event");

    // Unknown events are ignored; the socket stays and works.
    s.emit("no-such-event", { x: 1 });
    s.emit("exec"); // no payload, no ack
    await until(() => s.errors.some((e) => e.code === "bad_request"), "bad_request event");

    // Every kind of bad request gets bad_request in its ack.
    const bads = [
      ["exec", { command: 5 }], ["exec", {}], ["exec", "ls"], ["exec", { command: "" }],
      ["exec", { command: "ls", timeoutMs: 0 }], ["exec", { command: "ls", timeoutMs: -5 }],
      ["exec", { command: "ls", timeoutMs: 10 ** 9 }], ["exec", { command: "ls", timeoutMs: "9" }],
      ["exec", { command: "x".repeat(16 * 1024 + 1) }],
      ["message", ""], ["message", "   "], ["message", { text: 4 }], ["message", 17], ["message", null],
      ["tool:approval", { callId: "x" }], ["tool:approval", { approved: true }], ["tool:approval", "yes"],
    ];
    for (const [ev, data] of bads) {
      const a = await ack(s, ev, data);
      assert.equal(a.ok, false, `${ev} ${JSON.stringify(data).slice(0, 60)}`);
      assert.equal(a.error.code, "bad_request", `${ev} ${JSON.stringify(data).slice(0, 60)}`);
      assert.equal(typeof a.error.message, "string");
    }
    assert.ok(s.connected, "bad requests never close the socket");
    const still = await exec(s, "echo still-here");
    assert.equal(still.stdout, "still-here\n");

    const end = await ack(s, "session:end");
    assert.deepEqual(end, { ok: true, sessionId: s.session.sessionId });
    await until(() => !s.connected, "disconnect after end");
    return { sessionId: s.session.sessionId, workspaceId: s.session.workspaceId };
  },

  // Events the official client sends for strings cut in the middle of an emoji (lone UTF-16
  // surrogates) and event names with escapes: typed errors, never a closed socket.
  async odd_events() {
    const s = await session();
    // A closed socket fails the wait at once, saying so, instead of timing out.
    s.on("disconnect", (reason) => { s.dropped = reason; });
    const error = (name, what) => until(() => {
      assert.equal(s.dropped, undefined, `the server closed the socket after ${what}`);
      return s.errors.some((e) => e.code === "bad_request" && e.message.includes(name));
    }, `bad_request for ${what}`);
    // The packet of the issue, exactly: JSON.stringify writes the lone surrogate as an escape.
    const sent = [];
    s.io.engine.on("packetCreate", (p) => sent.push(p.data));
    s.emit("x\ud800", {});
    assert.equal(sent.at(-1), '2["x\\ud800",{}]');
    await error("x\ufffd", "a lone high surrogate");
    // The same in a binary event (an attachment makes it a `5` packet), with and without ack.
    s.emit("bin\ud800", new Uint8Array([1, 2, 3]));
    assert.ok(sent.includes('51-["bin\\ud800",{"_placeholder":true,"num":0}]'), JSON.stringify(sent));
    await error("bin\ufffd", "a binary event");
    const bin = await ack(s, "bin\udfff", new Uint8Array([4]));
    assert.equal(bin.error.code, "bad_request");
    const low = await ack(s, "\udc00y", { a: "\ud800" });
    assert.equal(low.ok, false);
    assert.equal(low.error.code, "bad_request");
    const escaped = await ack(s, "a\nb\"c", {});
    assert.equal(escaped.error.code, "bad_request");
    // A lone surrogate in a command's text arrives as U+FFFD and the command runs.
    const lone = await exec(s, "printf '%s' 'cut\ud83d'");
    assert.equal(lone.status, "ok", JSON.stringify(lone));
    assert.equal(lone.stdout, "cut\ufffd");
    // A valid pair is kept.
    const pair = await exec(s, "printf '%s' '\ud83d\ude00'");
    assert.equal(pair.stdout, "\u{1F600}");
    assert.ok(s.connected, "odd events never close the socket");
    const still = await exec(s, "echo still-here");
    assert.equal(still.stdout, "still-here\n");
    await ack(s, "session:end");
    return {};
  },

  // Authentication (tests/auth.rs mints the tokens and passes them in TOKEN_* variables).
  // A refusal, exactly as a client sees it: `connect`, one `sandpool:error` with the code,
  // then the server's disconnect; never a `session`, never a `connect_error`.
  async auth_refused() {
    const cases = JSON.parse(process.env.REFUSALS);
    const messages = {};
    for (const { what, auth } of cases) {
      messages[what] = (await refused("unauthorized", auth ?? undefined, what)).message;
    }
    return { messages };
  },

  // A valid token: a session that runs a command; the same client without it: refused.
  async auth_valid() {
    const s = await session({ token: process.env.TOKEN_ALICE });
    assert.deepEqual(s.errors, []);
    const r = await exec(s, "echo hello $(id -u)");
    assert.equal(r.stdout, "hello 1000\n");
    await ack(s, "session:end");
    await refused("unauthorized", undefined, "the same client without its token");
    return {};
  },

  // A session opened with alice's token resumes only with a token of alice: bob's, one
  // without a subject and none at all are refused; the session is untouched by the refusals.
  async auth_resume() {
    const env = process.env;
    const a = await session({ token: env.TOKEN_ALICE });
    await exec(a, "echo kept > /workspace/f");
    const resume = { sessionId: a.session.sessionId, resumeToken: a.session.resumeToken };
    a.close();
    await refused("unauthorized", { ...resume, token: env.TOKEN_BOB }, "bob's token");
    await refused("unauthorized", { ...resume, token: env.TOKEN_NO_SUB }, "a token without sub");
    await refused("unauthorized", { ...resume }, "no token");
    const back = await session({ ...resume, token: env.TOKEN_ALICE });
    assert.deepEqual(back.errors, []);
    assert.equal(back.session.sessionId, a.session.sessionId);
    assert.equal(back.session.resumed, true);
    assert.equal((await exec(back, "cat /workspace/f")).stdout, "kept\n");
    await ack(back, "session:end");
    return {};
  },

  // Alice may hold 2 sessions over both replicas (URL and URL2, one Redis): one on each, then
  // a third is refused on either; bob is not affected; ending one frees a slot.
  async auth_limit() {
    const env = process.env;
    const on = (u, auth) => session(auth, u);
    const a1 = await on(url, { token: env.TOKEN_ALICE });
    const a2 = await on(env.URL2, { token: env.TOKEN_ALICE });
    assert.notEqual(a1.session.instance, a2.session.instance, "two replicas");
    const tooMany = [
      await refused("too_many_sessions", { token: env.TOKEN_ALICE }, "third on the first replica", url),
      await refused("too_many_sessions", { token: env.TOKEN_ALICE }, "third on the second replica", env.URL2),
    ];
    const b = await on(url, { token: env.TOKEN_BOB });
    await ack(a2, "session:end");
    const a3 = await on(url, { token: env.TOKEN_ALICE });
    for (const s of [a1, a3, b]) await ack(s, "session:end");
    return { message: tooMany[0].message };
  },

  // Every way a session or an open ends gives its slot back (alice may hold 1; the pool has
  // one sandbox): a failed open, the janitor's expiry of a dropped session; and a slot
  // survives the store losing its data (the record is written again with its subject).
  async auth_freed() {
    const alice = { token: process.env.TOKEN_ALICE };
    // A failed open: the only sandbox is taken, alice's open gets pool_exhausted.
    const other = await session({ token: process.env.TOKEN_ANON });
    await refused("pool_exhausted", alice, "open with no sandbox free");
    await ack(other, "session:end");
    await until(() => !other.connected, "other ended");
    // ...and alice's slot is free again.
    const a1 = await session(alice);
    // The store loses everything; the record comes back with its subject, and still counts.
    await step("lose-store");
    await refused("too_many_sessions", alice, "second session after the store's restart");
    // A dropped session expires (grace 1 s): its slot is free once the janitor ended it.
    a1.close();
    const end = Date.now() + 30000;
    for (;;) {
      const s = connect(alice);
      const got = await Promise.race([once(s, "session"), once(s, "disconnect")]);
      if (s.session) break;
      assert.deepEqual(s.errors.map((e) => e.code), ["too_many_sessions"], JSON.stringify(got));
      assert.ok(Date.now() < end, "the expired session's slot was never freed");
      await new Promise((r) => setTimeout(r, 200));
    }
    return {};
  },

  // A flood of connect-and-drop clients (no authentication): half drop the moment they are
  // connected, before their session is set up, half once it is. The test then counts what is
  // held.
  async flood_detached() {
    const n = Number(process.env.FLOOD);
    const early = Array.from({ length: n / 2 }, () => new Promise((resolve) => {
      const s = connect();
      s.on("connect", () => { s.close(); resolve(); });
    }));
    const late = Array.from({ length: n / 2 }, () => session().then((s) => s.close()));
    await Promise.all([...early, ...late]);
    await step("flooded");
    return {};
  },

  // Every sandbox is held by a dropped connection (grace 300 s): a live client does not wait
  // for the grace, it gets one of theirs.
  async detached_yield() {
    const dropped = [await session(), await session()];
    for (const s of dropped) s.close();
    await step("dropped");
    const started = Date.now();
    const live = await session(undefined, url, 15000);
    assert.deepEqual(live.errors, []);
    const waitedMs = Date.now() - started;
    assert.equal((await exec(live, "ls -A /workspace")).stdout, "", "a scrubbed sandbox");
    await step("served");
    return { waitedMs };
  },

  // A client that leaves, leaves (issue 14, item 8). LIVE sessions fill the pool; FLOOD
  // anonymous sockets wait in its line, then all drop at once (half with a socket.io
  // disconnect, half by cutting the connection); NEWCOMERS real clients join the line; as many
  // live sessions end. Returns each newcomer's place in the line and how long after the frees
  // began it heard `session` (null: not within SERVE_WAIT_MS).
  async flood_queue() {
    const [live, flood, comers, serveWait] = ["LIVE", "FLOOD", "NEWCOMERS", "SERVE_WAIT_MS"]
      .map((k) => Number(process.env[k]));
    const held = await Promise.all(Array.from({ length: live }, () => session()));
    const dropped = await Promise.all(Array.from({ length: flood }, () => {
      const s = connect();
      return once(s, "queue").then(() => s);
    }));
    await step("flooded");
    dropped.forEach((s, i) => (i % 2 ? s.io.engine.close() : s.close()));
    await step("dropped");
    const newcomers = Array.from({ length: comers }, () => {
      const s = connect();
      s.on("session", () => { s.sessionAt = Date.now(); });
      return s;
    });
    const places = await Promise.all(newcomers.map((s) => once(s, "queue")));
    await step("queued");
    const freedAt = Date.now();
    const ends = await Promise.all(held.slice(0, comers).map((s) => ack(s, "session:end")));
    for (const e of ends) assert.equal(e.ok, true);
    const waitedMs = await Promise.all(newcomers.map((s) =>
      until(() => s.sessionAt, "session", serveWait).then(() => s.sessionAt - freedAt, () => null)));
    await step("served");
    return {
      positions: places.map((p) => p.position),
      waitedMs,
      errors: newcomers.flatMap((s) => s.errors),
    };
  },

  // Another session cannot approve a session's tool call.
  async cross_session() {
    const a = await session();
    const b = await session();
    assert.notEqual(a.session.workspaceId, b.session.workspaceId);
    a.emit("message", "echo mine");
    await until(() => a.requests.length === 1, "request");
    const callId = a.requests[0].callId;
    const stolen = await ack(b, "tool:approval", { callId, approved: true });
    assert.equal(stolen.error.code, "not_found");
    assert.equal(b.outputs.length + a.outputs.length, 0, "nothing ran");
    const mine = await ack(a, "tool:approval", { callId, approved: true });
    assert.equal(mine.ok, true);
    await until(() => a.results.length === 1, "result");
    assert.equal(a.results[0].status, "ok");
    assert.equal(b.results.length, 0);
    return {};
  },

  // Resume with the token: same sandbox, files intact. A wrong token never gets the session.
  async resume() {
    const a = await session();
    await exec(a, "echo keep > /workspace/kept");
    const { sessionId, resumeToken, workspaceId } = a.session;
    a.disconnect();
    await new Promise((r) => setTimeout(r, 200));

    const back = await session({ sessionId, resumeToken });
    assert.equal(back.session.resumed, true);
    assert.equal(back.session.sessionId, sessionId);
    assert.equal(back.session.workspaceId, workspaceId);
    assert.equal((await exec(back, "cat /workspace/kept")).stdout, "keep\n");

    const thief = connect({ sessionId, resumeToken: "f".repeat(64) });
    const got = await once(thief, "session");
    assert.equal(got.resumed, false);
    assert.notEqual(got.sessionId, sessionId);
    assert.notEqual(got.workspaceId, workspaceId);
    await until(() => thief.errors.some((e) => e.code === "session_expired"), "session_expired error");
    assert.equal((await exec(thief, "ls -A /workspace")).stdout, "");
    // The real owner is unaffected.
    assert.equal((await exec(back, "cat /workspace/kept")).stdout, "keep\n");
    const expired = connect({ sessionId: "00000000-0000-0000-0000-000000000000", resumeToken: "x" });
    await once(expired, "session");
    await until(() => expired.errors.some((e) => e.code === "session_expired"), "unknown session");
    const malformed = connect({ sessionId: 7 });
    await once(malformed, "session");
    await until(() => malformed.errors.some((e) => e.code === "bad_request"), "malformed auth");
    return {};
  },

  // session:end gives the sandbox back; the next session on it sees nothing of the last.
  async end_then_next() {
    const a = await session();
    await exec(a, "echo secret > /workspace/s; echo s2 > /tmp/s; echo s3 > ~/.s; nohup sleep 777 >/dev/null 2>&1 & setsid sleep 778 >/dev/null 2>&1 &");
    assert.equal((await exec(a, "ps -o args | grep -c '^sleep 77'")).stdout, "2\n");
    const ws = a.session.workspaceId;
    await ack(a, "session:end");
    const b = await session();
    assert.equal(b.session.workspaceId, ws, "a pool of one hands out the same sandbox");
    const seen = await exec(b, "ls -A /workspace /tmp ~ | grep -v ':$' | grep -c .; ps -o args | grep -c '^sleep 77'; true");
    assert.equal(seen.stdout, "0\n0\n", "no file and no process of the last session");
    return {};
  },

  // 12 slow commands at once: at most 5 run, the rest are refused with too_many_requests.
  async flood() {
    const s = await session();
    const acks = await Promise.all(Array.from({ length: 12 }, () => exec(s, "sleep 1; echo done")));
    const ok = acks.filter((a) => a.ok);
    const refused = acks.filter((a) => !a.ok);
    assert.equal(ok.length, 5);
    assert.ok(ok.every((a) => a.stdout === "done\n"));
    assert.equal(refused.length, 7);
    assert.ok(refused.every((a) => a.error.code === "too_many_requests"));
    // Without an ack, the refusal is an error event. Five commands are surely running once
    // each has printed.
    const before = s.outputs.length;
    for (let i = 0; i < 5; i++) exec(s, "echo started; sleep 2").catch(() => {});
    await until(() => s.outputs.slice(before).filter((o) => o.data === "started\n").length === 5, "five running");
    s.emit("exec", { command: "true" });
    await until(() => s.errors.some((e) => e.code === "too_many_requests"), "too_many_requests event");
    return {};
  },

  // 100 MB of output: capped at 1 MiB per stream and marked truncated.
  async big_output() {
    const s = await session();
    await step("measure-before");
    const r = await exec(s, "head -c 100000000 /dev/zero | tr '\\0' a; echo tail >&2", { timeoutMs: 120000 });
    assert.equal(r.status, "ok");
    assert.equal(r.truncated, true);
    assert.equal(r.stdout.length, 1 << 20);
    assert.equal(r.stderr, "tail\n");
    const streamed = s.outputs.filter((o) => o.callId === r.callId && o.stream === "stdout").reduce((n, o) => n + o.data.length, 0);
    assert.equal(streamed, 1 << 20);
    await step("measure-after");
    return {};
  },

  // A command past its timeout has its whole process tree killed.
  async timeout() {
    const s = await session();
    const r = await exec(s, "sleep 300 & (sleep 301 &) ; sleep 302", { timeoutMs: 700 });
    assert.equal(r.status, "timeout");
    assert.equal(r.exitCode, null);
    const left = await exec(s, "ps -o args | grep -c '^sleep 30'; true");
    assert.equal(left.stdout, "0\n");
    return {};
  },

  // Many sessions connecting at once all get a sandbox.
  async many() {
    const n = Number(process.env.SESSIONS || 200);
    const started = Date.now();
    const all = await Promise.all(Array.from({ length: n }, () => session()));
    const ms = Date.now() - started;
    assert.equal(new Set(all.map((s) => s.session.workspaceId)).size, n, "distinct sandboxes");
    assert.ok(all.every((s) => s.errors.length === 0), "no errors");
    const probe = await Promise.all(all.slice(0, 10).map((s) => exec(s, "echo $((6*7))")));
    assert.ok(probe.every((p) => p.stdout === "42\n"));
    return { sessions: n, ms };
  },

  // pool_exhausted: the only sandbox is taken.
  async exhausted() {
    const a = await session();
    const b = connect();
    const err = await once(b, "sandpool:error");
    assert.equal(err.code, "pool_exhausted");
    await until(() => !b.connected, "exhausted socket closed");
    assert.ok(a.connected);
    return {};
  },

  // Docker faults, switched by the Rust test between steps. Commands, ends and hand-outs
  // from the idle set go through the sandboxes' supervisors and need no Docker call, so they
  // keep working; only a connect that needs a new container sees a typed error.
  async faults() {
    const pool = async () => (await fetch(`${url}/api/pool`)).json();
    const poolUntil = async (pred, what) => {
      const end = Date.now() + TIMEOUT;
      for (;;) {
        const p = await pool();
        if (pred(p)) return p;
        if (Date.now() > end) throw new Error(`timeout waiting for ${what}: ${JSON.stringify(p)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const s = await session();
    await poolUntil((p) => p.idle === 1 && p.creating === 0, "the refill to replace the handed-out sandbox");
    await step("hang"); // Docker stops answering
    const hung = await exec(s, "echo still-here");
    assert.equal(hung.ok, true, JSON.stringify(hung));
    assert.equal(hung.stdout, "still-here\n");
    await step("fail"); // Docker answers 500 from now on
    const t = await session(); // from the idle set: no Docker call
    const failing = await exec(t, "echo works");
    assert.equal(failing.stdout, "works\n");
    // The refill's creates fail now and open the breaker; a connect that needs a create is
    // refused with a typed error and closed, the others stay.
    await poolUntil((p) => p.idle === 0 && p.breaker === "open", "the breaker to open");
    const u = connect();
    const err = await once(u, "sandpool:error");
    assert.ok(["unavailable", "internal"].includes(err.code), JSON.stringify(err));
    await until(() => !u.connected, "refused socket closed");
    // Ending a session and starting another through the idle set still works.
    const ended = await ack(t, "session:end");
    assert.equal(ended.ok, true);
    await poolUntil((p) => p.idle === 1, "the ended session's sandbox back in the idle set");
    const v = await session();
    assert.equal((await exec(v, "echo again")).stdout, "again\n");
    assert.ok(s.connected && v.connected);
    return {};
  },

  // Every sandbox taken: a new connection waits in line, hears its place, and gets the
  // sandbox the moment the holder ends; nobody sees an error.
  async queue() {
    const a = await session();
    const b = connect();
    const place = await once(b, "queue");
    assert.equal(place.position, 1);
    assert.equal(typeof place.estimateMs, "number");
    const early = await Promise.race([once(b, "session", 500).then(() => "session", () => "waiting")]);
    assert.equal(early, "waiting", "b waits while a holds the only sandbox");
    const gotSession = once(b, "session");
    assert.equal((await ack(a, "session:end")).ok, true);
    const sess = await gotSession;
    assert.equal(sess.resumed, false);
    const r = await exec(b, "echo served");
    assert.equal(r.stdout, "served\n");
    assert.deepEqual(b.errors, []);
    return { waitedMs: sess.acquireMs };
  },

  // Issue 14's scenario, as written: alice's replica A is killed; she resumes through B once
  // A's heartbeat lapses, and her file is there. A starts again with the same instance id:
  // it must neither scrub her sandbox nor hand it to a newcomer. (env URL_B: replica B.)
  async stale_owner() {
    const env = process.env;
    const alice = await session();
    await exec(alice, "echo alice > /workspace/alice.txt");
    const { sessionId, resumeToken, workspaceId } = alice.session;
    await step("kill_a");
    // Refused as held elsewhere until A's heartbeat lapses; then taken over by B.
    let back;
    const end = Date.now() + 60000;
    for (;;) {
      const s = connect({ sessionId, resumeToken }, env.URL_B);
      const got = await Promise.race([
        once(s, "session", 20000).then((x) => ({ x })),
        once(s, "sandpool:error", 20000).then((e) => ({ e })),
      ]);
      if (got.x) { back = s; back.session = got.x; break; }
      s.disconnect();
      assert.ok(Date.now() < end, `alice never resumed on B: ${JSON.stringify(got.e)}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.equal(back.session.resumed, true);
    assert.equal(back.session.workspaceId, workspaceId);
    assert.equal((await exec(back, "cat /workspace/alice.txt")).stdout, "alice\n");
    await step("restart_a");
    // Newcomers on the restarted A: none gets alice's sandbox or sees her file, however long
    // A's start-up reconciliation and its loops run meanwhile.
    const newcomers = [];
    for (let i = 0; i < 4; i++) {
      const n = await session();
      assert.notEqual(n.session.workspaceId, workspaceId, "a newcomer got alice's sandbox");
      const r = await exec(n, "ls -A /workspace; echo mine-" + i + " > /workspace/n.txt");
      assert.equal(r.stdout, "", `a newcomer sees files: ${r.stdout}`);
      newcomers.push(n);
    }
    await step("a_reconciled");
    for (let round = 0; round < 3; round++) {
      const r = await exec(back, "cat /workspace/alice.txt; ls /workspace");
      assert.equal(r.exitCode, 0, JSON.stringify(r));
      assert.equal(r.stdout, "alice\nalice.txt\n", "alice's sandbox changed under her");
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.deepEqual(back.errors, []);
    assert.deepEqual(back.expired, []);
    return { newcomers: newcomers.length };
  },

  // A rolling restart loses nothing: replica A is stopped with SIGTERM while B lives; alice
  // hears `moved` and resumes on B with her files and processes. (env URL_B: replica B.)
  async drain() {
    const env = process.env;
    const alice = await session();
    await exec(alice, "echo alice > /workspace/alice.txt; sleep 600 >/dev/null 2>&1 &");
    const { sessionId, resumeToken, workspaceId } = alice.session;
    const moved = once(alice, "session:expired", 60000);
    await step("term_a");
    const e = await moved;
    assert.equal(e.reason, "moved");
    const back = await session({ sessionId, resumeToken }, env.URL_B);
    assert.equal(back.session.resumed, true);
    assert.equal(back.session.workspaceId, workspaceId);
    const r = await exec(back, "cat /workspace/alice.txt; ps -o args | grep -c '^sleep 600'");
    assert.equal(r.stdout, "alice\n1\n", "files and processes survive the rolling restart");
    back.disconnect();
    return {};
  },

  // Redis restarts under two live replicas: the owner's bus subscription comes back, so a
  // resume through the other replica is handed over by the live owner (before, the owner's
  // bus stayed dead and the resume was refused as held elsewhere for good).
  async bus_restart() {
    const env = process.env;
    const alice = await session();
    await exec(alice, "echo alice > /workspace/alice.txt");
    const { sessionId, resumeToken, workspaceId } = alice.session;
    await step("restart_redis");
    alice.disconnect();
    let back;
    const end = Date.now() + 30000;
    for (;;) {
      const s = connect({ sessionId, resumeToken }, env.URL_B);
      const got = await Promise.race([
        once(s, "session", 20000).then((x) => ({ x })),
        once(s, "sandpool:error", 20000).then((e) => ({ e })),
      ]);
      if (got.x) { back = s; back.session = got.x; break; }
      s.disconnect();
      assert.ok(Date.now() < end, `never handed over after the restart: ${JSON.stringify(got.e)}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.equal(back.session.workspaceId, workspaceId);
    assert.equal((await exec(back, "cat /workspace/alice.txt")).stdout, "alice\n");
    return { instance: back.session.instance };
  },

  // A replica that cannot renew its heartbeat stops serving before its TTL lapses, with a
  // typed error, and serves again once it can.
  async self_fence() {
    const alice = await session();
    assert.equal((await exec(alice, "echo ok")).stdout, "ok\n");
    await step("freeze_redis");
    const r = await exec(alice, "echo late");
    assert.equal(r.ok, false, `a self-fenced replica ran a command: ${JSON.stringify(r)}`);
    assert.equal(r.error.code, "unavailable");
    await step("thaw_redis");
    const end = Date.now() + 20000;
    for (;;) {
      const again = await exec(alice, "echo back");
      if (again.ok !== false) { assert.equal(again.stdout, "back\n"); break; }
      assert.ok(Date.now() < end, "never served again");
      await new Promise((r) => setTimeout(r, 300));
    }
    return {};
  },

  // The command bound is the session's: five commands started on one connection still count
  // after a resume on a second connection (before, each connection had its own five).
  async bound_follows_session() {
    const a = await session();
    const { sessionId, resumeToken } = a.session;
    const before = a.outputs.length;
    const running = Array.from({ length: 5 }, () => exec(a, "echo started; sleep 3").catch(() => {}));
    await until(() => a.outputs.slice(before).filter((o) => o.data === "started\n").length === 5, "five running");
    a.disconnect();
    const b = await session({ sessionId, resumeToken });
    const r = await exec(b, "echo sixth");
    assert.equal(r.ok, false, `a sixth command ran: ${JSON.stringify(r)}`);
    assert.equal(r.error.code, "too_many_requests");
    await Promise.all(running);
    // Once they end (within their own time), the session runs commands again.
    const end = Date.now() + 20000;
    for (;;) {
      const again = await exec(b, "echo again");
      if (again.ok !== false) { assert.equal(again.stdout, "again\n"); break; }
      assert.ok(Date.now() < end, "the bound never freed");
      await new Promise((r) => setTimeout(r, 300));
    }
    return {};
  },

  // A replica that took a session over crashes and starts again with its id: it adopts that
  // session's sandbox again (labeled with another replica), and the client resumes there.
  // Before, the restart listed only its own label: the session ended and its sandbox leaked.
  async readopt() {
    const env = process.env;
    const alice = await session();
    await exec(alice, "echo alice > /workspace/alice.txt");
    const { sessionId, resumeToken, workspaceId } = alice.session;
    await step("kill_a");
    let back;
    const end = Date.now() + 60000;
    for (;;) {
      const s = connect({ sessionId, resumeToken }, env.URL_B);
      const got = await Promise.race([
        once(s, "session", 20000).then((x) => ({ x })),
        once(s, "sandpool:error", 20000).then((e) => ({ e })),
      ]);
      if (got.x) { back = s; back.session = got.x; break; }
      s.disconnect();
      assert.ok(Date.now() < end, `never taken over by B: ${JSON.stringify(got.e)}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    await step("restart_b");
    const again = await session({ sessionId, resumeToken }, env.URL_B);
    assert.equal(again.session.resumed, true);
    assert.equal(again.session.workspaceId, workspaceId);
    assert.equal((await exec(again, "cat /workspace/alice.txt")).stdout, "alice\n");
    return {};
  },

  // The janitor ends an idle session and tells its socket.
  async idle_expiry() {
    const s = await session();
    const e = await once(s, "session:expired", 30000);
    assert.equal(e.sessionId, s.session.sessionId);
    assert.equal(e.reason, "idle");
    await until(() => !s.connected, "expired socket closed");
    return {};
  },
};

(async () => {
  const fn = scenarios[scenario];
  if (!fn) throw new Error(`unknown scenario ${scenario}`);
  const out = await fn();
  console.log(JSON.stringify({ ok: true, scenario, ...out }));
})()
  .catch((e) => {
    console.error(e && e.stack ? e.stack : e);
    process.exitCode = 1;
  })
  .finally(() => {
    for (const s of sockets) s.disconnect();
    lines.close();
    setTimeout(() => process.exit(), 100);
  });
