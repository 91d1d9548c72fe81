-- Write a batch's changes to the read model, with the consumed offsets and dedup digests, atomically.
-- (Runs after the shared prelude, prelude.lua.)
--
-- The worker decided every change (coverage_service.changes) from the state it read of the villages it touches;
-- this script checks that state still holds, then only writes. A call holds one shard's part of a batch (the
-- events of one province, docs/sharding.md), and every key it touches carries that province's hash tag: one slot.
-- Redis runs a script to completion before any other command, so either every change of the part, the shard's
-- offsets and its digests are stored, or none are. Nothing here is per event: Redis's one thread is the
-- pipeline's ceiling, and the worker scales out.
--
-- The checks, before anything is written. Each refusal writes nothing, and the worker reads again and retries:
-- REGISTRY_MISSING  the shard has no copy of the registry generation: no whole registry is loaded (the copies
--                   are written with reg:meta, last; after a wipe the worker waits);
-- REGISTRY_CHANGED  a registry load ran since the worker read the kinds and segments of its codes;
-- READ_MODEL_AHEAD  "expect" holds, per partition of the batch, the offset the worker knows the shard holds (-1:
--                   none); one above it means another writer applied the partition since (two workers
--                   overlapping in a rebalance), so the villages may have changed under the worker's reads;
-- READ_MODEL_BEHIND one below it means the read model lost applied batches (a Redis restart that lost the tail
--                   of its AOF, a restore): the worker folds the lost records again from the topic first.
-- A partition's villages and dedup memory are written only by the writer holding its offset, so while the
-- offsets match, the worker's reads of them are current; region hashes are shared, so they get increments.
-- The nation has no hash: its figures are the provinces' summed when read.
--
-- ARGV: now_ms, payload (MessagePack: decoded faster than JSON), then one string of digests (DIGEST bytes each) per offset field of "digests":
-- {"shard": province code, "expect": {offset_field: offset}, "registry": generation, "hour": h, "expire_at": unix s,
--  "locs": [village, [field, value, ...], ...],          values to set in loc:<village>
--  "regions": [code, {field: n, ...}, as_of_ms, ...],     increments to region:<code>, and its as_of floor
--  "indexes": [name, [ms, village, ...], ...],            last reaches to raise in reach:<name> (ZADD GT)
--  "lapses": [region, day, {field: n}, ...],             increments to lapse:<region>:<day>, kept until
--                                                        prelude's lapse_expire_at
--  "stations": [village, [station_id, ...], ...],         added to stations:<village>
--  "ledger": [code, ...],                                 the locations whose packed traces follow the digests in
--                                                        ARGV, each appended to its trace:<code>
--  "ledger_days": ["<offset field>:<day>", [code, ...], ...]  added to ledger-day:<offset field>:<day>, which is
--                                                        listed in the shard's ledger-days
--  "offsets": [offset_field, offset, ...], "digests": [offset_field, ...],
--  "stats": [applied, duplicate, unknown, records_applied, records_replayed, newly_reached, dead_letters]}
-- Returns: 1

local now_ms = ARGV[1]
local input = cmsgpack.unpack(ARGV[2])
local DIGEST = ${digest_bytes}
local here = shard(input.shard)
local offsets_key = here .. '${offsets}'
local AS_OF = '${as_of_ms}'
local stats_key = here .. '${stats}'

local generation = redis.call('GET', here .. '${shard_generation}')
if not generation then
  return redis.error_reply('REGISTRY_MISSING the division registry is not loaded (lastmile registry load)')
end
if generation ~= input.registry then
  return redis.error_reply('REGISTRY_CHANGED ' .. generation)
end
for ofield, offset in pairs(input.expect) do
  local stored = tonumber(redis.call('HGET', offsets_key, ofield) or '-1')
  if stored < offset then
    return redis.error_reply('READ_MODEL_BEHIND ' .. ofield .. ' stored ' .. int(stored) .. ' applied ' .. int(offset))
  elseif stored > offset then
    return redis.error_reply('READ_MODEL_AHEAD ' .. ofield .. ' stored ' .. int(stored) .. ' expected ' .. int(offset))
  end
end

-- Values go to redis.call as Lua numbers: Redis formats them itself, faster than string.format here.
local locs = input.locs
for i = 1, #locs, 2 do
  local writes = locs[i + 1]
  if #writes > 0 then redis.call('HSET', loc_key(locs[i]), unpack(writes)) end
end

-- Region increments (prelude's increment_hash: one HMGET and one HSET per region); as_of_ms only moves forward.
local regions = input.regions
for i = 1, #regions, 3 do
  increment_hash(region_key(regions[i]), regions[i + 1], AS_OF, regions[i + 2])
end

local indexes = input.indexes
for i = 1, #indexes, 2 do
  local ik, members = index_key(indexes[i]), indexes[i + 1]
  for j = 1, #members, SLICE do
    redis.call('ZADD', ik, 'GT', unpack(members, j, math.min(#members, j + SLICE - 1)))
  end
end

local lapses = input.lapses
for i = 1, #lapses, 3 do
  local lk, expire_at = lapse_key(lapses[i], lapses[i + 1]), lapse_expire_at(lapses[i + 1])
  if expire_at > now_s() then
    increment_hash(lk, lapses[i + 2])
    redis.call('EXPIREAT', lk, expire_at)
  end
end

local stations = input.stations
for i = 1, #stations, 2 do call_sliced('SADD', stations_key(stations[i]), stations[i + 1], 1) end

-- The ledger: each event's trace appended to its location's, and per day of acceptance the locations given traces
-- (and the set in the shard's list, which settling goes through).
local traces_at = 2 + #input.digests
for i, code in ipairs(input.ledger) do redis.call('APPEND', traces_key(code), ARGV[traces_at + i]) end
local days = input.ledger_days
for i = 1, #days, 2 do
  call_sliced('SADD', here .. '${ledger_day}' .. days[i], days[i + 1], 1)
  redis.call('SADD', here .. '${ledger_days}', days[i])
end

if #input.offsets > 0 then call_sliced('HSET', offsets_key, input.offsets, 2) end

-- The digests, in the partition's strings for this hour: each string is created whole (one allocation of its
-- final size) and filled in place; the base key holds how many bytes are filled.
local CHUNK = ${dedup_chunk_bytes}
local zeros = nil
for d, ofield in ipairs(input.digests) do
  local packed = ARGV[2 + d]
  if #packed > 0 then
    local base = here .. '${dedup}' .. ofield .. ':' .. int(input.hour)
    local used = tonumber(redis.call('GET', base) or '0')
    local pos = 1
    while pos <= #packed do
      local at = used % CHUNK
      local take = math.min(CHUNK - at, #packed - pos + 1)
      local ck = base .. ':' .. int(math.floor(used / CHUNK))
      if at == 0 then
        if zeros == nil then zeros = string.rep('\0', CHUNK) end
        redis.call('SET', ck, zeros, 'EXAT', input.expire_at)
      end
      redis.call('SETRANGE', ck, at, string.sub(packed, pos, pos + take - 1))
      used, pos = used + take, pos + take
    end
    redis.call('SET', base, int(used), 'EXAT', input.expire_at)
  end
end

-- Counted once over the shards: events in the shard of their location, records and dead letters in the first
-- shard's part, which every batch has.
local st = input.stats
if st[1] > 0 or st[2] > 0 or st[3] > 0 or st[4] > 0 or st[5] > 0 then
  redis.call('HINCRBY', stats_key, '${stat_events_applied}', st[1])
  redis.call('HINCRBY', stats_key, '${stat_events_duplicate}', st[2])
  redis.call('HINCRBY', stats_key, '${stat_events_unknown_location}', st[3])
  redis.call('HINCRBY', stats_key, '${stat_records_applied}', st[4])
  redis.call('HINCRBY', stats_key, '${stat_records_replayed}', st[5])
  redis.call('HINCRBY', stats_key, '${stat_villages_newly_reached}', st[6])
  if st[7] > 0 then redis.call('HINCRBY', stats_key, '${stat_dead_letters}', st[7]) end
  redis.call('HSET', stats_key, '${stat_applied_at_ms}', now_ms)
end
return 1
