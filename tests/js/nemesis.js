// The client side of the nemesis test (tests/nemesis.rs), with the official socket.io client.
// Usage: node nemesis.js   (env: URLS, comma-separated replica URLs; CLIENTS; SECS; SEED;
// HISTORY, the file every operation is appended to as one JSON line).
//
// Each client loops until SECS have passed: it opens a session on a random replica, writes a
// marker file unique to the session (/workspace/owner, holding the session id), runs commands
// that print the marker and a fresh nonce, sometimes rewrites the marker, sometimes drops its
// connection and resumes (with its resume token) on a random replica, retrying while it is
// refused, and sometimes ends the session. It never judges: it records what it saw, and the
// Rust checker reads the whole history. Every wait is bounded.
"use strict";
const fs = require("node:fs");
const { performance } = require("node:perf_hooks");
const { io } = require("socket.io-client");

const env = process.env;
const URLS = env.URLS.split(",");
const CLIENTS = Number(env.CLIENTS || 6);
const SECS = Number(env.SECS || 90);
const SEED = BigInt(env.SEED || 1);
const history = fs.openSync(env.HISTORY, "a");

/** Wall-clock milliseconds with a fraction, monotonic within this process. */
const now = () => performance.timeOrigin + performance.now();
const deadline = now() + SECS * 1000;

// Bounds of every wait, in ms.
const CONNECT_MS = 8000; // a connection to a frozen replica hangs: give up and try another
const SESSION_MS = 20000; // a new session may wait in the pool's queue (acquire timeout 10 s)
const ACK_MS = 10000; // a command's answer (its own timeout is 5 s)
const RESUME_BOUND_MS = 25000; // how long a client keeps trying to resume one session

function write(record) {
  fs.writeSync(history, JSON.stringify(record) + "\n");
}

/** A small seeded generator (mulberry32), one per client, so that choices replay. */
function rng(seed) {
  let a = Number(seed & 0xffffffffn) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class Client {
  constructor(i) {
    this.i = i;
    this.random = rng(SEED * 1000003n + BigInt(i) * 7919n + 17n);
    this.nonces = 0;
    // The session this client holds: {sid, token, ws, inst, url, sock, marker}, or null.
    this.s = null;
  }

  log(record) {
    write({ client: this.i, ...record });
  }

  pick(n) {
    return Math.floor(this.random() * n);
  }

  nonce() {
    this.nonces += 1;
    const r = Math.floor(this.random() * 0xffffffff).toString(16).padStart(8, "0");
    return `n${this.i}-${this.nonces}-${r}`;
  }

  /**
   * Connects to replica `url` (index into URLS) with `auth` and waits for its `session`, a
   * refusal (the server's disconnect) or the bound. Errors heard before the session are kept.
   */
  connect(url, auth, bound) {
    const sock = io(URLS[url], {
      transports: ["websocket"],
      reconnection: false,
      forceNew: true,
      timeout: CONNECT_MS,
      auth,
    });
    const errors = [];
    sock.on("sandpool:error", (e) => errors.push(e));
    return new Promise((resolve) => {
      let done = false;
      const finish = (outcome) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        resolve({ sock, errors, ...outcome });
      };
      const timer = setTimeout(() => finish({ timeout: true }), bound);
      sock.once("session", (session) => finish({ session }));
      sock.once("disconnect", (reason) => finish({ reason }));
      sock.once("connect_error", (e) => finish({ reason: "connect_error: " + e.message }));
    });
  }

  /** Takes `sock` (with `session`) as this client's session, listening for what it hears. */
  hold(sock, session, url) {
    const s = {
      sid: session.sessionId,
      token: session.resumeToken || (this.s && this.s.token),
      ws: session.workspaceId,
      inst: session.instance,
      url,
      sock,
      marker: false,
    };
    sock.on("session:expired", (e) => {
      // Only what the connection this client holds hears counts; an old one is closed.
      if (this.s && this.s.sock === sock) {
        this.log({ op: "expired", sid: s.sid, ws: s.ws, inst: s.inst, reason: e.reason, t: now() });
        this.s.expired = true;
      }
    });
    sock.on("sandpool:error", (e) => {
      if (this.s && this.s.sock === sock) {
        this.log({ op: "error", sid: s.sid, inst: s.inst, code: e.code, message: e.message, t: now() });
      }
    });
    sock.on("disconnect", (reason) => {
      if (this.s && this.s.sock === sock) {
        this.log({ op: "disconnect", sid: s.sid, inst: s.inst, reason, t: now() });
        this.s.dropped = true;
      }
    });
    this.s = s;
    return s;
  }

  drop() {
    if (this.s) {
      const sock = this.s.sock;
      this.s = null;
      sock.disconnect();
    }
  }

  async open() {
    const url = this.pick(URLS.length);
    const t0 = now();
    const got = await this.connect(url, undefined, SESSION_MS);
    const t1 = now();
    if (!got.session) {
      got.sock.disconnect();
      this.log({
        op: "open", ok: false, url, t0, t1,
        codes: got.errors.map((e) => e.code), reason: got.reason || (got.timeout ? "timeout" : null),
      });
      await sleep(200 + this.pick(400));
      return;
    }
    const s = this.hold(got.sock, got.session, url);
    this.log({ op: "open", ok: true, url, t0, t1, sid: s.sid, ws: s.ws, inst: s.inst });
    await this.command("fresh");
  }

  /**
   * One command in the session. `fresh`: the first, in a new session, which must find an empty
   * workspace, writes the marker and reads it back; `init`: the same without the emptiness
   * check (after an attempt whose outcome is unknown); `read`: the marker and the nonce;
   * `write`: reads the marker, then writes it again (a stale writer in another session's
   * sandbox would show there as a foreign marker).
   */
  async command(kind) {
    const s = this.s;
    if (!s.marker && kind !== "fresh") kind = "init";
    const nonce = this.nonce();
    const owner = "/workspace/owner";
    const command = {
      fresh: `ls -A /workspace; echo ${s.sid} > ${owner}; cat ${owner}; echo ${nonce}`,
      init: `echo ${s.sid} > ${owner}; cat ${owner}; echo ${nonce}`,
      read: `cat ${owner}; echo ${nonce}`,
      write: `cat ${owner}; echo ${s.sid} > ${owner}; echo ${nonce}`,
    }[kind];
    const base = { op: "cmd", kind, sid: s.sid, ws: s.ws, inst: s.inst, url: s.url, nonce };
    const t0 = now();
    let r;
    try {
      r = await s.sock.timeout(ACK_MS).emitWithAck("exec", { command, timeoutMs: 5000 });
    } catch (e) {
      this.log({ ...base, t0, t1: now(), ok: false, code: "client_timeout", message: String(e.message || e) });
      s.trouble = true;
      return;
    }
    const t1 = now();
    if (!r.ok) {
      this.log({ ...base, t0, t1, ok: false, code: r.error && r.error.code, message: r.error && r.error.message });
      s.trouble = true;
      return;
    }
    this.log({
      ...base, t0, t1, ok: true, status: r.status, exit: r.exitCode,
      stdout: r.stdout, stderr: r.stderr, truncated: r.truncated,
    });
    if (r.status === "ok" && r.exitCode === 0 && (kind === "fresh" || kind === "init")) {
      s.marker = true;
    }
  }

  /**
   * Drops the connection and resumes the session on random replicas until one serves it, it
   * turns out to be gone (a `session_expired` and a new session), or the bound passes.
   */
  async resume(why) {
    const old = this.s;
    old.sock.disconnect();
    const started = now();
    for (let attempt = 1; ; attempt++) {
      const url = this.pick(URLS.length);
      const t0 = now();
      const got = await this.connect(url, { sessionId: old.sid, resumeToken: old.token }, CONNECT_MS + 4000);
      const t1 = now();
      const base = {
        op: "resume", why, sid: old.sid, url, t0, t1, attempt, fromInst: old.inst, fromWs: old.ws,
        codes: got.errors.map((e) => e.code),
      };
      if (got.session && got.session.resumed && got.session.sessionId === old.sid) {
        const s = this.hold(got.sock, got.session, url);
        s.token = old.token;
        s.marker = old.marker;
        this.log({ ...base, outcome: "resumed", ws: s.ws, inst: s.inst });
        return;
      }
      if (got.session) {
        // The session is gone (`session_expired`), and this is a new one.
        const s = this.hold(got.sock, got.session, url);
        this.log({ ...base, outcome: "new", newSid: s.sid, ws: s.ws, inst: s.inst });
        await this.command("fresh");
        return;
      }
      got.sock.disconnect();
      this.log({ ...base, outcome: got.timeout ? "timeout" : "refused", reason: got.reason || null });
      if (now() - started > RESUME_BOUND_MS || now() > deadline + 5000) {
        this.log({ op: "abandon", sid: old.sid, t: now(), attempts: attempt });
        this.s = null;
        return;
      }
      await sleep(250 + this.pick(500));
    }
  }

  async end() {
    const s = this.s;
    const t0 = now();
    let r;
    try {
      r = await s.sock.timeout(ACK_MS).emitWithAck("session:end");
    } catch (e) {
      r = { ok: false, error: { code: "client_timeout" } };
    }
    this.log({ op: "end", sid: s.sid, ws: s.ws, inst: s.inst, t0, t1: now(), ok: r.ok === true, code: r.error && r.error.code });
    this.drop();
  }

  async run() {
    while (now() < deadline) {
      if (!this.s) {
        await this.open();
        continue;
      }
      const s = this.s;
      if (s.expired) {
        // A typed end: the session is gone; the socket is closed by the server.
        this.drop();
        continue;
      }
      if (s.dropped || s.trouble) {
        await this.resume(s.dropped ? "dropped" : "trouble");
        continue;
      }
      const roll = this.random();
      if (roll < 0.68) await this.command("read");
      else if (roll < 0.8) await this.command("write");
      else if (roll < 0.93) await this.resume("chosen");
      else await this.end();
      await sleep(20 + this.pick(130));
    }
    // The end of the run: half the clients end their session, the others just leave (the
    // replicas' shutdown must clean those up).
    if (this.s && !this.s.expired && !this.s.dropped && this.random() < 0.5) await this.end();
    this.drop();
  }
}

(async () => {
  const clients = Array.from({ length: CLIENTS }, (_, i) => new Client(i));
  await Promise.all(clients.map((c) => c.run()));
  write({ op: "workload_done", t: now() });
  console.log(JSON.stringify({ ok: true, clients: CLIENTS }));
})()
  .catch((e) => {
    console.error(e && e.stack ? e.stack : e);
    process.exitCode = 1;
  })
  .finally(() => setTimeout(() => process.exit(), 200));
