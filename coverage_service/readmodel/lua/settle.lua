-- Settle a partition's ledgers for a day that left the correction window (coverage_service.readmodel.withdrawals):
-- each location's floor is raised by what the worker computed, its traces replaced by those left, and the settled
-- withdrawals deleted. (Runs after prelude.lua.) The partition's worker alone writes its locations; as apply.lua,
-- the call refuses (READ_MODEL_AHEAD) if another writer moved the partition on since the worker read them. Merging
-- the floor is idempotent, so a settle cut short and run again changes no figure.
--
-- ARGV: payload (MessagePack): {"shard": province, "expect": {offset_field: offset},
--   "codes": [code, [floor field, value, ...], [hash field to delete, ...], ...], then per code the packed traces
--   left, as arguments of their own (binary: Redis's MessagePack has no binary type),
--   "done": "<offset field>:<day>" of the ledger-day set to delete once every chunk of it is settled, or ""}
-- Returns: 1

local input = cmsgpack.unpack(ARGV[1])
local here = shard(input.shard)
for ofield, offset in pairs(input.expect) do
  local stored = tonumber(redis.call('HGET', here .. '${offsets}', ofield) or '-1')
  if stored ~= offset then
    return redis.error_reply('READ_MODEL_AHEAD ' .. ofield .. ' stored ' .. int(stored) .. ' expected ' .. int(offset))
  end
end
local codes = input.codes
for i = 1, #codes, 3 do
  local key, packed = ledger_key(codes[i]), ARGV[1 + (i + 2) / 3]
  merge_floor(key, codes[i + 1])
  if #codes[i + 2] > 0 then call_sliced('HDEL', key, codes[i + 2], 1) end
  if #packed > 0 then redis.call('SET', traces_key(codes[i]), packed) else redis.call('DEL', traces_key(codes[i])) end
end
if input.done ~= '' then
  redis.call('DEL', here .. '${ledger_day}' .. input.done)
  redis.call('SREM', here .. '${ledger_days}', input.done)
end
return 1
