-- What the registry says of some location codes, for the worker's decisions (coverage_service.changes).
-- (Runs after prelude.lua, whose segments() is the one statement of which figures a unit counts in.) Read-only.
--
-- ARGV[1] (MessagePack): [code, ...]
-- Returns: {generation, loaded (0/1), layout, kind or '' (not in the registry), segments joined by ',', ...}
-- The generation changes with every registry write: the apply script refuses a batch decided on another one.

local codes = cmsgpack.unpack(ARGV[1])
local out = {
  redis.call('GET', '${reg_generation}') or '', redis.call('EXISTS', '${reg_meta}'), redis.call('GET', '${layout}') or ''
}
local tiers = current_tiers()
local kinds = call_sliced('HMGET', '${reg_kind}', codes, 1)
for i, code in ipairs(codes) do
  local kind = kinds[i]
  if not kind then
    out[#out + 1] = ''
    out[#out + 1] = ''
  else
    local population = nil
    if kind == KIND_VILLAGE and #code == 12 and #tiers > 0 then
      population = redis.call('HGET', '${reg_unit}' .. code, '${unit_population}')
    end
    out[#out + 1] = kind
    out[#out + 1] = table.concat(segments(kind, population, tiers), ',')
  end
end
return out
