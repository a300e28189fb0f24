"""The Redis scripts of the channel backend: one atomic call per publication, read, snapshot.

Keys of channel ``C`` (``P`` is ``--broker-prefix``; the braces are a Redis Cluster hash tag, so
every key of a channel lives on one node):

=================  ======  ==========================================================
``P:{C}:s``        STREAM  entry id ``<offset>-0``, field ``f`` = the finished ``pub`` frame
``P:{C}:m``        HASH    ``e`` epoch, ``t`` top offset (the position), ``x`` sealed
``P:{C}:st``       HASH    the state: field → JSON-encoded value
``P:{C}:i:<key>``  STRING  ``"<offset> <epoch>"`` answered for an idempotency key
=================  ======  ==========================================================

Fan-out: ``PUBLISH P:{C}:p "<offset> <epoch> <frame>"`` (``"- - <frame>"`` for an ephemeral
publication). A missing ``m`` means the stream was lost (Redis restart, eviction, expiry):
the next call starts a new epoch — or, for a class with durable state, answers ``seed`` so
the caller first puts the state kept in the SQL store back (``SEED``).
"""

from __future__ import annotations

from typing import Final

#: KEYS: stream, meta, state, idempotency key.
#: ARGV: 1 fan-out channel, 2 frame head, 3 frame tail, 4 history size, 5 history ttl s,
#: 6 meta ttl s, 7 fresh epoch, 8 version ('' none), 9 idempotency window s (0: none),
#: 10 max state keys, 11 seed required ('1'), 12 answer the state ('1'), 13 seal ('1'),
#: 14… field, value pairs ('' deletes the field).
#: Answers {'ok', offset, epoch[, state]}, {'dup', "offset epoch"}, {'stale', top, epoch},
#: {'sealed', top, epoch}, {'full', top, epoch} or {'seed'}.
PUBLISH: Final = """
local window = tonumber(ARGV[9])
if window > 0 then
  local seen = redis.call('GET', KEYS[4])
  if seen then return {'dup', seen} end
end
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  if ARGV[11] == '1' then return {'seed'} end
  epoch = ARGV[7]
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('HSET', KEYS[2], 'e', epoch, 't', 0)
end
local top = tonumber(redis.call('HGET', KEYS[2], 't'))
if redis.call('HEXISTS', KEYS[2], 'x') == 1 then return {'sealed', top, epoch} end
if ARGV[8] ~= '' then
  local current = tonumber(redis.call('HGET', KEYS[3], 'version') or '')
  if current and current >= tonumber(ARGV[8]) then return {'stale', top, epoch} end
end
if #ARGV > 13 then
  local adding = 0
  for i = 14, #ARGV, 2 do
    if ARGV[i + 1] ~= '' and redis.call('HEXISTS', KEYS[3], ARGV[i]) == 0 then
      adding = adding + 1
    end
  end
  if adding > 0 and redis.call('HLEN', KEYS[3]) + adding > tonumber(ARGV[10]) then
    return {'full', top, epoch}
  end
end
top = redis.call('HINCRBY', KEYS[2], 't', 1)
local frame = ARGV[2] .. top .. ',"epoch":"' .. epoch .. '"' .. ARGV[3]
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], top .. '-0', 'f', frame)
if ARGV[13] == '1' then redis.call('HSET', KEYS[2], 'x', '1') end
for i = 14, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[3], ARGV[i])
  else
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[6])
local position = top .. ' ' .. epoch
if window > 0 then redis.call('SET', KEYS[4], position, 'EX', window) end
redis.call('PUBLISH', ARGV[1], position .. ' ' .. frame)
if ARGV[12] == '1' then return {'ok', top, epoch, redis.call('HGETALL', KEYS[3])} end
return {'ok', top, epoch}
"""

#: KEYS: stream, meta. ARGV: 1 since offset, 2 limit, 3 fresh epoch, 4 seed required,
#: 5 ttl s of a position this read creates (short: nothing was published yet), 6 partial
#: ('1': up to `limit` entries from the first retained after since, for paging; else all or
#: none). Answers {'ok', epoch, top, first retained offset, entries} or {'seed'}.
READ: Final = """
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  if ARGV[4] == '1' then return {'seed'} end
  epoch = ARGV[3]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 't', 0)
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
local top = tonumber(redis.call('HGET', KEYS[2], 't'))
local first = top + 1
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #head > 0 then first = tonumber(string.match(head[1][1], '^(%d+)')) end
local since = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local entries = {}
if ARGV[6] == '1' then
  if since < top and limit > 0 then
    entries = redis.call('XRANGE', KEYS[1], math.max(since + 1, first) .. '-0', '+',
                         'COUNT', limit)
  end
elseif since < top and top - since <= limit and first <= since + 1 then
  entries = redis.call('XRANGE', KEYS[1], (since + 1) .. '-0', '+', 'COUNT', limit)
end
return {'ok', epoch, top, first, entries}
"""

#: KEYS: meta, state, stream. ARGV: 1 fresh epoch, 2 seed required, 3 ttl s of a position
#: this call creates. Answers {'ok', epoch, top, state} or {'seed'}.
SNAPSHOT: Final = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  if ARGV[2] == '1' then return {'seed'} end
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'e', epoch, 't', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return {'ok', epoch, tonumber(redis.call('HGET', KEYS[1], 't')), redis.call('HGETALL', KEYS[2])}
"""

#: KEYS: meta, state, stream. ARGV: 1 fresh epoch, 2 meta ttl s, 3… field, value pairs.
#: Starts a new epoch holding the given state, unless the channel has a position already.
SEED: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'e', ARGV[1], 't', 0)
redis.call('EXPIRE', KEYS[1], ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
if #ARGV > 2 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return 1
"""
