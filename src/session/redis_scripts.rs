//! The Lua scripts of the Redis session store: every write that touches several keys is one
//! script, so Redis applies it whole or not at all (`redis_store.rs` has the data layout).

/// Writes a session with its index entries: the activity indexes, its owner's set and, when
/// it has a subject, the subject's set (so that a record written again after the store lost
/// its data counts towards its subject's limit again).
///
/// ARGV[14] is the lease's fence (20 digits, so that strings compare as numbers), ARGV[15]
/// the sandbox-owner key prefix, ARGV[16] `restore` for a catch-up write: then nothing is
/// written (0) when the session exists, or its sandbox is recorded for another session
/// under a lease at least as new. ARGV[17] the workspace token's hash, ARGV[18] the approval
/// policy.
pub(super) const PUT: &str = r#"
local sandbox = ARGV[15] .. ARGV[3]
if ARGV[16] == 'restore' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
  local f = redis.call('HMGET', sandbox, 'session', 'fence')
  if f[1] and f[1] ~= ARGV[1] and f[2] and f[2] >= ARGV[14] then return 0 end
end
local old = redis.call('HGET', KEYS[1], 'owner')
if old and old ~= ARGV[2] then redis.call('SREM', ARGV[11] .. old, ARGV[1]) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'owner', ARGV[2], 'container', ARGV[3],
  'token_hash', ARGV[4], 'created_ms', ARGV[5], 'last_active_ms', ARGV[6], 'state', ARGV[7],
  'detached_at_ms', ARGV[8], 'claimed_by', ARGV[9], 'claimed_at_ms', ARGV[10], 'subject', ARGV[12],
  'fence', ARGV[14], 'mcp_hash', ARGV[17], 'approval', ARGV[18])
redis.call('HSET', sandbox, 'owner', ARGV[2], 'session', ARGV[1], 'fence', ARGV[14])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
if ARGV[7] == 'detached' then redis.call('ZADD', KEYS[3], ARGV[8], ARGV[1]) else redis.call('ZREM', KEYS[3], ARGV[1]) end
if ARGV[7] == 'ending' then redis.call('ZADD', KEYS[4], ARGV[10], ARGV[1]) else redis.call('ZREM', KEYS[4], ARGV[1]) end
redis.call('SADD', ARGV[11] .. ARGV[2], ARGV[1])
if ARGV[12] ~= '' then redis.call('SADD', ARGV[13] .. ARGV[12], ARGV[1]) end
return 1
"#;

pub(super) const TOUCH: &str = r#"
local st = redis.call('HGET', KEYS[1], 'state')
if (not st) or st == 'ending' then return 0 end
local la = tonumber(redis.call('HGET', KEYS[1], 'last_active_ms')) or 0
if tonumber(ARGV[1]) > la then
  redis.call('HSET', KEYS[1], 'last_active_ms', ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
end
return 1
"#;

/// ARGV: now, id, the owner that detaches it (only the owner may: a replica that lost the
/// session while it was frozen must not mark its new owner's session detached).
pub(super) const DETACH: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'state', 'owner')
if f[1] ~= 'active' or f[2] ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'detached', 'detached_at_ms', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
"#;

pub(super) const REATTACH: &str = r#"
local st = redis.call('HGET', KEYS[1], 'state')
if st ~= 'detached' and st ~= 'active' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'active', 'detached_at_ms', '0')
redis.call('ZREM', KEYS[3], ARGV[2])
local la = tonumber(redis.call('HGET', KEYS[1], 'last_active_ms')) or 0
if tonumber(ARGV[1]) > la then
  redis.call('HSET', KEYS[1], 'last_active_ms', ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
end
return 1
"#;

/// KEYS: idx:detached, idx:ending. ARGV: session prefix, heartbeat prefix, idle cutoff,
/// detached cutoff, claimed cutoff, claimer, now, mode ('expired' or 'any'), ids...
pub(super) const CLAIM: &str = r#"
local out = {}
local idle, detached, claimed = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
for i = 9, #ARGV do
  local id = ARGV[i]
  local key = ARGV[1] .. id
  if redis.call('EXISTS', key) == 1 then
    local f = redis.call('HMGET', key, 'state', 'last_active_ms', 'detached_at_ms', 'claimed_at_ms', 'owner')
    local state, la, da, ca, owner = f[1], tonumber(f[2]) or 0, tonumber(f[3]) or 0, tonumber(f[4]) or 0, f[5] or ''
    local eligible
    if state == 'ending' then
      eligible = ca <= claimed
    elseif ARGV[8] == 'any' then
      eligible = true
    else
      eligible = la <= idle or (state == 'detached' and da <= detached)
    end
    if eligible and (owner == ARGV[6] or redis.call('EXISTS', ARGV[2] .. owner) == 0) then
      redis.call('HSET', key, 'state', 'ending', 'claimed_by', ARGV[6], 'claimed_at_ms', ARGV[7])
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZADD', KEYS[2], ARGV[7], id)
      table.insert(out, redis.call('HGETALL', key))
    end
  end
end
return out
"#;

/// Holds one of a subject's slots for `ARGV[1]` if fewer than `ARGV[2]` are taken, for
/// `ARGV[5]` ms unless the session is written by then. Members that are neither a session nor
/// a live reservation (an opener that crashed) are pruned first, so a crash never keeps a slot
/// for longer than the reservation's life.
pub(super) const RESERVE: &str = r#"
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[3] .. id) == 0 and redis.call('EXISTS', ARGV[4] .. id) == 0 then
    redis.call('SREM', KEYS[1], id)
  end
end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SET', ARGV[4] .. ARGV[1], '1', 'PX', ARGV[5])
return 1
"#;

/// ARGV: id, owner prefix, subject prefix, sandbox-owner prefix. The sandbox's owner goes
/// only if it still names this session.
pub(super) const DELETE: &str = r#"
local container = redis.call('HGET', KEYS[1], 'container')
if container and redis.call('HGET', ARGV[4] .. container, 'session') == ARGV[1] then
  redis.call('DEL', ARGV[4] .. container)
end
local owner = redis.call('HGET', KEYS[1], 'owner')
local subject = redis.call('HGET', KEYS[1], 'subject')
if subject and subject ~= '' then redis.call('SREM', ARGV[3] .. subject, ARGV[1]) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if owner then redis.call('SREM', ARGV[2] .. owner, ARGV[1]) end
return 1
"#;

/// ARGV: from, to, id, owner prefix, fence (20 digits), sandbox-owner prefix, handed prefix.
/// The container joins `from`'s handed set (a restart of `from` leaves it alone, whatever
/// the label) and leaves `to`'s (it is back with a holder that may carry its label).
pub(super) const TRANSFER: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'owner', 'state', 'container')
if f[1] ~= ARGV[1] or (not f[2]) or f[2] == 'ending' then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'fence', ARGV[5])
redis.call('SREM', ARGV[4] .. ARGV[1], ARGV[3])
redis.call('SADD', ARGV[4] .. ARGV[2], ARGV[3])
redis.call('HSET', ARGV[6] .. f[3], 'owner', ARGV[2], 'session', ARGV[3], 'fence', ARGV[5])
redis.call('SADD', ARGV[7] .. ARGV[1], f[3])
redis.call('SREM', ARGV[7] .. ARGV[2], f[3])
return 1
"#;

/// KEYS: the epoch counter. ARGV: the floor: the clock in seconds, or the epoch the caller
/// must exceed if that is larger. Never at or below the floor, so that a store that lost its
/// data still hands out epochs larger than those of the leases taken over.
pub(super) const NEXT_EPOCH: &str = r#"
local e = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if floor > e then e = floor end
e = e + 1
redis.call('SET', KEYS[1], string.format('%d', e))
return e
"#;

/// KEYS: the heartbeat key, the instances set. ARGV: incarnation, ttl ms, instance. Taken or
/// renewed if this incarnation holds it or nobody does (a new process, or a store that lost
/// its data), else 0: another process has the id.
pub(super) const HEARTBEAT: &str = r#"
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"#;

/// KEYS: the heartbeat key. ARGV: incarnation. Deleted only by its holder.
pub(super) const REMOVE_HEARTBEAT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// Sets a session's approval policy (`ARGV[1]`) if the record exists and `ARGV[2]` owns it.
pub(super) const SET_APPROVAL: &str = r#"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'approval', ARGV[1])
return 1
"#;
