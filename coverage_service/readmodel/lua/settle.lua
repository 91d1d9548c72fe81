-- Settle a shard's ledgers for a day that left the correction window (coverage_service.readmodel.withdrawals):
-- the floor of each location is raised by what the worker computed, and the settled events and withdrawals deleted.
-- (Runs after prelude.lua.) Merging is idempotent and the fields are the window's past, which no withdrawal or
-- apply call touches, so a settle that ran twice or was cut short changes no figure.
--
-- ARGV: payload (MessagePack): {"shard": province, "codes": [code, [floor field, value, ...], [field to delete, ...], ...],
--                               "done": "<offset field>:<day>" of the ledger-day set to delete once every chunk of
--                               it is settled, or ""}
-- Returns: 1

local input = cmsgpack.unpack(ARGV[1])
local here = shard(input.shard)
local codes = input.codes
for i = 1, #codes, 3 do
  local key = ledger_key(codes[i])
  merge_floor(key, codes[i + 1])
  if #codes[i + 2] > 0 then call_sliced('HDEL', key, codes[i + 2], 1) end
end
if input.done ~= '' then
  redis.call('DEL', here .. '${ledger_day}' .. input.done)
  redis.call('SREM', here .. '${ledger_days}', input.done)
end
return 1
