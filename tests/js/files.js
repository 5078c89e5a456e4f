// Issue 16 (files in and out, undo of every tool call), driven with the official socket.io
// client (v4) against a running sandpool. Usage: node files.js <scenario> <url>
// The conventions of scenarios.js: each scenario asserts with node:assert and prints one JSON
// line `{"ok":true,...}` at the end; a failure exits non-zero with the assertion. A line
// `{"step":NAME,...}` asks the Rust test (tests/files.rs) to act (HTTP, Docker); the script
// waits for its answer, one JSON line on stdin, which `step` returns.
"use strict";
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const readline = require("node:readline");
const { io } = require("socket.io-client");

const [, , scenario, url] = process.argv;
const sockets = [];
const TIMEOUT = 60000;
const MiB = 1 << 20;

const lines = readline.createInterface({ input: process.stdin });
const waiting = [];
lines.on("line", (l) => { const w = waiting.shift(); if (w) w(l); });
function step(name, extra = {}) {
  return new Promise((resolve) => {
    waiting.push((line) => resolve(line ? JSON.parse(line) : null));
    console.log(JSON.stringify({ step: name, ...extra }));
  });
}

function connect(auth) {
  const s = io(url, { transports: ["websocket"], reconnection: false, forceNew: true, auth });
  sockets.push(s);
  s.errors = [];
  s.outputs = [];
  s.results = [];
  s.requests = [];
  s.expired = [];
  s.on("sandpool:error", (e) => s.errors.push(e));
  s.on("session:expired", (e) => s.expired.push(e));
  s.on("tool:output", (o) => s.outputs.push(o));
  s.on("tool:result", (r) => s.results.push(r));
  s.on("tool:request", (r) => s.requests.push(r));
  return s;
}

// A connection and its session; fails at once if the server disconnects it instead.
async function session(auth, ms = TIMEOUT) {
  const s = connect(auth);
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

async function until(pred, what, ms = TIMEOUT) {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timeout waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// A payload for a message: binary values by their size, long strings cut.
function describe(d) {
  if (!d || typeof d !== "object") return JSON.stringify(d);
  const o = {};
  for (const [k, v] of Object.entries(d)) {
    if (Buffer.isBuffer(v) || v instanceof ArrayBuffer) o[k] = `<${v.byteLength} bytes>`;
    else if (typeof v === "string" && v.length > 100) o[k] = `${v.slice(0, 100)}…(${v.length})`;
    else o[k] = v;
  }
  return JSON.stringify(o);
}

// An ack, bounded: a missing ack fails the scenario, naming the event.
async function ack(s, ev, data, ms = TIMEOUT) {
  try {
    return await s.timeout(ms).emitWithAck(ev, data);
  } catch (e) {
    const why = s.expired.length ? `; the session ended: ${JSON.stringify(s.expired)}` : "";
    throw new Error(`${ev} ${describe(data)}: no ack within ${ms} ms (${e.message})${why}`);
  }
}

const sha = (b) => crypto.createHash("sha256").update(b).digest("hex");

// The binary content of a read ack as a Buffer; a string (or anything else) fails.
function bytesOf(content, what) {
  if (Buffer.isBuffer(content)) return content;
  if (content instanceof ArrayBuffer) return Buffer.from(content);
  if (ArrayBuffer.isView(content)) return Buffer.from(content.buffer, content.byteOffset, content.byteLength);
  assert.fail(`${what}: content is not a binary attachment but ${typeof content} ${JSON.stringify(content).slice(0, 80)}`);
}

function okAck(r, what) {
  assert.equal(r && r.ok, true, `${what}: ${describe(r)}`);
  return r;
}

function refusal(r, code, what) {
  assert.equal(r && r.ok, false, `${what}: must be refused with ${code}, got ${describe(r)}`);
  assert.equal(r.error && r.error.code, code, `${what}: ${describe(r.error)}`);
  assert.equal(typeof r.error.message, "string", what);
  return r;
}

const fsWrite = (s, path, content, extra = {}, ms) => ack(s, "fs:write", { path, content, ...extra }, ms);
const fsRead = (s, path, extra = {}, ms) => ack(s, "fs:read", { path, ...extra }, ms);
const fsList = (s, path) => ack(s, "fs:list", { path });
const fsDelete = (s, path, recursive) => ack(s, "fs:delete", recursive === undefined ? { path } : { path, recursive });
const undo = (s, callId, ms) => ack(s, "tool:undo", { callId }, ms);

// Writes and checks the ack: bytes and the SHA-256 of what was sent, a callId.
async function put(s, path, content, extra = {}, ms) {
  const r = okAck(await fsWrite(s, path, content, extra, ms), `fs:write ${path}`);
  const b = Buffer.isBuffer(content) ? content : Buffer.from(content, "utf8");
  if (extra.offset === undefined) {
    assert.equal(r.bytes, b.length, `fs:write ${path}: bytes`);
    assert.equal(r.sha256, sha(b), `fs:write ${path}: sha256 of the content sent`);
  }
  assert.equal(typeof r.callId, "string", `fs:write ${path}: callId`);
  return r;
}

// Writes a file of any size in slices of at most 4 MiB (the first replaces, the next write
// at their offset).
async function putChunked(s, path, content, extra = {}) {
  for (let off = 0; off < content.length || off === 0; off += 4 * MiB) {
    const part = content.subarray(off, off + 4 * MiB);
    okAck(await fsWrite(s, path, part, off === 0 ? extra : { offset: off }, 120000), `fs:write ${path} at ${off}`);
    if (content.length === 0) break;
  }
}

// Reads a whole file (at most one message) and checks the ack against the bytes it carries.
async function get(s, path, extra = {}, ms) {
  const r = okAck(await fsRead(s, path, extra, ms), `fs:read ${path}`);
  const b = bytesOf(r.content, `fs:read ${path}`);
  assert.equal(r.bytes, b.length, `fs:read ${path}: bytes is the content's length`);
  assert.equal(r.sha256, sha(b), `fs:read ${path}: sha256 is that of the content`);
  assert.ok(!("checkpoint" in r), `fs:read ${path}: a read takes no checkpoint`);
  return { ...r, content: b };
}

async function text(s, path) {
  return (await get(s, path)).content.toString("utf8");
}

async function run(s, command, timeoutMs, ms = TIMEOUT) {
  return ack(s, "exec", timeoutMs ? { command, timeoutMs } : { command }, ms);
}

// A command that must succeed; returns its ack.
async function sh(s, command, timeoutMs, ms) {
  const r = await run(s, command, timeoutMs, ms);
  assert.equal(r.ok, true, `${command.slice(0, 200)}: ${describe(r)}`);
  assert.equal(r.status, "ok", `${command.slice(0, 200)}: ${describe(r)}`);
  assert.equal(r.exitCode, 0, `${command.slice(0, 200)}: exit ${r.exitCode}, stderr ${r.stderr}`);
  return r;
}

// The workspace as text: every path (sorted) with its type, permission bits, size and SHA-256
// of files, target of symlinks. Undo must bring this back exactly.
const STATE = `cd /workspace && echo "root $(stat -c %a .)" && find . -mindepth 1 | sort | while IFS= read -r p; do
  if [ -L "$p" ]; then echo "L $p -> $(readlink "$p")";
  elif [ -d "$p" ]; then echo "D $p $(stat -c %a "$p")";
  elif [ -f "$p" ]; then echo "F $p $(stat -c '%a %s' "$p") $( (sha256sum < "$p" 2>/dev/null || echo unreadable) | cut -d' ' -f1)";
  elif [ -p "$p" ]; then echo "P $p $(stat -c %a "$p")";
  else echo "O $p $(stat -c '%a %F' "$p")"; fi
done`;
async function state(s) {
  return (await sh(s, STATE)).stdout;
}

// The tenant's view of the sandbox: nothing but /workspace, /proc, /sys and /dev is searched
// for `needle` (files only); returns the files that hold it.
async function findEverywhere(s, needle) {
  const r = await sh(s, `for d in /*; do case "$d" in /proc|/sys|/dev|/workspace) continue;; esac; grep -rsl -- '${needle}' "$d"; done; true`, 60000, 90000);
  return r.stdout;
}

// Checks a checkpoint's changes: every expected path in its list, and nothing else but the
// directories above an expected path (a diff of every path may name them too). A path whose
// type changed (`retyped`: a symlink became a directory) may be modified, or removed and added.
function assertChanges(cp, expected, what) {
  assert.ok(cp && cp.changes, `${what}: a checkpoint with changes, got ${JSON.stringify(cp)}`);
  const exp = { added: expected.added || [], modified: expected.modified || [], removed: expected.removed || [] };
  const retyped = expected.retyped || [];
  const named = new Set([...exp.added, ...exp.modified, ...exp.removed, ...retyped]);
  const above = new Set(["", "."]);
  for (const p of named) {
    const parts = p.split("/");
    for (let i = 1; i < parts.length; i++) above.add(parts.slice(0, i).join("/"));
  }
  const seen = JSON.stringify(cp.changes);
  for (const kind of ["added", "modified", "removed"]) {
    assert.ok(Array.isArray(cp.changes[kind]), `${what}: changes.${kind} is a list: ${seen}`);
    for (const p of exp[kind]) assert.ok(cp.changes[kind].includes(p), `${what}: ${JSON.stringify(p)} must be ${kind}: ${seen}`);
    for (const p of cp.changes[kind]) {
      assert.ok(exp[kind].includes(p) || retyped.includes(p) || (above.has(p) && !named.has(p)), `${what}: ${JSON.stringify(p)} listed as ${kind}: ${seen}`);
    }
  }
  for (const p of retyped) {
    const c = cp.changes;
    assert.ok(c.modified.includes(p) || (c.added.includes(p) && c.removed.includes(p)), `${what}: ${JSON.stringify(p)} changed type: ${seen}`);
  }
}

// The result of an undo: `{ok, callId, restored: {written, removed}}`.
function undone(r, callId, what) {
  okAck(r, what);
  assert.equal(r.callId, callId, `${what}: callId`);
  assert.ok(r.restored && Number.isInteger(r.restored.written) && Number.isInteger(r.restored.removed),
    `${what}: restored counts: ${describe(r)}`);
  return r;
}

// A deterministic buffer of `n` bytes that holds every byte value.
function pattern(n, seed = 1) {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b[i] = i < 256 ? i : x & 0xff;
  }
  return b;
}

function names(list) {
  return list.entries.map((e) => e.name).sort();
}

const scenarios = {
  // Text and binary files through the socket: 1 byte, every byte value, 1 MiB, 4 MiB (the most
  // one message carries), 9 MiB in chunks with `offset` and read back in slices; what the
  // supervisor wrote is checked through a command too (sha256sum), and what a command wrote is
  // read back byte for byte. Listing, modes, parents, deletes, concurrent replaces.
  async roundtrip() {
    const s = await session();

    // Text, as a string: UTF-8 on disk.
    const hello = "héllo wörld ✓\n";
    const w = await put(s, "hello.txt", hello);
    assert.equal(w.path, "hello.txt");
    assert.equal(w.checkpoint.id, w.callId, "the checkpoint is named by the call");
    assertChanges(w.checkpoint, { added: ["hello.txt"] }, "fs:write of a new file");
    assert.equal(await text(s, "hello.txt"), hello);
    assert.equal((await sh(s, "cat hello.txt")).stdout, hello);

    // One byte; a NUL byte; every byte value.
    for (const [path, content] of [["one.bin", Buffer.from([0x41])], ["nul.bin", Buffer.from([0])], ["all.bin", pattern(256)]]) {
      await put(s, path, content);
      const r = await get(s, path);
      assert.ok(r.content.equals(content), `${path} reads back the same bytes`);
      assert.equal(r.size, content.length, `${path}: size`);
      assert.equal(r.truncated, false, `${path}: not truncated`);
      const out = (await sh(s, `sha256sum ${path}`)).stdout.split(" ")[0];
      assert.equal(out, sha(content), `${path}: sha256sum in the sandbox`);
    }
    // An empty file.
    await put(s, "empty", Buffer.alloc(0));
    const empty = await get(s, "empty");
    assert.equal(empty.bytes, 0);
    assert.equal(empty.size, 0);

    // Bytes a command wrote come back exactly (no UTF-8 mangling).
    await sh(s, "printf '\\000\\377\\200\\n\\r\\033x' > raw.bin");
    assert.ok((await get(s, "raw.bin")).content.equals(Buffer.from([0, 0xff, 0x80, 0x0a, 0x0d, 0x1b, 0x78])), "raw bytes of a command");

    // 1 MiB of every byte value, random; and exactly 4 MiB in one message.
    for (const [path, n] of [["mib.bin", MiB], ["four.bin", 4 * MiB]]) {
      const content = Buffer.concat([pattern(256), crypto.randomBytes(n - 256)]);
      await put(s, path, content, {}, 120000);
      const r = await get(s, path, {}, 120000);
      assert.equal(r.size, n, `${path}: size`);
      assert.equal(r.truncated, false, `${path}: not truncated`);
      assert.equal(r.sha256, sha(content), `${path}: sha256 read back`);
      assert.ok(r.content.equals(content), `${path}: the same bytes`);
      assert.equal((await sh(s, `sha256sum ${path}`)).stdout.split(" ")[0], sha(content), `${path}: sha256sum in the sandbox`);
    }

    // One byte more than a message carries: too_large, and the socket stays.
    refusal(await fsWrite(s, "over.bin", crypto.randomBytes(4 * MiB + 1), {}, 120000), "too_large", "4 MiB + 1 in one message");
    assert.ok(s.connected, "an oversized fs:write does not close the socket");
    refusal(await fsRead(s, "over.bin"), "not_found", "nothing written");

    // 9 MiB in 3 MiB chunks: the first replaces, the next write at their offset.
    const big = crypto.randomBytes(9 * MiB);
    const chunk = 3 * MiB;
    for (let off = 0; off < big.length; off += chunk) {
      const part = big.subarray(off, off + chunk);
      const r = okAck(await fsWrite(s, "chunked.bin", part, off === 0 ? {} : { offset: off }, 120000), `chunk at ${off}`);
      assert.equal(r.bytes, part.length, `chunk at ${off}: bytes`);
      assert.equal(r.sha256, sha(part), `chunk at ${off}: sha256 of the chunk`);
    }
    assert.equal((await sh(s, "stat -c %s chunked.bin; sha256sum < chunked.bin")).stdout,
      `${big.length}\n${sha(big)}  -\n`, "the chunks make the file");
    // Read back in slices, one of them across a chunk boundary and one past the end.
    const slices = [];
    for (let off = 0; off < big.length; off += 2 * MiB) {
      const r = await get(s, "chunked.bin", { offset: off, length: 2 * MiB }, 120000);
      assert.equal(r.size, big.length, "size is the file's");
      slices.push(r.content);
    }
    assert.equal(sha(Buffer.concat(slices)), sha(big), "the slices make the file");
    const tail = await get(s, "chunked.bin", { offset: big.length - 10, length: 100 });
    assert.ok(tail.content.equals(big.subarray(big.length - 10)), "a slice past the end stops at the end");
    const past = await get(s, "chunked.bin", { offset: big.length + 5, length: 10 });
    assert.equal(past.bytes, 0, "a slice beyond the end is empty");
    // The whole file does not fit in one message: either its first part, marked truncated,
    // or too_large (read it in slices).
    const whole = await fsRead(s, "chunked.bin", {}, 120000);
    let wholeRead;
    if (whole.ok) {
      const content = bytesOf(whole.content, "9 MiB in one read");
      assert.equal(whole.truncated, true, "9 MiB in one read is truncated");
      assert.equal(whole.size, big.length);
      assert.ok(content.length > 0 && content.length <= 4 * MiB, `at most 4 MiB in one message (got ${content.length})`);
      assert.ok(content.equals(big.subarray(0, content.length)), "the part read is the file's start");
      wholeRead = "truncated";
    } else {
      refusal(whole, "too_large", "9 MiB in one read");
      wholeRead = "too_large";
    }

    // A write over a file replaces it (shorter content, no stale tail) and keeps a hard link
    // to the old inode intact (temp file + rename).
    await sh(s, "ln mib.bin mib-link.bin");
    await put(s, "mib.bin", "short");
    assert.equal(await text(s, "mib.bin"), "short");
    assert.equal((await sh(s, "stat -c %s mib-link.bin")).stdout, `${MiB}\n`, "the old inode is untouched: replaced by rename");

    // Modes, parents, absolute paths under /workspace.
    await put(s, "bin/run.sh", "#!/bin/sh\necho ran\n", { mode: 0o755 });
    assert.equal((await sh(s, "stat -c %a bin/run.sh; ./bin/run.sh")).stdout, "755\nran\n");
    assert.equal((await sh(s, "stat -c %a hello.txt")).stdout, "644\n", "default mode 0644");
    await put(s, "deep/er/still/x.txt", "x");
    assert.equal((await sh(s, "cat deep/er/still/x.txt; stat -c %U deep/er/still/x.txt deep/er")).stdout, "xsandbox\nsandbox\n", "parents made, owned by the tenant");
    await put(s, "/workspace/abs.txt", "abs");
    assert.equal(await text(s, "abs.txt"), "abs", "a leading /workspace/ is stripped");
    assert.equal(await text(s, "/workspace/abs.txt"), "abs");

    // Listing: types, sizes, modes, times.
    await sh(s, "ln -s hello.txt link && mkfifo fifo && mkdir emptydir");
    const l = okAck(await fsList(s, ""), "fs:list");
    const byName = Object.fromEntries(l.entries.map((e) => [e.name, e]));
    assert.equal(byName["hello.txt"].type, "file");
    assert.equal(byName["hello.txt"].size, Buffer.byteLength(hello));
    assert.equal(byName["hello.txt"].mode & 0o777, 0o644);
    assert.equal(typeof byName["hello.txt"].mtimeMs, "number");
    assert.ok(Math.abs(byName["hello.txt"].mtimeMs - Date.now()) < 10 * 60000, "mtimeMs is milliseconds since the epoch");
    assert.equal(byName.bin.type, "dir");
    assert.equal(byName.link.type, "symlink");
    assert.equal(byName.fifo.type, "other");
    assert.equal(byName.emptydir.type, "dir");
    assert.deepEqual(names(okAck(await fsList(s, "."), "fs:list .")), names(l), "'.' is the workspace");
    assert.deepEqual(names(okAck(await fsList(s, "/workspace"), "fs:list /workspace")), names(l));
    assert.deepEqual(names(okAck(await fsList(s, "deep/er"), "fs:list deep/er")), ["still"]);
    assert.equal(await text(s, "link"), hello, "a symlink inside the workspace is followed");
    // A fifo is not read (that would block): refused, promptly.
    const fifoRead = await fsRead(s, "fifo", {}, 10000);
    assert.equal(fifoRead.ok, false, "reading a fifo is refused");
    // Nothing else is in the workspace: no temporary files left by the writes.
    assert.deepEqual(names(l), ["abs.txt", "all.bin", "bin", "chunked.bin", "deep", "empty", "emptydir", "fifo",
      "four.bin", "hello.txt", "link", "mib-link.bin", "mib.bin", "nul.bin", "one.bin", "raw.bin"].sort());

    // Five replaces of one file at once (the session's limit of calls in flight): the file is
    // one of them, whole.
    const versions = Array.from({ length: 5 }, (_, i) => crypto.randomBytes(64 * 1024 + i));
    await Promise.all(versions.map((v) => put(s, "race.bin", v)));
    const raced = (await get(s, "race.bin")).sha256;
    assert.ok(versions.some((v) => sha(v) === raced), "concurrent replaces leave one whole version");
    assert.equal((await sh(s, "ls -A | grep -c race || true")).stdout, "1\n", "and no temporary file");

    // Deletes: a file, a tree (recursive), a symlink (not its target); a non-empty directory
    // without `recursive` is refused.
    const d1 = okAck(await fsDelete(s, "one.bin"), "fs:delete a file");
    assertChanges(d1.checkpoint, { removed: ["one.bin"] }, "fs:delete of a file");
    refusal(await fsRead(s, "one.bin"), "not_found", "a deleted file");
    const notEmpty = await fsDelete(s, "deep");
    assert.equal(notEmpty.ok, false, `a non-empty directory without recursive: ${describe(notEmpty)}`);
    okAck(await fsDelete(s, "deep", true), "fs:delete recursive");
    refusal(await fsList(s, "deep"), "not_found", "a deleted tree");
    okAck(await fsDelete(s, "link"), "fs:delete a symlink");
    assert.equal(await text(s, "hello.txt"), hello, "deleting a symlink leaves its target");
    okAck(await fsDelete(s, "emptydir"), "fs:delete an empty directory");

    await ack(s, "session:end");
    return { wholeRead };
  },

  // HTTP (tests/files.rs does the requests): this side opens two sessions, hands over their
  // tokens, then checks through the socket what the HTTP side wrote, and that the refused
  // requests wrote nothing.
  async http() {
    const a = await session();
    const b = await session();
    assert.ok(a.session.mcp && a.session.mcp.token, "the session event carries the workspace token");
    await put(a, "dir/in/side.txt", "inside");
    const got = await step("http", {
      base: url,
      sessionId: a.session.sessionId, token: a.session.mcp.token,
      otherSessionId: b.session.sessionId, otherToken: b.session.mcp.token,
    });
    // What the Rust side uploaded, read through the socket and a command.
    assert.equal((await get(a, "up/one.bin")).sha256, got.sha1m, "1 MiB uploaded over HTTP, read over the socket");
    assert.equal((await sh(a, "sha256sum < big.bin", 120000, 150000)).stdout, `${got.sha100m}  -\n`, "100 MiB uploaded over HTTP");
    assert.equal((await sh(a, "stat -c %a up/exe.sh")).stdout, "755\n", "?mode=0755");
    assert.equal(await text(a, "abort.bin"), "old", "an aborted upload leaves the file as it was");
    // Neither session has a file that a refused request tried to write, nor a temporary one.
    await until(async () => (await sh(a, "ls -A")).stdout === "abort.bin\nbig.bin\ndir\nup\n", "only what the accepted uploads wrote", 10000)
      .catch(async (e) => { throw new Error(`${e.message}: ${(await sh(a, "ls -A")).stdout}`); });
    assert.equal((await sh(a, "ls -A up")).stdout, "exe.sh\none.bin\nreplaced.bin\n");
    assert.equal((await sh(b, "ls -A")).stdout, "", "the other session's workspace is untouched");
    assert.equal(await text(a, "up/replaced.bin"), "second", "a PUT over a file replaces it");
    await ack(a, "session:end");
    await ack(b, "session:end");
    return {};
  },

  // An archive of the workspace: every kind of entry, read by the Rust side with the tar crate.
  async archive() {
    const s = await session();
    const other = await session();
    const files = {
      "hello.txt": Buffer.from("hello archive\n"),
      "bin/all.bin": pattern(256),
      "bin/random.bin": crypto.randomBytes(5 * MiB + 17),
      "a/b/c/deep.txt": Buffer.from("deep\n"),
      "space name.txt": Buffer.from("spaced"),
      "ünïcode.txt": Buffer.from("unicode"),
      "run.sh": Buffer.from("#!/bin/sh\n"),
      "empty": Buffer.alloc(0),
      ".hidden": Buffer.from("hidden"),
    };
    for (const [path, content] of Object.entries(files)) {
      await putChunked(s, path, content, path === "run.sh" ? { mode: 0o755 } : {});
    }
    // A long name (past tar's 100-byte field) and a deep path.
    const long = `${"l".repeat(120)}/${"n".repeat(200)}.txt`;
    files[long] = Buffer.from("long");
    await put(s, long, files[long]);
    await sh(s, "mkdir -p emptydir && ln -s hello.txt inlink && ln -s /etc etclink && ln -s /proc/1/root rootlink && mkfifo pipe");
    const got = await step("archive", {
      base: url, sessionId: s.session.sessionId, token: s.session.mcp.token, otherToken: other.session.mcp.token,
      files: Object.fromEntries(Object.entries(files).map(([k, v]) => [k, v.toString("base64")])),
      modes: { "run.sh": 0o755, "hello.txt": 0o644 },
      dirs: ["a", "a/b", "a/b/c", "bin", "emptydir", "l".repeat(120)],
      links: { inlink: "hello.txt", etclink: "/etc", rootlink: "/proc/1/root" },
      fifo: "pipe",
    });
    assert.equal(got.checked, true);
    await ack(s, "session:end");
    await ack(other, "session:end");
    return {};
  },

  // SANDPOOL_FILE_MAX_BYTES=65536: too_large over the socket (one message, chunks, a far
  // offset) and over HTTP (Rust side), with nothing left behind.
  async too_large() {
    const s = await session();
    const max = 65536;
    await put(s, "max.bin", crypto.randomBytes(max));
    refusal(await fsWrite(s, "over.bin", crypto.randomBytes(max + 1)), "too_large", "one byte over the limit");
    refusal(await fsRead(s, "over.bin"), "not_found", "a refused write leaves no file");
    // Replacing a file with too much keeps it.
    const keep = (await get(s, "max.bin")).sha256;
    refusal(await fsWrite(s, "max.bin", crypto.randomBytes(max + 1)), "too_large", "a replace over the limit");
    assert.equal((await get(s, "max.bin")).sha256, keep, "the file is as it was");
    // Chunks that add up past the limit; a write far past the end (a sparse terabyte).
    const part = crypto.randomBytes(60000);
    await put(s, "grow.bin", part);
    refusal(await fsWrite(s, "grow.bin", crypto.randomBytes(10000), { offset: 60000 }), "too_large", "chunks past the limit");
    assert.equal((await sh(s, "stat -c %s grow.bin")).stdout, "60000\n", "the refused chunk wrote nothing");
    refusal(await fsWrite(s, "grow.bin", Buffer.from("x"), { offset: 1e12 }), "too_large", "an offset a terabyte out");
    refusal(await fsWrite(s, "far.bin", Buffer.from("x"), { offset: max }), "too_large", "a new file whose end is past the limit");
    assert.equal((await sh(s, "stat -c %s grow.bin")).stdout, "60000\n");
    const got = await step("http", { base: url, sessionId: s.session.sessionId, token: s.session.mcp.token });
    assert.equal((await get(s, "http-max.bin")).sha256, got.shaMax, "exactly the limit over HTTP");
    assert.equal((await sh(s, "ls -A")).stdout, "grow.bin\nhttp-max.bin\nmax.bin\n", "no file or temporary file of a refused write");
    await ack(s, "session:end");
    return {};
  },

  // SANDPOOL_SANDBOX_TMPFS_BYTES=8 MiB: no_space, with the workspace as it was; an undo that
  // needs the room later calls took.
  async no_space() {
    const s = await session();
    const f1 = crypto.randomBytes(3 * MiB);
    const f2 = crypto.randomBytes(3 * MiB);
    await put(s, "fill1", f1);
    await put(s, "fill2", f2);
    refusal(await fsWrite(s, "fill3", crypto.randomBytes(3 * MiB)), "no_space", "a third 3 MiB file in 8 MiB");
    refusal(await fsRead(s, "fill3"), "not_found", "no partial file");
    // A replace needs room for the new copy: refused, and the old content stays whole.
    refusal(await fsWrite(s, "fill1", crypto.randomBytes(3 * MiB)), "no_space", "replacing 3 MiB with 2 MiB free");
    assert.equal((await get(s, "fill1", {}, 120000)).sha256, sha(f1), "the replaced file is intact");
    refusal(await fsWrite(s, "fill2", crypto.randomBytes(3 * MiB), { offset: 3 * MiB }), "no_space", "a chunk past the room");
    await sh(s, "truncate -s 3145728 fill2");
    assert.equal((await sh(s, "ls -A")).stdout, "fill1\nfill2\n", "nothing else in the workspace");
    const got = await step("http", { base: url, sessionId: s.session.sessionId, token: s.session.mcp.token });
    assert.equal(got.status, 507);
    assert.equal((await get(s, "fill1", {}, 120000)).sha256, sha(f1), "a refused upload over fill1 leaves it whole");
    assert.equal((await sh(s, "ls -A")).stdout, "fill1\nfill2\n", "a refused upload leaves nothing");
    assert.ok(Number((await sh(s, "du -sk /workspace | cut -f1")).stdout) <= 6 * 1024 + 64, "the room is back");
    // Undo across a full workspace: delete fill1, fill the room again, undo the delete. The
    // later files must go before fill1 comes back.
    const del = okAck(await fsDelete(s, "fill1"), "fs:delete fill1");
    await put(s, "fill4", crypto.randomBytes(3 * MiB));
    await put(s, "fill5", crypto.randomBytes(MiB + MiB / 2));
    undone(await undo(s, del.callId), del.callId, "undo of the delete with the workspace full");
    assert.equal((await sh(s, "ls -A")).stdout, "fill1\nfill2\n", "the state before the delete");
    assert.equal((await sh(s, "sha256sum < fill1")).stdout, `${sha(f1)}  -\n`, "fill1 back whole");
    await ack(s, "session:end");
    return {};
  },

  // Bad paths and payloads are bad_request; symlinks and procfs never lead out.
  async escapes() {
    const s = await session();
    await sh(s, "echo keep > /tmp/keep && echo home > /home/sandbox/keep && mkdir sub && echo in > sub/file.txt");
    const bad = ["../etc/passwd", "/etc/passwd", "a/../../x", "..", "../", "/", "/workspace/..", "/workspace/../etc/passwd",
      "/tmp/x", "/tmp", "a\u0000b", "/proc/self/environ", "./../x", "sub/../../x", "sub/..", "a/../b", "/workspace/sub/../../tmp/x"];
    for (const p of bad) {
      const w = JSON.stringify(p);
      refusal(await fsRead(s, p), "bad_request", `fs:read ${w}`);
      refusal(await fsWrite(s, p, "pwned"), "bad_request", `fs:write ${w}`);
      refusal(await fsList(s, p), "bad_request", `fs:list ${w}`);
      refusal(await fsDelete(s, p, true), "bad_request", `fs:delete ${w}`);
    }
    // Payloads of the wrong shape.
    const shapes = [
      ["fs:read", {}], ["fs:read", { path: 5 }], ["fs:read", "x"], ["fs:read", null], ["fs:read", { path: "sub/file.txt", offset: -1 }],
      ["fs:read", { path: "sub/file.txt", offset: "1" }], ["fs:read", { path: "sub/file.txt", length: -5 }], ["fs:read", { path: "sub/file.txt", offset: 1.5 }],
      ["fs:write", { path: "w.txt" }], ["fs:write", { path: "w.txt", content: 5 }], ["fs:write", { path: "w.txt", content: null }],
      ["fs:write", { content: "x" }], ["fs:write", { path: "w.txt", content: "x", mode: "755" }], ["fs:write", { path: "w.txt", content: "x", mode: -1 }],
      ["fs:write", { path: "w.txt", content: "x", mode: 0o100000 }], ["fs:write", { path: "w.txt", content: "x", offset: -1 }],
      ["fs:write", { path: "", content: "x" }], ["fs:write", { path: ".", content: "x" }], ["fs:write", { path: "sub", content: "x" }],
      ["fs:list", { path: [] }], ["fs:delete", {}], ["fs:delete", { path: "sub", recursive: "yes" }],
      ["fs:delete", { path: "" }], ["fs:delete", { path: "." }], ["fs:delete", { path: "/workspace" }],
      ["tool:undo", {}], ["tool:undo", { callId: 5 }], ["tool:undo", "x"], ["tool:undo", null],
    ];
    for (const [ev, data] of shapes) refusal(await ack(s, ev, data), "bad_request", `${ev} ${describe(data)}`);
    const emptyId = await undo(s, "");
    assert.ok(!emptyId.ok && ["bad_request", "not_found"].includes(emptyId.error.code), `tool:undo with an empty callId: ${describe(emptyId)}`);
    refusal(await fsRead(s, "sub"), "bad_request", "fs:read of a directory");
    refusal(await fsWrite(s, "a/".repeat(3000) + "x", "x"), "bad_request", "a path over PATH_MAX");
    refusal(await fsWrite(s, "n".repeat(300), "x"), "bad_request", "a name over NAME_MAX");
    refusal(await fsRead(s, "n".repeat(300)), "bad_request", "a name over NAME_MAX");
    const underFile = await fsWrite(s, "sub/file.txt/x", "x");
    assert.ok(!underFile.ok && ["bad_request", "not_found"].includes(underFile.error.code), `a file as a parent: ${describe(underFile)}`);
    refusal(await fsList(s, "sub/file.txt"), "bad_request", "fs:list of a file");

    // Symlinks planted by the tenant.
    await sh(s, [
      "ln -s /etc escape", "ln -s / root", "ln -s .. up", "ln -s ../../etc/passwd rel", "ln -s /etc/passwd abs",
      "ln -s /tmp tmplink", "ln -s /home/sandbox homelink", "ln -s /tmp/target wlink",
      "ln -s /proc/self/root procroot", "ln -s /proc/self/environ env", "ln -s /proc/self/fd/1 out", "ln -s /proc/self/fd/0 in",
      "ln -s /proc/self/mem mem", "ln -s /proc/1/root p1root", "ln -s /proc/1/environ p1env", "ln -s /proc/self/cwd cwd",
      "ln -s /dev/zero zero", "ln -s /workspace/sub/file.txt absin", "ln -s sub/file.txt relin", "ln -s loop1 loop2 && ln -s loop2 loop1",
    ].join(" && "));
    const through = ["escape/passwd", "escape", "root/etc/passwd", "root", "up/etc/passwd", "up", "rel", "abs", "tmplink/keep", "tmplink",
      "homelink/keep", "procroot/etc/passwd", "env", "out", "in", "mem", "p1root/etc/passwd", "p1env", "cwd/sub/file.txt", "zero"];
    for (const p of through) {
      refusal(await fsRead(s, p, {}, 10000), "bad_request", `fs:read through the symlink ${p}`);
      refusal(await fsList(s, p), "bad_request", `fs:list through the symlink ${p}`);
    }
    for (const p of ["escape/x", "root/tmp/x", "up/x", "tmplink/x", "homelink/x", "procroot/tmp/x", "p1root/tmp/x", "cwd/x", "tmplink/new/dir/x"]) {
      refusal(await fsWrite(s, p, "pwned"), "bad_request", `fs:write through the symlink ${p}`);
      refusal(await fsDelete(s, `${p}`, true), "bad_request", `fs:delete through the symlink ${p}`);
    }
    refusal(await fsDelete(s, "tmplink/keep"), "bad_request", "fs:delete through a symlink");
    refusal(await fsDelete(s, "homelink/keep", true), "bad_request", "fs:delete through a symlink");
    // A loop is refused, not followed forever.
    const loop = await fsRead(s, "loop1", {}, 10000);
    assert.equal(loop.ok, false, "a symlink loop");
    const outside = "cat /tmp/keep /home/sandbox/keep; ls -A /tmp; echo --; ls -A /home/sandbox; test ! -e /tmp/target && test ! -e /tmp/x && echo clean";
    const kept = await sh(s, outside);
    assert.equal(kept.stdout, "keep\nhome\nkeep\n--\nkeep\nclean\n", "nothing outside the workspace was touched");

    // The same paths over HTTP (Rust side).
    const got = await step("http", { base: url, sessionId: s.session.sessionId, token: s.session.mcp.token });
    assert.equal(got.checked, true);
    assert.equal((await sh(s, outside)).stdout, kept.stdout, "nothing outside the workspace was touched over HTTP");

    // A symlink as the last component of a write: either refused or replaced by a file in the
    // workspace; never followed to /tmp/target.
    const wl = await fsWrite(s, "wlink", "pwned");
    // Deleting a symlink with `recursive` removes the link, never what it points to.
    const dl = await fsDelete(s, "tmplink", true);
    // Symlinks that stay inside: a relative one is followed.
    assert.equal(await text(s, "relin"), "in\n");
    const absin = await fsRead(s, "absin");
    assert.equal((await sh(s, outside)).stdout, kept.stdout, "nothing outside the workspace was touched");

    // A race: `d` flips between a directory and a symlink to the home directory while writes
    // to d/f go on. No write may land outside.
    await sh(s, "nohup sh -c 'echo $$ > /tmp/racer.pid; while :; do rm -rf d; mkdir d; rm -rf d; ln -s /home/sandbox d; done' >/dev/null 2>&1 &");
    await until(async () => (await run(s, "test -s /tmp/racer.pid")).exitCode === 0, "racer started", 10000);
    const writes = [];
    const reads = [];
    for (let batch = 0; batch < 10; batch++) {
      writes.push(...await Promise.all(Array.from({ length: 20 }, (_, i) => fsWrite(s, `d/f${i % 10}`, "raced", {}, 30000))));
      reads.push(...await Promise.all(Array.from({ length: 10 }, () => fsRead(s, "d/keep", {}, 30000))));
    }
    await sh(s, "kill $(cat /tmp/racer.pid); rm -f /tmp/racer.pid");
    for (const r of reads) assert.ok(!r.ok || bytesOf(r.content, "race read").toString() !== "home\n", "a read through the flipping link reached the home directory");
    assert.equal((await sh(s, "ls -A /home/sandbox")).stdout, "keep\n", `a write through the flipping link reached the home directory (${writes.filter((w) => w.ok).length} of 200 writes succeeded)`);
    assert.ok(s.connected, "the socket is still there");
    await ack(s, "session:end");
    return { wlink: wl.ok ? "replaced" : wl.error.code, deleteLink: dl.ok ? "ok" : dl.error.code, absoluteInside: absin.ok ? "followed" : absin.error.code };
  },

  // Undo refusals: busy while a command of the session runs (its own exec, a chat
  // proposal), not_found for unknown, rejected, other sessions' calls; bad payloads are in
  // `escapes`.
  async undo_refusals() {
    const s = await session();
    const w = await put(s, "u.txt", "u");
    const running = run(s, "echo started; exec sleep 5", 30000);
    await until(() => s.outputs.some((o) => o.data.includes("started")), "the command started", 10000);
    const runningId = s.outputs.find((o) => o.data.includes("started")).callId;
    refusal(await undo(s, w.callId), "busy", "undo while a command runs");
    refusal(await undo(s, runningId), "busy", "undo of the running call itself");
    const done = await running;
    assert.equal(done.exitCode, 0);
    assert.ok(done.checkpoint, "the exec took a checkpoint");
    assert.equal(done.checkpoint.id, done.callId);
    // A chat proposal that runs.
    await ack(s, "message", "echo proposal-started; sleep 3");
    await until(() => s.requests.length === 1, "tool:request");
    okAck(await ack(s, "tool:approval", { callId: s.requests[0].callId, approved: true }), "approve");
    await until(() => s.outputs.some((o) => o.data.includes("proposal-started")), "the proposal started", 10000);
    refusal(await undo(s, w.callId), "busy", "undo while an approved proposal runs");
    await until(() => s.results.some((r) => r.callId === s.requests[0].callId), "tool:result", 20000);
    const result = s.results.find((r) => r.callId === s.requests[0].callId);
    assert.equal(result.checkpoint.id, result.callId, "tool:result carries the checkpoint");
    assertChanges(result.checkpoint, {}, "a proposal that changed nothing");
    // A rejected proposal has no checkpoint.
    await ack(s, "message", "touch rejected");
    await until(() => s.requests.length === 2, "second tool:request");
    okAck(await ack(s, "tool:approval", { callId: s.requests[1].callId, approved: false }), "reject");
    await until(() => s.results.some((r) => r.callId === s.requests[1].callId), "rejected result");
    assert.ok(!s.results.find((r) => r.callId === s.requests[1].callId).checkpoint, "a rejected call has no checkpoint");
    refusal(await undo(s, s.requests[1].callId), "not_found", "undo of a rejected call");
    refusal(await undo(s, "no-such-call"), "not_found", "undo of an unknown call");
    // Another session cannot undo this session's calls.
    const other = await session();
    refusal(await undo(other, w.callId), "not_found", "another session's callId");
    assert.equal(await text(s, "u.txt"), "u", "untouched by the other session");
    undone(await undo(s, w.callId), w.callId, "undo once nothing runs");
    refusal(await fsRead(s, "u.txt"), "not_found", "the write is undone");
    refusal(await undo(s, done.callId), "not_found", "a later call's checkpoint is dropped");
    await ack(s, "session:end");
    await ack(other, "session:end");
    return {};
  },

  // Undo of one exec that creates, modifies, deletes, chmods, renames and relinks; of a chat
  // proposal; of fs:write and fs:delete; of several calls; of a timed-out command; content
  // changed behind an unchanged size and mtime; across a resume.
  async undo_exec() {
    const s = await session();
    await put(s, "keep.txt", "keep\n");
    await put(s, "mod.txt", "before\n");
    await put(s, "del.txt", "delete me\n");
    await put(s, "chm.sh", "#!/bin/sh\necho hi\n");
    await put(s, "ren.txt", "rename me\n");
    await put(s, "sub/inner.txt", "inner\n");
    await put(s, "secret", "s3cret\n", { mode: 0o600 });
    await put(s, "bin.dat", pattern(70000));
    await sh(s, "ln -s keep.txt oldlink && ln -s /etc etclink && mkdir emptyold && chmod 700 sub");
    const before = await state(s);

    const x = await sh(s, [
      "echo new > created.txt", "mkdir newdir", "echo x > newdir/f", "mkdir emptydir", "echo after >> mod.txt", "rm del.txt",
      "chmod 755 chm.sh", "mv ren.txt renamed.txt", "ln -s keep.txt newlink", "rm -r sub", "ln -sfn mod.txt oldlink",
      "chmod 640 secret", "rmdir emptyold", "rm etclink", "ln -s /proc/1 etclink", "printf X | dd of=bin.dat bs=1 seek=5 conv=notrunc 2>/dev/null",
      "chmod 750 .",
    ].join(" && "));
    assert.equal(x.checkpoint.id, x.callId, "the exec ack's checkpoint");
    assertChanges(x.checkpoint, {
      added: ["created.txt", "newdir", "newdir/f", "emptydir", "renamed.txt", "newlink"],
      modified: ["mod.txt", "chm.sh", "oldlink", "secret", "etclink", "bin.dat"],
      removed: ["del.txt", "ren.txt", "sub/inner.txt", "emptyold"],
    }, "the exec's changes");
    assert.notEqual(await state(s), before);
    undone(await undo(s, x.callId), x.callId, "undo of the exec");
    assert.equal(await state(s), before, "the workspace is exactly as before the exec");
    assert.equal((await sh(s, "readlink etclink; readlink oldlink; stat -c %a chm.sh secret sub .")).stdout, "/etc\nkeep.txt\n644\n600\n700\n755\n");
    assert.equal(await text(s, "mod.txt"), "before\n");

    // A chat proposal, approved: tool:result carries the checkpoint; undo.
    const m = okAck(await ack(s, "message", "rm keep.txt && echo gone"), "message");
    await until(() => s.requests.some((r) => r.callId === m.callIds[0]), "tool:request");
    okAck(await ack(s, "tool:approval", { callId: m.callIds[0], approved: true }), "approve");
    await until(() => s.results.some((r) => r.callId === m.callIds[0]), "tool:result");
    const res = s.results.find((r) => r.callId === m.callIds[0]);
    assert.equal(res.status, "ok");
    assert.equal(res.checkpoint.id, m.callIds[0]);
    assertChanges(res.checkpoint, { removed: ["keep.txt"] }, "the proposal's changes");
    undone(await undo(s, m.callIds[0]), m.callIds[0], "undo of a proposal");
    assert.equal(await state(s), before, "the proposal is undone");

    // A command that changes nothing: an empty change list. Reads and lists take none.
    const nothing = await sh(s, "cat mod.txt > /dev/null");
    assertChanges(nothing.checkpoint, {}, "a command that changes nothing");
    const list = okAck(await fsList(s, ""), "fs:list");
    assert.ok(!("checkpoint" in list) && !("callId" in list), "a listing takes no checkpoint");

    // fs:write over a file, of a new file in new directories, fs:delete of a file and a tree.
    const w1 = await put(s, "mod.txt", "replaced\n");
    assertChanges(w1.checkpoint, { modified: ["mod.txt"] }, "fs:write over a file");
    undone(await undo(s, w1.callId), w1.callId, "undo of fs:write");
    assert.equal(await text(s, "mod.txt"), "before\n");
    const w2 = await put(s, "new/deep/file.txt", "n");
    assertChanges(w2.checkpoint, { added: ["new", "new/deep", "new/deep/file.txt"] }, "fs:write with parents");
    undone(await undo(s, w2.callId), w2.callId, "undo of fs:write with parents");
    refusal(await fsList(s, "new"), "not_found", "the parents it made are gone too");
    await sh(s, "mkdir -p tree/a/b && echo 1 > tree/a/one && echo 2 > tree/a/b/two && ln -s a/one tree/link && chmod 750 tree/a");
    const beforeTree = await state(s);
    const d1 = okAck(await fsDelete(s, "tree", true), "fs:delete tree");
    assertChanges(d1.checkpoint, { removed: ["tree", "tree/a", "tree/a/one", "tree/a/b", "tree/a/b/two", "tree/link"] }, "fs:delete of a tree");
    undone(await undo(s, d1.callId), d1.callId, "undo of fs:delete");
    assert.equal(await state(s), beforeTree, "the tree is back, modes and links included");

    // Several calls: undoing the first undoes all; later checkpoints are gone.
    const s0 = await state(s);
    const c1 = await sh(s, "echo 1 > a && rm mod.txt");
    const s1 = await state(s);
    const c2 = await put(s, "b", "2");
    const c3 = await sh(s, "echo 3 >> a && mkdir d3 && chmod 600 keep.txt");
    const c4 = okAck(await fsDelete(s, "b"), "fs:delete b");
    const c5 = await sh(s, "echo 5 > five");
    undone(await undo(s, c2.callId), c2.callId, "undo of the second of five calls");
    assert.equal(await state(s), s1, "the state right before the second call");
    for (const c of [c2, c3, c4, c5].slice(1)) refusal(await undo(s, c.callId), "not_found", "a later call's checkpoint after an undo");
    undone(await undo(s, c1.callId), c1.callId, "undo of the first call");
    assert.equal(await state(s), s0, "the state before all of them");

    // A timed-out command's partial work is undone too.
    const t = await run(s, "echo partial > part; mkdir partdir; sleep 30", 1500);
    assert.equal(t.status, "timeout");
    assertChanges(t.checkpoint, { added: ["part", "partdir"] }, "a timed-out command");
    undone(await undo(s, t.callId), t.callId, "undo of a timed-out command");
    assert.equal(await state(s), s0);

    // Content changed in place, same size, mtime set back: only ctime tells. Each checkpoint
    // must still hold what the file held then.
    await put(s, "same.txt", "AAAA");
    await sh(s, "touch -d '2001-01-01 00:00:00' same.txt");
    await sh(s, "true");
    const c6 = await sh(s, "printf BBBB | dd of=same.txt conv=notrunc 2>/dev/null && touch -d '2001-01-01 00:00:00' same.txt && stat -c '%s %Y' same.txt");
    assert.equal(c6.stdout, "4 978307200\n");
    assertChanges(c6.checkpoint, { modified: ["same.txt"] }, "a change behind the same size and mtime");
    const c7 = await sh(s, "rm same.txt");
    undone(await undo(s, c7.callId), c7.callId, "undo of the rm");
    assert.equal(await text(s, "same.txt"), "BBBB", "the checkpoint before the rm holds the new content");
    undone(await undo(s, c6.callId), c6.callId, "undo of the in-place change");
    assert.equal(await text(s, "same.txt"), "AAAA", "the checkpoint before the change holds the old content");

    // Checkpoints belong to the session, not the connection: a resume undoes.
    const r1 = await put(s, "resume.txt", "r");
    const { sessionId, resumeToken } = s.session;
    s.disconnect();
    const back = await session({ sessionId, resumeToken });
    assert.equal(back.session.resumed, true);
    undone(await undo(back, r1.callId), r1.callId, "undo after a resume");
    refusal(await fsRead(back, "resume.txt"), "not_found", "undone after the resume");
    await ack(back, "session:end");
    return {};
  },

  // What a tenant plants to make a checkpoint or an undo read or write outside the workspace,
  // block, or corrupt the store (SANDPOOL_CHECKPOINT_BYTES=16 MiB).
  async attacks() {
    const s = await session();
    const T = 20000; // every mutating call answers within this
    const passwd = (await sh(s, "sha256sum /etc/passwd; cat /proc/1/comm")).stdout;
    await sh(s, "echo secret-outside > /tmp/outside && echo home-file > /home/sandbox/home.txt");
    const outside = "cat /tmp/outside /home/sandbox/home.txt; ls -A /tmp; echo --; ls -A /home/sandbox";
    const outsideBefore = (await sh(s, outside)).stdout;

    // 1. Directories that become symlinks out (to /tmp, the home directory, /etc, /proc/1):
    // the undo puts the directories back in the workspace and writes nothing through the links.
    await put(s, "t/outside", "from-checkpoint");
    await put(s, "h/home.txt", "from-checkpoint");
    await put(s, "e/passwd", "from-checkpoint");
    await put(s, "p1/comm", "pwned");
    await put(s, "p1/oom_score_adj", "1000");
    const swap = await sh(s, "rm -r t h e p1 && ln -s /tmp t && ln -s /home/sandbox h && ln -s /etc e && ln -s /proc/1 p1", undefined, T);
    undone(await undo(s, swap.callId, T), swap.callId, "undo of directories swapped for symlinks");
    assert.equal((await sh(s, "test -d t -a ! -L t && test -d h -a ! -L h && test -d e -a ! -L e && test -d p1 -a ! -L p1 && cat t/outside h/home.txt e/passwd p1/comm")).stdout,
      "from-checkpointfrom-checkpointfrom-checkpointpwned", "the directories are back, with their files");
    assert.equal((await sh(s, outside)).stdout, outsideBefore, "nothing written outside the workspace");
    assert.equal((await sh(s, "sha256sum /etc/passwd; cat /proc/1/comm")).stdout, passwd, "/etc/passwd and /proc/1 untouched");

    // 2. Symlinks out in the checkpoint: restored as links, never followed (the checkpoint must
    // not copy /etc, /proc/1, the host stream on fd 0, or /tmp/outside).
    await sh(s, "ln -s /etc etc && ln -s /proc/1 p1link && ln -s /tmp/outside outlink && ln -s /proc/self/fd/0 fd0 && ln -s /proc/self/mem mem && ln -s /dev/zero zero");
    const started = Date.now();
    const clobber = await sh(s, "rm etc p1link outlink fd0 mem zero && mkdir etc && echo fake > etc/passwd && echo clobbered > outlink && echo x > fd0", undefined, T);
    assert.ok(Date.now() - started < T, "the checkpoint over links out is prompt");
    assertChanges(clobber.checkpoint, { added: ["etc/passwd"], retyped: ["etc", "outlink", "fd0"], removed: ["p1link", "mem", "zero"] }, "links replaced");
    undone(await undo(s, clobber.callId, T), clobber.callId, "undo of links replaced by files");
    assert.equal((await sh(s, "for l in etc p1link outlink fd0 mem zero; do test -L $l && readlink $l; done")).stdout,
      "/etc\n/proc/1\n/tmp/outside\n/proc/self/fd/0\n/proc/self/mem\n/dev/zero\n", "the links are links again, with their targets");
    assert.equal((await sh(s, outside)).stdout, outsideBefore, "nothing written outside through the restored links");
    assert.equal((await sh(s, "sha256sum /etc/passwd; cat /proc/1/comm")).stdout, passwd);
    await sh(s, "rm etc p1link outlink fd0 mem zero");

    // 3. Hard links: content restored right, both names.
    await sh(s, "echo orig > h1 && ln h1 h2");
    const hl = await sh(s, "echo changed > h1 && cat h2");
    assert.equal(hl.stdout, "changed\n");
    undone(await undo(s, hl.callId, T), hl.callId, "undo over hard links");
    assert.equal((await sh(s, "cat h1 h2")).stdout, "orig\norig\n", "both names hold the old content");
    const hardLinked = (await sh(s, "stat -c %h h1")).stdout.trim();
    const rmh = await sh(s, "rm h1");
    undone(await undo(s, rmh.callId, T), rmh.callId, "undo of the rm of one name");
    assert.equal((await sh(s, "cat h1 h2")).stdout, "orig\norig\n");

    // 4. The store is not shared with the workspace: a restored file written in place must
    // not change what an older checkpoint holds.
    await put(s, "shared.txt", "ORIG");
    const a = await sh(s, "true");
    const b = await sh(s, "rm shared.txt");
    undone(await undo(s, b.callId, T), b.callId, "undo of the rm");
    await sh(s, "printf CORR | dd of=shared.txt conv=notrunc 2>/dev/null; cat shared.txt");
    undone(await undo(s, a.callId, T), a.callId, "undo to the older checkpoint");
    assert.equal(await text(s, "shared.txt"), "ORIG", "the older checkpoint kept its content");

    // 5. Fifos: no checkpoint, read or undo opens one (that would block); one with a writer
    // that never stops must not be read either. Undo brings a fifo back as a fifo.
    const mk = await sh(s, "mkfifo p p2; nohup sh -c 'echo $$ > /tmp/yes.pid; exec yes > p2' >/dev/null 2>&1 </dev/null & sleep 0.2", undefined, T);
    let t0 = Date.now();
    const afterFifo = await put(s, "afterfifo", "x", {}, T);
    assert.ok(afterFifo.checkpoint, "a checkpoint with fifos in the workspace");
    await sh(s, "echo y > q", undefined, T);
    const fr = await fsRead(s, "p", {}, T);
    assert.equal(fr.ok, false, "reading a fifo is refused");
    const fifoMs = Date.now() - t0;
    const rp = await sh(s, "rm p && echo notfifo > p", undefined, T);
    undone(await undo(s, rp.callId, T), rp.callId, "undo of a fifo replaced by a file");
    assert.equal((await run(s, "test -p p")).exitCode, 0, "the fifo is a fifo again");
    undone(await undo(s, mk.callId, T), mk.callId, "undo of the mkfifo");
    await sh(s, "kill $(cat /tmp/yes.pid) 2>/dev/null; rm -f /tmp/yes.pid p p2");

    // 6. Names: a directory named dev with a file null, backslashes, newlines, bytes that are
    // not UTF-8, leading dashes and spaces, globs, the longest name, device-like names.
    const make = `mkdir dev && echo devnull > dev/null && printf bs > '..\\x' && printf nl > "$(printf 'new\\nline')" &&
      printf ff > "$(printf 'bad\\377utf8')" && printf dash > ./-rf && printf sp > ' lead space' && printf star > 'star*' &&
      printf long > "$(printf '%0255d' 0)" && printf hid > .hidden && printf con > CON && printf dots > '...' && printf cr > "$(printf 'c\\rr')"`;
    const check = `c() { [ -f "$1" ] && [ "$(cat -- "$1")" = "$2" ] || echo "missing $2"; }
      c dev/null devnull; c '..\\x' bs; c "$(printf 'new\\nline')" nl; c "$(printf 'bad\\377utf8')" ff; c ./-rf dash; c ' lead space' sp;
      c 'star*' star; c "$(printf '%0255d' 0)" long; c .hidden hid; c CON con; c ... dots; c "$(printf 'c\\rr')" cr;
      [ -c /dev/null ] || echo "/dev/null replaced"; echo checked`;
    await sh(s, make);
    assert.equal((await sh(s, check)).stdout, "checked\n");
    const named = okAck(await fsList(s, ""), "fs:list with odd names");
    for (const n of ["..\\x", "new\nline", "-rf", " lead space", "star*", "CON", "..."]) {
      assert.ok(named.entries.some((e) => e.name === n), `fs:list names ${JSON.stringify(n)}`);
    }
    assert.equal(await text(s, "new\nline"), "nl", "a name with a newline is a valid path");
    assert.equal(await text(s, "..\\x"), "bs", "a backslash is a plain character");
    const wipe = await sh(s, "rm -rf -- * .[!.]* ..?* && ls -A | wc -l", undefined, T);
    assert.equal(wipe.stdout.trim(), "0");
    undone(await undo(s, wipe.callId, T), wipe.callId, "undo of the wipe");
    assert.equal((await sh(s, check)).stdout, "checked\n", "every odd name back with its content");

    // 7. A racer flips `d` between a directory and a symlink to the home directory while undo
    // restores d/f: nothing may land outside.
    let undoOutcomes = [];
    const wrongCodes = [];
    for (let i = 0; i < 5; i++) {
      await put(s, "d/f", "ckpt");
      const r = await sh(s, "rm -r d; nohup sh -c 'echo $$ > /tmp/racer.pid; while :; do rm -rf d; ln -s /home/sandbox d; rm -f d; mkdir d; done' >/dev/null 2>&1 </dev/null & sleep 0.1", undefined, T);
      const u = await undo(s, r.callId, T);
      undoOutcomes.push(u.ok ? "ok" : `${u.error.code}: ${u.error.message}`);
      await sh(s, "kill $(cat /tmp/racer.pid); rm -f /tmp/racer.pid; sleep 0.1");
      assert.equal((await sh(s, outside)).stdout, outsideBefore, `race ${i}: nothing written outside the workspace`);
      if (!u.ok) {
        // A restore the racer broke keeps its checkpoint: once the racer is gone, it works.
        undone(await undo(s, r.callId, T), r.callId, `race ${i}: undo again once the racer is gone (first: ${u.error.code} ${u.error.message})`);
        assert.equal(await text(s, "d/f"), "ckpt", `race ${i}: restored`);
        // So the first refusal must be neither not_found (which says the checkpoint is gone)
        // nor bad_request (the request was sound); checked at the end, after the other attacks.
        if (["not_found", "bad_request"].includes(u.error.code)) wrongCodes.push(`race ${i}: ${u.error.code}: ${u.error.message}`);
      }
      await sh(s, "rm -rf d");
    }

    // 8. A racer flips `w` between a directory and a symlink to / while checkpoints are taken
    // (each fs:write takes one): no walk follows the link, so no change ever names what is
    // under /, and undoing the racer's call brings the workspace back exactly.
    await sh(s, "mkdir w && echo w > w/f");
    const beforeRace = await state(s);
    const racer = await sh(s, "nohup sh -c 'echo $$ > /tmp/racer.pid; while :; do mv w w.d; ln -s / w; rm w; mv w.d w; done' >/dev/null 2>&1 </dev/null & sleep 0.1", undefined, T);
    const walked = [];
    for (let i = 0; i < 30; i++) walked.push(await fsWrite(s, `racing${i % 3}.txt`, `${i}`, {}, T));
    await sh(s, "kill $(cat /tmp/racer.pid); rm -f /tmp/racer.pid; sleep 0.1; test -L w && rm w; test -d w.d && mv w.d w; true");
    for (const w of walked) {
      const c = w.checkpoint && w.checkpoint.changes;
      const all = c ? [...c.added, ...c.modified, ...c.removed] : [];
      assert.ok(!all.some((p) => /^w(\.d)?\/(etc|proc|bin|usr|sys|dev|tmp|workspace)(\/|$)/.test(p)), `a checkpoint walked through the link to /: ${JSON.stringify(c)}`);
    }
    undone(await undo(s, racer.callId, T), racer.callId, "undo of the racer's call");
    assert.equal(await state(s), beforeRace, "the workspace as before the race");
    await sh(s, "rm -r w");

    // 9. The tenant cannot read the store: content only a checkpoint holds is nowhere but in
    // the workspace once undone.
    const marker = `MARKER-${crypto.randomBytes(8).toString("hex")}`;
    await put(s, "marker.txt", marker);
    const rmMarker = await sh(s, "rm marker.txt");
    assert.equal(await findEverywhere(s, marker), "", "the checkpoint store is readable by the tenant");
    undone(await undo(s, rmMarker.callId, T), rmMarker.callId, "undo of the rm of the marker");
    assert.equal(await text(s, "marker.txt"), marker, "the store held it");

    // 10. A file the tenant made unreadable (mode 000): restored exactly, or the checkpoint says
    // why it could not be taken.
    await sh(s, "echo locked-content > locked && chmod 000 locked");
    const rl = await sh(s, "rm -f locked", undefined, T);
    let locked;
    if (rl.checkpoint) {
      undone(await undo(s, rl.callId, T), rl.callId, "undo of the rm of a mode-000 file");
      assert.equal((await sh(s, "stat -c %a locked; chmod 600 locked; cat locked")).stdout, "0\nlocked-content\n", "mode 000 and content restored");
      locked = "restored";
    } else {
      assert.ok(rl.checkpointError && rl.checkpointError.code, `a null checkpoint says why: ${describe(rl)}`);
      locked = `checkpointError ${rl.checkpointError.code}`;
    }

    assert.equal((await sh(s, "sha256sum /etc/passwd; cat /proc/1/comm")).stdout, passwd);
    assert.equal((await sh(s, outside)).stdout, outsideBefore);
    const info = await step("sandbox", { workspaceId: s.session.workspaceId });
    assert.equal(info.oomKilled, false, "the sandbox was not OOM-killed");
    await ack(s, "session:end");
    assert.deepEqual(wrongCodes, [], "an undo broken by a concurrent change, whose checkpoint was kept, answered as if the checkpoint were gone or the request bad");
    return { hardLinkCount: hardLinked, fifoMs, racedUndos: undoOutcomes, locked, memory: info };
  },

  // A 100 GiB sparse file: the next mutating call is prompt; its checkpoint is refused with
  // too_large or taken (then undo is exact). The sandbox is not killed.
  async sparse() {
    const s = await session();
    assert.equal((await sh(s, "truncate -s 100G big && stat -c %s big")).stdout, "107374182400\n");
    let t0 = Date.now();
    const next = await run(s, "echo after > small", undefined, 60000);
    const nextMs = Date.now() - t0;
    assert.equal(next.ok, true, describe(next));
    assert.ok(nextMs < 30000, `the call after a 100 GiB sparse file took ${nextMs} ms`);
    let outcome;
    if (next.checkpoint === null) {
      assert.equal(next.checkpointError && next.checkpointError.code, "too_large", `checkpoint null: ${describe(next.checkpointError)}`);
      refusal(await undo(s, next.callId), "not_found", "no checkpoint, no undo");
      outcome = "too_large";
    } else {
      assertChanges(next.checkpoint, { added: ["small"] }, "the call after the sparse file");
      undone(await undo(s, next.callId, 60000), next.callId, "undo with a sparse file");
      assert.equal((await sh(s, "stat -c %s big; test ! -e small && echo gone")).stdout, "107374182400\ngone\n");
      outcome = "taken";
    }
    t0 = Date.now();
    const w = await fsWrite(s, "w.txt", "w", {}, 60000);
    okAck(w, "fs:write after the sparse file");
    const writeMs = Date.now() - t0;
    const r = await fsRead(s, "big", { length: 16 }, 30000);
    okAck(r, "a slice of the sparse file");
    assert.ok(bytesOf(r.content, "slice").equals(Buffer.alloc(16)));
    const info = await step("sandbox", { workspaceId: s.session.workspaceId });
    assert.equal(info.oomKilled, false, "the sandbox was not OOM-killed");
    // With the file gone, checkpoints are taken again.
    await sh(s, "rm big");
    const again = await sh(s, "echo again > again.txt");
    assert.ok(again.checkpoint, `a checkpoint once the sparse file is gone: ${describe(again)}`);
    await ack(s, "session:end");
    return { outcome, nextMs, writeMs, memory: info };
  },

  // 200,000 small files: the next mutating call completes, its checkpoint taken or refused
  // too_large; undo of the call that made them; the sandbox stays alive.
  async many() {
    const s = await session();
    let t0 = Date.now();
    const make = await sh(s, "mkdir many && cd many && seq 200000 | xargs touch && ls | wc -l", 280000, 300000);
    const makeMs = Date.now() - t0;
    assert.equal(make.stdout.trim(), "200000");
    const makeAck = JSON.stringify(make).length;
    t0 = Date.now();
    const next = await run(s, "echo after > after.txt", undefined, 240000);
    const nextMs = Date.now() - t0;
    assert.equal(next.ok, true, describe(next));
    let outcome;
    let undoMs = null;
    if (next.checkpoint === null) {
      assert.equal(next.checkpointError && next.checkpointError.code, "too_large", `checkpoint null: ${describe(next.checkpointError)}`);
      outcome = "too_large";
    } else {
      assertChanges(next.checkpoint, { added: ["after.txt"] }, "the call after 200,000 files");
      t0 = Date.now();
      undone(await undo(s, next.callId, 240000), next.callId, "undo with 200,000 files");
      undoMs = Date.now() - t0;
      assert.equal((await sh(s, "test ! -e after.txt && ls many | wc -l", 120000, 150000)).stdout.trim(), "200000");
      outcome = "taken";
    }
    // A second call with nothing changed (the cost of a walk).
    t0 = Date.now();
    await sh(s, "true", undefined, 240000);
    const idleMs = Date.now() - t0;
    // Undo of the call that made them (its checkpoint is of an empty workspace).
    t0 = Date.now();
    const u = await undo(s, make.callId, 240000);
    const undoManyMs = Date.now() - t0;
    if (u.ok) {
      assert.equal((await sh(s, "ls -A | wc -l")).stdout.trim(), "0", "all 200,000 removed");
    } else {
      // Refused (dropped, or too many entries to restore): then the workspace is untouched,
      // not half restored.
      assert.ok(["not_found", "too_large"].includes(u.error.code), `undo of the call that made 200,000 files: ${describe(u)}`);
      assert.equal((await sh(s, "ls many | wc -l", 120000, 150000)).stdout.trim(), "200000", "a refused undo changed nothing");
    }
    const info = await step("sandbox", { workspaceId: s.session.workspaceId });
    assert.equal(info.oomKilled, false, "the sandbox was not OOM-killed");
    assert.equal((await sh(s, "echo alive")).stdout, "alive\n", "the session still works");
    await ack(s, "session:end");
    return { outcome, makeMs, makeAckBytes: makeAck, nextMs, undoMs, idleMs, undoMany: u.ok ? "ok" : u.error.code, undoManyMs, memory: info };
  },

  // A directory 25,000 levels deep (built in chains of 1,000 moved into each other, as no
  // path may pass PATH_MAX): every path's name is long, together far beyond the bound. The
  // next mutating call completes, its checkpoint taken or refused; the sandbox lives.
  async deep() {
    const s = await session();
    let t0 = Date.now();
    const make = await sh(s, `leaf=$(printf 'd/%.0s' $(seq 1000)); mkdir -p "deep/$leaf" && for k in $(seq 2 25); do mkdir -p "next/$leaf" && mv deep "next/$leaf" && mv next deep || exit 1; done; echo built`, 280000, 300000);
    const makeMs = Date.now() - t0;
    assert.equal(make.stdout, "built\n");
    t0 = Date.now();
    const next = await run(s, "echo after > after.txt", undefined, 240000);
    const nextMs = Date.now() - t0;
    assert.equal(next.ok, true, describe(next));
    assert.ok(nextMs < 60000, `the call after a deep tree took ${nextMs} ms`);
    if (next.checkpoint === null) {
      assert.ok(next.checkpointError && next.checkpointError.code, `a null checkpoint says why: ${describe(next)}`);
    } else {
      assertChanges(next.checkpoint, { added: ["after.txt"] }, "the call after a deep tree");
    }
    const info = await step("sandbox", { workspaceId: s.session.workspaceId });
    assert.equal(info.oomKilled, false, "the sandbox was not OOM-killed");
    assert.equal((await sh(s, "echo alive")).stdout, "alive\n", "the session still works");
    t0 = Date.now();
    const u = await undo(s, make.callId, 240000);
    const undoMs = Date.now() - t0;
    if (u.ok) assert.equal((await sh(s, "ls -A | wc -l")).stdout.trim(), "0", "the deep tree is gone");
    else assert.equal((await sh(s, "test -d deep/d && echo kept")).stdout, "kept\n", `a refused undo (${describe(u)}) leaves the tree`);
    await ack(s, "session:end");
    return {
      makeMs, nextMs, undoMs, memory: info,
      checkpoint: next.checkpoint === null ? next.checkpointError : "taken",
      undo: u.ok ? "ok" : u.error,
    };
  },

  // SANDPOOL_CHECKPOINT_BYTES=16 MiB: the oldest checkpoints are dropped to make room; one file
  // bigger than the whole store is refused too_large without losing the others.
  async store_bound() {
    const s = await session();
    const a = await sh(s, "head -c 12582912 /dev/urandom > r1");
    const b = await sh(s, "true");
    assert.ok(b.checkpoint, "12 MiB fit in 16 MiB");
    const c = await sh(s, "head -c 12582912 /dev/urandom > r1 && sha256sum < r1");
    const d = await sh(s, "true");
    assert.ok(d.checkpoint, `a new 12 MiB version: older checkpoints make room: ${describe(d)}`);
    for (const x of [a, b, c]) refusal(await undo(s, x.callId), "not_found", "a checkpoint dropped for room");
    const e = await sh(s, "rm r1");
    undone(await undo(s, e.callId), e.callId, "undo of rm r1");
    assert.equal((await sh(s, "sha256sum < r1")).stdout, c.stdout, "r1 restored from the kept checkpoint");
    // One file bigger than the store.
    const f = await sh(s, "head -c 20971520 /dev/urandom > r2");
    const g = await sh(s, "echo g > g.txt");
    assert.equal(g.checkpoint, null, "20 MiB cannot be checkpointed in 16 MiB");
    assert.equal(g.checkpointError && g.checkpointError.code, "too_large", describe(g.checkpointError));
    refusal(await undo(s, g.callId), "not_found", "no checkpoint, no undo");
    undone(await undo(s, f.callId), f.callId, "a too_large checkpoint does not drop the ones before it");
    assert.equal((await sh(s, "ls -A; sha256sum < r1")).stdout, `r1\n${c.stdout}`, "the state before r2");
    await ack(s, "session:end");
    return {};
  },

  // SANDPOOL_CHECKPOINT_BYTES=0: no checkpoints, no undo.
  async checkpoints_off() {
    const s = await session();
    const w = okAck(await fsWrite(s, "x", "x"), "fs:write");
    assert.equal(w.checkpoint, null, "checkpoints are off");
    const e = await sh(s, "echo y > y");
    assert.equal(e.checkpoint, null, "checkpoints are off");
    refusal(await undo(s, w.callId), "not_found", "no checkpoints");
    await ack(s, "session:end");
    return {};
  },

  // The next session on the same sandbox (pool of one) finds no checkpoint of the last one.
  async next_session() {
    const a = await session();
    const marker = `PREVIOUS-${crypto.randomBytes(8).toString("hex")}`;
    const w = await put(a, "a.txt", marker);
    const e = await sh(a, "echo more >> a.txt && mkdir adir && echo in > adir/f");
    const d = okAck(await fsDelete(a, "a.txt"), "fs:delete");
    assert.deepEqual(await ack(a, "session:end"), { ok: true, sessionId: a.session.sessionId });
    const b = await session();
    assert.equal(b.session.workspaceId, a.session.workspaceId, "the same sandbox (pool of one)");
    for (const c of [w, e, d]) refusal(await undo(b, c.callId), "not_found", "a checkpoint of the previous session");
    assert.deepEqual(okAck(await fsList(b, ""), "fs:list").entries, [], "the workspace is empty");
    const first = await put(b, "b.txt", "b");
    assertChanges(first.checkpoint, { added: ["b.txt"] }, "the first write of the next session");
    assert.equal(await findEverywhere(b, marker), "", "nothing of the previous session's files anywhere");
    undone(await undo(b, first.callId), first.callId, "undo of the first write");
    assert.deepEqual(okAck(await fsList(b, ""), "fs:list").entries, [], "back to empty, not to the last session's state");
    await ack(b, "session:end");
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
