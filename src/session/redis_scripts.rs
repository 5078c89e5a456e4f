//! The Lua scripts of the Redis session store: every write that touches several keys is one
//! script, so Redis applies it whole or not at all (`redis_store.rs` has the data layout).

/// Writes a session with its index entries: the activity indexes, its owner's set and, when
/// it has a subject, the subject's set (so that a record written again after the store lost
/// its data counts towards its subject's limit again).
pub(super) const PUT: &str = r#"
local old = redis.call('HGET', KEYS[1], 'owner')
if old and old ~= ARGV[2] then redis.call('SREM', ARGV[11] .. old, ARGV[1]) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'owner', ARGV[2], 'container', ARGV[3],
  'token_hash', ARGV[4], 'created_ms', ARGV[5], 'last_active_ms', ARGV[6], 'state', ARGV[7],
  'detached_at_ms', ARGV[8], 'claimed_by', ARGV[9], 'claimed_at_ms', ARGV[10], 'subject', ARGV[12])
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

pub(super) const DETACH: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
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

pub(super) const DELETE: &str = r#"
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

pub(super) const TRANSFER: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'owner', 'state')
if f[1] ~= ARGV[1] or (not f[2]) or f[2] == 'ending' then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
redis.call('SREM', ARGV[4] .. ARGV[1], ARGV[3])
redis.call('SADD', ARGV[4] .. ARGV[2], ARGV[3])
return 1
"#;
