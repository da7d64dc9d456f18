"""The Lua scripts of the Redis store: each write that must be atomic with a
publication, or with a read, runs as one script (see ``store/redis.py`` for the keys).
"""

PUBLISH = """
local id = ''
if ARGV[5] == '1' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[7], '*',
                  'seq', ARGV[3], 'lang', ARGV[4], 'live', '1', 'msg', ARGV[6])
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
end
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
if tonumber(ARGV[3]) > seq then redis.call('HSET', KEYS[2], 'seq', ARGV[3]) end
redis.call('PUBLISH', ARGV[1], ARGV[2] .. ARGV[6])
return id
"""

END = """
if redis.call('HSETNX', KEYS[1], 'ended', ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'endMessage', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('DEL', KEYS[2])
local code = redis.call('HGET', KEYS[1], 'code')
if code and redis.call('GET', 'babel:code:' .. code) == ARGV[5] then
  redis.call('DEL', 'babel:code:' .. code)
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

CLAIM = """
if redis.call('HGET', KEYS[1], 'ended') then return -1 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[1], 'hostSeen', '1')
redis.call('HDEL', KEYS[1], 'awaySince')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
"""

# KEYS: meta, owner, aud, auds, code. ARGV: node, ttl, owner?, now, retention, id, code,
# token, source, created, known seq, then language/count pairs of this node's audience.
TICK = """
local lost = redis.call('HEXISTS', KEYS[1], 'code') == 0
if lost and redis.call('HEXISTS', KEYS[1], 'ended') == 0 then
  redis.call('HSET', KEYS[1], 'id', ARGV[6], 'code', ARGV[7], 'token', ARGV[8],
             'source', ARGV[9], 'created', ARGV[10])
  redis.call('SET', KEYS[5], ARGV[6], 'NX', 'PX', ARGV[5])
end
local ended = redis.call('HGET', KEYS[1], 'ended')
if ended then return {'', '0', '0', ended} end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if tonumber(ARGV[11]) > seq then redis.call('HSET', KEYS[1], 'seq', ARGV[11]) end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[5], ARGV[5])
local owner = redis.call('GET', KEYS[2])
if ARGV[3] == '1' then
  if owner == ARGV[1] then
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  elseif not owner then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
    redis.call('HSET', KEYS[1], 'hostSeen', '1')
    redis.call('HDEL', KEYS[1], 'awaySince')
    owner = ARGV[1]
  end
end
redis.call('DEL', KEYS[3])
if #ARGV > 11 then
  redis.call('HSET', KEYS[3], unpack(ARGV, 12))
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
  redis.call('SADD', KEYS[4], ARGV[1])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
local seen = redis.call('HGET', KEYS[1], 'hostSeen') or '0'
local away = redis.call('HGET', KEYS[1], 'awaySince') or '0'
if (not owner) and seen == '1' and away == '0' then
  redis.call('HSET', KEYS[1], 'awaySince', ARGV[4])
  away = ARGV[4]
end
return {owner or '', seen, away, ''}
"""

SET_AUDIENCE = """
redis.call('DEL', KEYS[1])
if #ARGV > 5 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 6))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

AUDIENCE = """
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HGETALL', ARGV[1] .. node)
  if #fields == 0 then
    redis.call('SREM', KEYS[1], node)
  else
    for i = 1, #fields, 2 do
      out[#out + 1] = node
      out[#out + 1] = fields[i]
      out[#out + 1] = fields[i + 1]
    end
  end
end
return out
"""
