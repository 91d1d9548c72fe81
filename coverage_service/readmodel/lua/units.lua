-- What the registry says of some location codes of one shard, for the worker's decisions
-- (coverage_service.changes). (Runs after prelude.lua, whose segments() is the one statement of which figures a
-- unit counts in.) Read-only; every key is in the shard's slot.
--
-- ARGV[1] (MessagePack): [code, ...], all in shard ARGV[2]; ARGV[3]: the population tiers in force (reg:meta).
-- Returns: {the shard's registry generation ('' while no whole registry is loaded), kind or '' (not in the
-- registry), segments joined by ',', ...}. The apply script refuses a part decided on another generation.

local codes, here = cmsgpack.unpack(ARGV[1]), ARGV[2]
local out = {redis.call('GET', shard(here) .. '${shard_generation}') or ''}
local tiers = parse_tiers(ARGV[3])
local kinds = #codes > 0 and call_sliced('HMGET', kind_key(here), codes, 1) or {}
for i, code in ipairs(codes) do
  local kind = kinds[i]
  if not kind then
    out[#out + 1] = ''
    out[#out + 1] = ''
  else
    local population = nil
    if kind == KIND_VILLAGE and #code == 12 and #tiers > 0 then
      population = redis.call('HGET', unit_key(code), '${unit_population}')
    end
    out[#out + 1] = kind
    out[#out + 1] = table.concat(segments(kind, population, tiers), ',')
  end
end
return out
