-- Write one correction's decision (coverage_service.readmodel.withdrawals), atomically. (Runs after prelude.lua.)
--
-- The worker decided it from the location's ledger (coverage_service.retract); this script checks that no other
-- writer moved the partition on since (READ_MODEL_AHEAD, as apply.lua), then writes the figures taken out, the
-- ledger's change, the correction's record and whether it waits for its original. It never runs twice for one
-- decision: a replay finds the withdrawal in the ledger and decides "unchanged".
--
-- ARGV: payload (MessagePack), then the location's packed traces (binary: Redis's MessagePack has no binary type):
-- {"shard": province, "expect": {offset_field: offset}, "code": location,
--  "loc_increments": {field: n}, "loc_set": {field: value}, "loc_delete": [field, ...],
--  "regions": [code, {field: n}, ...], "lapses": [region, day, {field: n}, ...],
--  "index_set": [name, [ms, village, ...], ...], "index_remove": [name, [village, ...], ...],
--  "stations_remove": [station, ...], "ledger_delete": [field, ...], "ledger_set": [field, value, ...],
--  "set_traces": 1 when a withdrawn event is taken out: the location's packed traces to keep are ARGV[2],
--  "position": the correction's place in the topic, "record": its JSON, "pending": 1 (waits) | 0 (does not),
--  "withdrawn": 1 when an event is taken out (counted in the shard's stats),
--  "restated": [region, {"<day>|<figure>": n, ...}, ...]   changes to past daily snapshots (restated:<region>)}
-- Returns: 1

local input = cmsgpack.unpack(ARGV[1])
local here = shard(input.shard)
local offsets_key = here .. '${offsets}'
for ofield, offset in pairs(input.expect) do
  local stored = tonumber(redis.call('HGET', offsets_key, ofield) or '-1')
  if stored ~= offset then
    return redis.error_reply('READ_MODEL_AHEAD ' .. ofield .. ' stored ' .. int(stored) .. ' expected ' .. int(offset))
  end
end

local code = input.code
local lk = loc_key(code)
increment_hash(lk, input.loc_increments)
local sets = {}
for name, value in pairs(input.loc_set) do sets[#sets + 1] = name; sets[#sets + 1] = value end
if #sets > 0 then redis.call('HSET', lk, unpack(sets)) end
if #input.loc_delete > 0 then redis.call('HDEL', lk, unpack(input.loc_delete)) end

local regions = input.regions
for i = 1, #regions, 2 do increment_hash(region_key(regions[i]), regions[i + 1]) end
local lapses = input.lapses
for i = 1, #lapses, 3 do
  local key, expire_at = lapse_key(lapses[i], lapses[i + 1]), lapse_expire_at(lapses[i + 1])
  if expire_at > now_s() then
    increment_hash(key, lapses[i + 2])
    redis.call('EXPIREAT', key, expire_at)
  end
end
-- A last reach may move back: plain ZADD, not GT as in apply.lua.
local index_set = input.index_set
for i = 1, #index_set, 2 do redis.call('ZADD', index_key(index_set[i]), unpack(index_set[i + 1])) end
local index_remove = input.index_remove
for i = 1, #index_remove, 2 do redis.call('ZREM', index_key(index_remove[i]), unpack(index_remove[i + 1])) end
if #input.stations_remove > 0 then redis.call('SREM', stations_key(code), unpack(input.stations_remove)) end

local restated = input.restated
for i = 1, #restated, 2 do increment_hash(restated_key(restated[i]), restated[i + 1]) end

local ledger = ledger_key(code)
if #input.ledger_delete > 0 then redis.call('HDEL', ledger, unpack(input.ledger_delete)) end
if #input.ledger_set > 0 then redis.call('HSET', ledger, unpack(input.ledger_set)) end
if input.set_traces == 1 then
  if #ARGV[2] > 0 then redis.call('SET', traces_key(code), ARGV[2]) else redis.call('DEL', traces_key(code)) end
end

redis.call('HSET', here .. '${corrections}', input.position, input.record)
if input.withdrawn == 1 then redis.call('HINCRBY', here .. '${stats}', '${stat_events_withdrawn}', 1) end
if input.pending == 1 then
  redis.call('HSET', here .. '${corrections_pending}', input.position, code)
else
  redis.call('HDEL', here .. '${corrections_pending}', input.position)
end
return 1
