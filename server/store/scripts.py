"""The store's Lua scripts. Each runs atomically in Redis."""

# Each runs atomically in Redis. In every per-job script KEYS[1] is the job record.

INHERIT_TTL = """
local function inherit_ttl(key)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
end
"""

# KEYS: record, index, seq, queue, the owner's listing of the kind, everyone's listing of
# the kind, the listed hash. ARGV: id, job JSON, "owner:kind", record field/value pairs.
SUBMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
local n = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], n, ARGV[1])
redis.call('ZADD', KEYS[5], n, ARGV[1])
redis.call('ZADD', KEYS[6], n, ARGV[1])
redis.call('HSET', KEYS[7], ARGV[1], ARGV[3])
return redis.call('XADD', KEYS[4], '*', 'job', ARGV[2])
"""

# Per-owner slots (limits on concurrent work). KEYS: the owner's sorted set of job ids
# (score: when claimed, 0 once submitted). ARGV: job key prefix, limit, job id, now (s),
# grace (s), score to write (now, or 0 for a job already submitted). A job counts while
# queued or running (a session while queued, live or detached, and not failed: a detached
# session keeps its state in Redis until it expires); one claimed but not
# submitted yet (no record) counts for ``grace`` seconds.
# It reads job records it is not given as KEYS: fine on one Redis, not on a Cluster.
CLAIM_SLOT = """
local active, have = 0, false
local now, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
for i, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')) do
  if i % 2 == 1 then
    local f = redis.call('HMGET', ARGV[1] .. id, 'kind', 'status', 'state')
    local busy
    if not f[1] then
      local claimed = tonumber(redis.call('ZSCORE', KEYS[1], id))
      busy = claimed > 0 and now - claimed < grace
    elseif f[2] == '"completed"' or f[2] == '"failed"' then
      busy = false
    elseif f[1] == '"session"' then
      busy = f[3] == '"queued"' or f[3] == '"live"' or f[3] == '"detached"'
    else
      busy = f[2] == '"queued"' or f[2] == '"in_progress"'
    end
    if not busy then redis.call('ZREM', KEYS[1], id)
    elseif id ~= ARGV[3] then active = active + 1 end
  end
end
if active >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[6]), ARGV[3])
redis.call('EXPIRE', KEYS[1], 604800)
return 1
"""

# Queue scripts. KEYS: queue. ARGV: group, consumer, entry id(s).
OWNED = """
local function owned(id)
  return #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) == 1
end
"""

HEARTBEAT = OWNED + """
local held = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  -- XCLAIM with min-idle 0 to the owner resets the idle time; JUSTID keeps the
  -- delivery count. It returns nothing for an entry deleted from the stream.
  if owned(id) and #redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID') == 1 then
    held[#held + 1] = id
  end
end
return held
"""

ACK = OWNED + """
if not owned(ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""

RELEASE = OWNED + """
if not owned(ARGV[3]) then return false end
local entry = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if #entry == 0 then return false end
return redis.call('XADD', KEYS[1], '*', unpack(entry[1][2]))
"""

# KEYS: record. ARGV: field/value pairs.
UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: record, cancel flag.
CANCEL = INHERIT_TTL + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], '1')
inherit_ttl(KEYS[2])
return 1
"""

# The record (KEYS[1]) and KEYS[from..] expire in ``seconds``; the record says when, and the
# expiring index holds the deadline (JobQueue.expiry_args makes the last four arguments).
EXPIRE_JOB = """
local function expire_job(expiring, from, id, seconds, deadline, expires_at)
  redis.call('HSET', KEYS[1], 'expires_at', expires_at)
  redis.call('EXPIRE', KEYS[1], seconds)
  for i = from, #KEYS do redis.call('EXPIRE', KEYS[i], seconds) end
  redis.call('ZADD', expiring, deadline, id)
end
"""

# KEYS: record, expiring, the job's other keys. ARGV: id, seconds, deadline, expires_at.
EXPIRE = EXPIRE_JOB + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
expire_job(KEYS[2], 3, ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
"""

# KEYS: record, snapshot. ARGV: data, frame index. An older frame index never overwrites a
# newer one: a stalled worker that lost its lease cannot roll the session back.
SAVE_SNAPSHOT = INHERIT_TTL + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local old = tonumber(redis.call('HGET', KEYS[2], 'frame') or '-1')
if tonumber(ARGV[2]) < old then return 0 end
redis.call('HSET', KEYS[2], 'data', ARGV[1], 'frame', ARGV[2])
inherit_ttl(KEYS[2])
return 1
"""

# Frame-stream scripts. KEYS: record, meta, frames. They return {status, value}.
OPEN_STREAM = INHERIT_TTL + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone', ''} end
if redis.call('HEXISTS', KEYS[2], 'ended') == 1 then return {'ended', ''} end
local function add(...)
  local id = redis.call('XADD', KEYS[3], '*', ...)
  inherit_ttl(KEYS[2])
  inherit_ttl(KEYS[3])
  return id
end
"""

# ARGV: data, mime.
SET_INIT = OPEN_STREAM + """
local old = redis.call('HMGET', KEYS[2], 'init', 'mime')
if old[1] then
  if old[1] == ARGV[1] and old[2] == ARGV[2] then return {'dup', ''} end
  return {'conflict', ''}
end
redis.call('HSET', KEYS[2], 'init', ARGV[1], 'mime', ARGV[2])
return {'ok', add('type', 'init', 'mime', ARGV[2], 'data', ARGV[1])}
"""

# ARGV: index, keyframe ('1' or '0'), data.
APPEND = OPEN_STREAM + """
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '-1')
local index = tonumber(ARGV[1])
if index <= last then return {'dup', tostring(last)} end
if index ~= last + 1 then return {'gap', tostring(last)} end
redis.call('HSET', KEYS[2], 'last', ARGV[1])
local id = add('type', 'fragment', 'index', ARGV[1], 'keyframe', ARGV[2], 'data', ARGV[3])
if ARGV[2] == '1' then redis.call('HSET', KEYS[2], 'kf_entry', id, 'kf_index', ARGV[1]) end
return {'ok', id}
"""

# ARGV: event JSON.
EVENT = OPEN_STREAM + """
return {'ok', add('type', 'event', 'data', ARGV[1])}
"""

# ARGV: end JSON, record field/value pairs.
FINISH = OPEN_STREAM + """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('HSET', KEYS[2], 'ended', '1')
return {'ok', add('type', 'end', 'data', ARGV[1])}
"""

# --- live sessions (pomstream.server.store.sessions) ------------------------------------

# KEYS: record, view, ctl, queue, frames, keys to persist... ARGV: token, now, job JSON.
# Returns {status, cursor, state}: status ok / gone / ended.
ATTACH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone', '', ''} end
local status = redis.call('HGET', KEYS[1], 'status')
if status == '"completed"' or status == '"failed"' then return {'ended', '', ''} end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[2], 'viewer', ARGV[1], 'seen', ARGV[2], 'acked', '-1', 'paused', '0')
redis.call('PERSIST', KEYS[1])
for i = 6, #KEYS do redis.call('PERSIST', KEYS[i]) end
redis.call('HSET', KEYS[1], 'expires_at', 'null')
local state = redis.call('HGET', KEYS[1], 'state') or ''
if state == '"detached"' then
  redis.call('HSET', KEYS[1], 'state', '"queued"')
  redis.call('XADD', KEYS[4], '*', 'job', ARGV[3])
end
local last = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', 1)
local cursor = '0-0'
if #last > 0 then cursor = last[1][1] end
return {'ok', cursor, state}
"""

# KEYS: record, view[, expiring, the session's other keys]. ARGV: now, stale seconds[, id,
# seconds, deadline, deadline as JSON]. 1: a fresh viewer (live), 0: none (detached), -1:
# no record. With the optional part a detached session's keys get their expiry in the same
# step (as EXPIRE does): a worker that dies after settling cannot leave it without one.
SETTLE = EXPIRE_JOB + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local v = redis.call('HMGET', KEYS[2], 'viewer', 'seen')
if v[1] and tonumber(v[2]) and tonumber(v[2]) >= tonumber(ARGV[1]) - tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', '"live"')
  return 1
end
redis.call('HSET', KEYS[1], 'state', '"detached"')
if #ARGV >= 6 then
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  expire_job(KEYS[3], 4, ARGV[3], ARGV[4], ARGV[5], ARGV[6])
end
return 0
"""

# KEYS: view. ARGV: token, now, acked ('' to keep), paused ('' to keep). 0: taken over.
TOUCH = """
if redis.call('HGET', KEYS[1], 'viewer') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'seen', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'acked', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'paused', ARGV[4]) end
return 1
"""

# KEYS: view. ARGV: token.
LEAVE = """
if redis.call('HGET', KEYS[1], 'viewer') == ARGV[1] then redis.call('HDEL', KEYS[1], 'viewer') end
return 1
"""
