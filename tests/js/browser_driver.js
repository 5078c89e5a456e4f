// A browser's side of a session, driven line by line by a Rust test, with the official
// socket.io client (v4). Usage: node browser_driver.js <url> [approval]
// Prints one JSON line per event it hears: {"ev":"session"|"tool:request"|"tool:output"|
// "tool:result"|"sandpool:error"|"session:expired"|"disconnect", "data":...}.
// Reads one JSON command per line on stdin:
//   {"do":"approve","callId":ID,"approved":BOOL}   answers tool:approval (prints {"ev":"ack",...})
//   {"do":"policy","approval":NAME}                 emits session:policy (prints the ack)
//   {"do":"exec","command":CMD}                     the browser's own exec (prints the ack)
//   {"do":"message","text":TEXT}                    a chat message (prints the ack)
//   {"do":"emit","event":EV,"data":DATA}            any event with an ack (prints the ack)
//   {"do":"autoapprove"}                           approves every tool:request from now on
//   {"do":"leave"}                                  disconnects (the session waits for a resume)
//   {"do":"resume","approval":NAME?}                reconnects with the resume token
//   {"do":"end"}                                    session:end, then exits
"use strict";
const readline = require("node:readline");
const { io } = require("socket.io-client");

const [, , url, approval] = process.argv;
let socket = null;
let session = null;

function say(ev, data) {
  console.log(JSON.stringify({ ev, data }));
}

function connect(auth) {
  const s = io(url, { transports: ["websocket"], reconnection: false, forceNew: true, auth });
  s.on("session", (d) => {
    if (!session) session = d;
    say("session", d);
  });
  for (const ev of ["tool:request", "tool:output", "tool:result", "sandpool:error", "session:expired"]) {
    s.on(ev, (d) => say(ev, d));
  }
  s.on("disconnect", (reason) => say("disconnect", reason));
  s.on("connect_error", (e) => say("connect_error", String(e && e.message)));
  return s;
}

socket = connect(approval ? { approval } : {});

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => run(JSON.parse(line)).catch((e) => say("ack", { ok: false, error: { code: "driver", message: String(e && e.message) } })));

async function run(cmd) {
  switch (cmd.do) {
    case "approve": {
      const ack = await socket.timeout(10000).emitWithAck("tool:approval", { callId: cmd.callId, approved: cmd.approved });
      say("ack", ack);
      break;
    }
    case "policy": {
      const ack = await socket.timeout(10000).emitWithAck("session:policy", { approval: cmd.approval });
      say("ack", ack);
      break;
    }
    case "exec": {
      const ack = await socket.timeout(30000).emitWithAck("exec", { command: cmd.command });
      say("ack", ack);
      break;
    }
    case "message": {
      const ack = await socket.timeout(10000).emitWithAck("message", cmd.text);
      say("ack", ack);
      break;
    }
    case "emit": {
      const ack = await socket.timeout(30000).emitWithAck(cmd.event, cmd.data);
      say("ack", ack);
      break;
    }
    case "autoapprove":
      // From now on every tool:request is approved as soon as it is heard.
      socket.on("tool:request", (req) => socket.emit("tool:approval", { callId: req.callId, approved: true }));
      say("autoapprove", true);
      break;
    case "leave":
      socket.disconnect();
      break;
    case "resume": {
      const auth = { sessionId: session.sessionId, resumeToken: session.resumeToken };
      if (cmd.approval) auth.approval = cmd.approval;
      socket = connect(auth);
      break;
    }
    case "end": {
      const ack = await socket.timeout(10000).emitWithAck("session:end");
      say("ack", ack);
      process.exit(0);
    }
  }
}
lines.on("close", () => process.exit(0));
