"""The Redis store's Lua scripts: each write is one script, so Redis runs it as one atomic step.
Kept apart from redis.py so that module reads as the store's Python side."""

from riskengine.audit.chain import GENESIS

# Audit append, shared by every write script. KEYS[1..3] = chain head anchor (hash seq/hash/mac),
# chain rows (list of "seq TAB prev TAB hash TAB body"), chain ids (set). ARGV[1..7] = has_audit,
# expected head seq, expected head hash, new hash, row, chain id, new head mac. Python seals the
# record and its anchor (Lua has no sha256 nor HMAC); the script checks the head is still the one
# it sealed onto, so a refused check writes nothing.
_AUDIT_LUA = f"""
local function head_moved()
  if ARGV[1] ~= '1' then return nil end
  local head = redis.call('HMGET', KEYS[1], 'seq', 'hash')
  local seq, hash = tonumber(head[1]) or 0, head[2] or '{GENESIS}'
  if seq ~= tonumber(ARGV[2]) or hash ~= ARGV[3] then return {{'HEAD', tostring(seq), hash}} end
  return nil
end
local function append_audit()
  if ARGV[1] ~= '1' then return end
  redis.call('RPUSH', KEYS[2], ARGV[5])
  redis.call('HSET', KEYS[1], 'seq', tonumber(ARGV[2]) + 1, 'hash', ARGV[4], 'mac', ARGV[7])
  redis.call('SADD', KEYS[3], ARGV[6])
end
"""

# One scored event (or a profile update, or an audit record alone).
# KEYS[4] profile, [5] event, [6] events by time, [7] the user's event ids, [8] IP entries,
# [9] the user's IPs, [10] global totals, [11] payments by time in the event's currency,
# [12..] global counts per learned attribute.
# ARGV[8] event_id ('' = none), [9] has_profile, [10] expected version, [11] profile JSON,
# [12] has_ip, [13] IP member, [14] at, [15] trim-below score, [16] IP TTL, [17] IP, [18] user-IPs TTL,
# [19] store_event, [20] user_id, [21] request, [22] decision, [23] features, [24] currency of a
# payment ('' = none), [25..] attribute, value pairs (one pair per KEYS[12..]).
COMMIT_LUA = _AUDIT_LUA + """
if ARGV[8] ~= '' and redis.call('EXISTS', KEYS[5]) == 1 then return {'DUP'} end
-- the decision read this version of the profile, whether or not this write changes it
if (tonumber(redis.call('HGET', KEYS[4], 'v')) or 0) ~= tonumber(ARGV[10]) then return {'CONFLICT'} end
local moved = head_moved()
if moved then return moved end
if ARGV[9] == '1' then
  redis.call('HSET', KEYS[4], 'v', tonumber(ARGV[10]) + 1, 'd', ARGV[11])
  for i = 12, #KEYS do
    local attribute, value = ARGV[25 + 2 * (i - 12)], ARGV[26 + 2 * (i - 12)]
    if redis.call('HINCRBY', KEYS[i], value, 1) == 1 then
      redis.call('HINCRBY', KEYS[10], 'd:' .. attribute, 1)
    end
    redis.call('HINCRBY', KEYS[10], 't:' .. attribute, 1)
  end
end
if ARGV[12] == '1' then
  redis.call('ZADD', KEYS[8], ARGV[14], ARGV[13])
  redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', ARGV[15])
  redis.call('EXPIRE', KEYS[8], ARGV[16])
  redis.call('SADD', KEYS[9], ARGV[17])
  redis.call('EXPIRE', KEYS[9], ARGV[18])
end
if ARGV[19] == '1' then
  redis.call('HSET', KEYS[5], 'user_id', ARGV[20], 'at', ARGV[14], 'request', ARGV[21],
             'decision', ARGV[22], 'features', ARGV[23])
  redis.call('ZADD', KEYS[6], ARGV[14], ARGV[8])
  redis.call('SADD', KEYS[7], ARGV[8])
  if ARGV[24] ~= '' then
    redis.call('HSET', KEYS[5], 'pay', ARGV[24])
    redis.call('ZADD', KEYS[11], ARGV[14], ARGV[8])
  end
end
append_audit()
return {'OK'}
"""

# KEYS[4] event. ARGV[8] outcome.
OUTCOME_LUA = _AUDIT_LUA + """
if redis.call('EXISTS', KEYS[4]) == 0 then return {'MISSING'} end
local moved = head_moved()
if moved then return moved end
redis.call('HSET', KEYS[4], 'outcome', ARGV[8])
append_audit()
return {'OK'}
"""

# KEYS[4] profile, [5] secret, [6] the user's event ids, [7] the user's IPs, [8] events by time.
# ARGV[8] key prefix, [9] user_key. Event, payment and IP keys come from the sets, so they are
# built here: this store wants one Redis primary (not Cluster mode).
ERASE_LUA = _AUDIT_LUA + """
local moved = head_moved()
if moved then return moved end
local found = redis.call('DEL', KEYS[4], KEYS[5])
for _, event_id in ipairs(redis.call('SMEMBERS', KEYS[6])) do
  local key = ARGV[8] .. 'e:' .. event_id
  local currency = redis.call('HGET', key, 'pay')
  if currency then redis.call('ZREM', ARGV[8] .. 'pay:' .. currency, event_id) end
  found = found + redis.call('DEL', key)
  redis.call('ZREM', KEYS[8], event_id)
end
for _, ip in ipairs(redis.call('SMEMBERS', KEYS[7])) do
  local key = ARGV[8] .. 'ip:' .. ip
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if string.match(member, '^%d:[^:]*:(.*)$') == ARGV[9] then redis.call('ZREM', key, member) end
  end
end
redis.call('DEL', KEYS[6], KEYS[7])
append_audit()
return {'OK', tostring(found)}
"""

# Retention: drop a chain's records up to ARGV[9] (never its last) and anchor where it now starts.
# KEYS[4] the pruned chain's rows, [5] its start anchor. ARGV[8] index of the cut record,
# [9] its seq, [10] its hash, [11] the start anchor's mac.
PRUNE_LUA = _AUDIT_LUA + """
local function field(row, n)
  local seq, prev, hash = string.match(row or '', '^(%d+)\\t([^\\t]*)\\t([^\\t]*)\\t')
  return ({seq, prev, hash})[n]
end
local index = tonumber(ARGV[8])
if field(redis.call('LINDEX', KEYS[4], index), 1) ~= ARGV[9]
   or field(redis.call('LINDEX', KEYS[4], index), 3) ~= ARGV[10]
   or tonumber(field(redis.call('LINDEX', KEYS[4], -1), 1) or 0) <= tonumber(ARGV[9]) then
  return {'GONE'}
end
local moved = head_moved()
if moved then return moved end
redis.call('LTRIM', KEYS[4], index + 1, -1)
redis.call('HSET', KEYS[5], 'seq', tonumber(ARGV[9]) + 1, 'hash', ARGV[10], 'mac', ARGV[11])
append_audit()
return {'OK', tostring(index + 1)}
"""

# The first writer's secret wins, in one round trip. KEYS[1] secret, ARGV[1] a fresh one.
SECRET_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""

# Is a cached profile still current? KEYS[1] the profile, ARGV[1] the version the cache holds.
# nil while it is; else {version, data} (nil, nil: the user is gone), so an unchanged profile never
# crosses the network.
PROBE_LUA = """
local version = redis.call('HGET', KEYS[1], 'v')
if (tonumber(version) or 0) == tonumber(ARGV[1]) then return false end
return {version or false, redis.call('HGET', KEYS[1], 'd') or false}
"""

# The hot path's read in one command: the IP's activity, counted on the server (a busy IP's
# entries never cross the network), then per attribute asked its value's count, total and
# distinct values. KEYS[1] IP entries, [2] global totals, [3..] each attribute's counts.
# ARGV[1] since (exclusive), [2] until, [3..] attribute, value pairs (one pair per KEYS[3..]).
CONTEXT_LUA = """
local failures, users, distinct = 0, {}, 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2])) do
  local ok, user = string.match(member, '^(%d):[^:]*:(.*)$')
  if ok == '0' then failures = failures + 1 end
  if user and not users[user] then users[user] = true; distinct = distinct + 1 end
end
local out = {failures, distinct}
for i = 3, #KEYS do
  local attribute, value = ARGV[2 * i - 3], ARGV[2 * i - 2]
  local totals = redis.call('HMGET', KEYS[2], 't:' .. attribute, 'd:' .. attribute)
  out[#out + 1] = redis.call('HGET', KEYS[i], value)
  out[#out + 1] = totals[1]
  out[#out + 1] = totals[2]
end
return out
"""

# -- Redis Cluster: each script touches one hash slot ----------------------------------------------
# A scored event is written in the user's slot first (this script), with what it still owes the other
# slots (per-IP entries, population counts, the event indexes, the audit record) kept beside it as a
# pending entry; redis.py then applies those, each idempotent by the event's (or operation's) id, and
# drops the entry. A retry of the event finds the entry (DUP) and applies what is left.
# The user's generation (field 'g' of the profile hash, made by the first write, gone with erasure)
# is written into the pending entry: the parts of an erased generation are refused (FENCED_LUA).
# KEYS[1] profile, [2] event, [3] the user's event ids, [4] the user's IPs, [5] pending.
# ARGV[1] event_id ('' = none), [2] has_profile, [3] expected version, [4] profile JSON, [5] IP ('' = none),
# [6] user-IPs TTL, [7] store_event, [8] user_id, [9] at, [10] request, [11] decision, [12] features,
# [13] currency ('' = none), [14] operation id, [15] what is owed (a JSON object), [16] a fresh generation.
USER_COMMIT_LUA = """
if ARGV[1] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then
  return {'DUP', redis.call('HGET', KEYS[5], ARGV[1]) or ''}
end
if (tonumber(redis.call('HGET', KEYS[1], 'v')) or 0) ~= tonumber(ARGV[3]) then return {'CONFLICT'} end
local generation = redis.call('HGET', KEYS[1], 'g')
if not generation then
  generation = ARGV[16]
  redis.call('HSET', KEYS[1], 'g', generation)
end
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'v', tonumber(ARGV[3]) + 1, 'd', ARGV[4]) end
if ARGV[5] ~= '' then
  redis.call('SADD', KEYS[4], ARGV[5])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
end
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[2], 'user_id', ARGV[8], 'at', ARGV[9], 'request', ARGV[10],
             'decision', ARGV[11], 'features', ARGV[12])
  if ARGV[13] ~= '' then redis.call('HSET', KEYS[2], 'pay', ARGV[13]) end
  redis.call('SADD', KEYS[3], ARGV[1])
end
redis.call('HSET', KEYS[5], ARGV[14], '{"g":"' .. generation .. '",' .. string.sub(ARGV[15], 2))
return {'OK', generation}
"""

# One owed part in its own slot, unless its user's generation was erased there: KEYS[1] that generation's
# fence in the target's slot, [2] the target. ARGV[1] 'set' (ARGV[2] the value), 'z' (ZADD ARGV[2] score,
# ARGV[3] member) or 'ip' (as 'z', then ARGV[4] trim-below score, ARGV[5] TTL). 0: refused, nothing written.
FENCED_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[1] == 'set' then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
if ARGV[1] == 'ip' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
return 1
"""

# Erasure in one slot other than the user's: KEYS[1] the erased generation's fence there ('' in ARGV[2]:
# none to set), [2] the target. ARGV[1] fence TTL, [2] '1' to set the fence, [3] 'del' (drop the key),
# 'z' (ZREM ARGV[4..]) or 'ip' (drop the members of user key ARGV[4]). The fence goes first, in the
# same step: a part of that generation applied late (a sweep or retry that read it before the erasure)
# is refused there afterwards, and one applied before is removed here.
UNWRITE_LUA = """
if ARGV[2] == '1' then redis.call('SET', KEYS[1], '1', 'EX', ARGV[1]) end
if ARGV[3] == 'del' then return redis.call('DEL', KEYS[2]) end
if ARGV[3] == 'z' then
  local removed = 0
  for i = 4, #ARGV do removed = removed + redis.call('ZREM', KEYS[2], ARGV[i]) end
  return removed
end
local removed = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.match(member, '^%d:[^:]*:(.*)$') == ARGV[4] then removed = removed + redis.call('ZREM', KEYS[2], member) end
end
return removed
"""

# A pending entry that cannot be applied (not JSON, wrong types, not this user's), moved aside in the
# user's slot (erasure drops it with the rest): KEYS[1] pending, [2] quarantine; ARGV[1] operation,
# [2] the entry as read (moved only if unchanged).
QUARANTINE_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

# Population counts, once per operation id. KEYS[1] the operation's marker, [2] totals, [3..] counts
# per attribute (all in the population's slot). ARGV[1] marker TTL, [2..] attribute, value pairs.
POPULATION_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 3, #KEYS do
  local attribute, value = ARGV[2 * i - 4], ARGV[2 * i - 3]
  if redis.call('HINCRBY', KEYS[i], value, 1) == 1 then
    redis.call('HINCRBY', KEYS[2], 'd:' .. attribute, 1)
  end
  redis.call('HINCRBY', KEYS[2], 't:' .. attribute, 1)
end
return 1
"""

# An audit record alone, on its chain's slot: KEYS[1] head, [2] rows, [3] the chain's recent operations
# (sorted set: operation token -> seq); ARGV[1..7] as the audit append above, [8] the operation's token
# ('' = none), [9] how many operations to remember. An operation already on the chain: DONE, nothing
# appended. (The set of chain ids lives in its own slot and is added to apart.)
CHAIN_LUA = _AUDIT_LUA.replace("redis.call('SADD', KEYS[3], ARGV[6])", "") + """
if ARGV[8] ~= '' and redis.call('ZSCORE', KEYS[3], ARGV[8]) then return {'DONE'} end
local moved = head_moved()
if moved then return moved end
append_audit()
if ARGV[8] ~= '' then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + 1, ARGV[8])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[9]) - 1)
end
return {'OK'}
"""

# Erasure in the user's slot, once the other slots forgot the user: KEYS[1] profile, [2] secret,
# [3] the user's event ids, [4] the user's IPs, [5] pending, [6] quarantine, [7..] the events read before.
# ARGV[1] how many IPs were read, [2] the generation read ('' = none), [3..] the pending entries read.
# Refuses (AGAIN) when an event, IP or pending entry came in meanwhile, or the generation changed.
USER_ERASE_LUA = """
if redis.call('SCARD', KEYS[3]) ~= #KEYS - 6 or redis.call('SCARD', KEYS[4]) ~= tonumber(ARGV[1])
   or (redis.call('HGET', KEYS[1], 'g') or '') ~= ARGV[2] then
  return {'AGAIN'}
end
local read = {}
for i = 3, #ARGV do read[ARGV[i]] = true end
for _, op in ipairs(redis.call('HKEYS', KEYS[5])) do
  if not read[op] then return {'AGAIN'} end
end
local found = redis.call('DEL', KEYS[1], KEYS[2])
for i = 7, #KEYS do found = found + redis.call('DEL', KEYS[i]) end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return {'OK', tostring(found)}
"""
