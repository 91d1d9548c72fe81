-- Write one chunk of registry units, keeping every region's figures exact. (Runs after prelude.lua.)
--
-- Each unit's kind goes to the registry index, its name (and population) to its unit hash, its code to its
-- parent's children set; a region gets villages_total 0 if it has none yet, so every region has a denominator.
-- A 12-digit unit's segments (prelude.lua) follow from its kind, its population and the population tiers.
-- When they change (a new village, a reclassification, a population crossing a tier, new tiers), the unit's
-- whole contribution moves with them: villages_total, every villages_reached<flag> of the reach flags the
-- worker already set on it, villages_with_station, and its place in the lapse indexes. The kind and the
-- figures change in this one atomic step, as the apply script reads the kind in its own.
--
-- ARGV[1] (JSON): [[code, name, kind, population or ''], ...], parents before their children; kind 'removed' for
-- a unit of the loaded edition the new one does not hold.
-- ARGV[2], ARGV[3]: the population tiers before and after this load, comma-separated.
-- ARGV[4]: this chunk's registry generation, for the shard's copy if it has one, so that no part of a batch the worker
-- decided before it applies. (A shard's first copy is written with reg:meta, at the end.)
-- ARGV[5]: the shard (province) every unit of the chunk is in: every key written is in its slot. (The nation's
-- children, the provinces, are added by the caller.)
-- Returns: {units added, units whose kind changed}

local units = cjson.decode(ARGV[1])
local old_tiers, new_tiers = parse_tiers(ARGV[2]), parse_tiers(ARGV[3])
local copy = shard(ARGV[5]) .. '${shard_generation}'
if redis.call('EXISTS', copy) == 1 then redis.call('SET', copy, ARGV[4]) end
local parent_length = {[2] = 0, [4] = 2, [6] = 4, [9] = 6, [12] = 9}

local function as_set(list)
  local out = {}
  for _, v in ipairs(list) do out[v] = true end
  return out
end

local added, reclassified = 0, 0
for _, u in ipairs(units) do
  local code, name, kind, population = u[1], u[2], u[3], u[4]
  local unit = unit_key(code)
  local previous = redis.call('HGET', kind_key(code), code)
  local previous_population = redis.call('HGET', unit, '${unit_population}')
  if previous ~= kind then
    redis.call('HSET', kind_key(code), code, kind)
    if previous then reclassified = reclassified + 1 else added = added + 1 end
  end
  if #code == 12 then
    local before = as_set(segments(previous, previous_population, old_tiers))
    local after = as_set(segments(kind, population, new_tiers))
    local state = nil
    for q, _ in pairs(before) do
      if not after[q] then
        state = state or unit_state(code)
        move_segment(code, q, -1, state)
      end
    end
    for q, _ in pairs(after) do
      if not before[q] then
        state = state or unit_state(code)
        move_segment(code, q, 1, state)
      end
    end
  end
  redis.call('HSET', unit, '${unit_name}', name)
  if population == '' then
    redis.call('HDEL', unit, '${unit_population}')
  else
    redis.call('HSET', unit, '${unit_population}', population)
  end
  local plen = parent_length[#code]
  if kind == '${kind_removed}' then
    -- Gone from this edition: out of its parent's list (its villages' figures moved out above, as theirs come).
    if plen > 0 then redis.call('SREM', children_key(string.sub(code, 1, plen)), code) end
  else
    if plen > 0 then redis.call('SADD', children_key(string.sub(code, 1, plen)), code) end
    if #code < 12 then redis.call('HSETNX', region_key(code), '${villages_total}', 0) end
  end
end

flush_increments()
return {added, reclassified}
