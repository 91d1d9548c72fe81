-- Write one chunk of registry units, keeping every region's villages_total and villages_reached exact.
--
-- Each unit's kind goes to the registry index, its name (and population) to its unit hash, its code to its
-- parent's children set; a region gets villages_total 0 if it has none yet, so every region has a denominator.
-- A 12-digit unit that becomes an administrative village (new or reclassified) adds one to villages_total
-- of its five regions, and one that stops being one takes one away. The worker counts a reached village only
-- if the registry says it is a village when the reach arrives, so each reach flag it already set on the unit
-- (reached, reached|carrier:sf ...) moves the matching villages_reached field by the same amount. The kind and
-- the counts change in this one atomic step, as the apply script reads the kind in its own.
--
-- Key and field names are template placeholders, filled from lastmile.names.lua_names on loading.
-- ARGV[1] (JSON): [[code, name, kind, population or ''], ...], parents before their children.
-- Returns: {units added, units whose kind changed}

local units = cjson.decode(ARGV[1])

local reg_kind = '${reg_kind}'
local reached = '${reached}'
local reached_dim = reached .. '${dim_sep}'
local parent_length = {[2] = 0, [4] = 2, [6] = 4, [9] = 6, [12] = 9}
local function region_key(code) return '${region}' .. code end

local function regions_of(code)
  return {string.sub(code, 1, 9), string.sub(code, 1, 6), string.sub(code, 1, 4), string.sub(code, 1, 2), '${national}'}
end

-- The region fields a unit counts in: villages_total, and villages_reached plus the suffix of each reach flag.
local function counted_fields(code)
  local fields = {'${villages_total}'}
  for _, flag in ipairs(redis.call('HKEYS', '${loc}' .. code)) do
    if flag == reached or string.sub(flag, 1, #reached_dim) == reached_dim then
      fields[#fields + 1] = '${villages_reached}' .. string.sub(flag, #reached + 1)
    end
  end
  return fields
end

local incr = {}
local function add(key, fld, n)
  local h = incr[key]
  if h == nil then h = {}; incr[key] = h end
  h[fld] = (h[fld] or 0) + n
end

local added, reclassified = 0, 0
for _, u in ipairs(units) do
  local code, name, kind, population = u[1], u[2], u[3], u[4]
  local previous = redis.call('HGET', reg_kind, code)
  if previous ~= kind then
    redis.call('HSET', reg_kind, code, kind)
    if previous then reclassified = reclassified + 1 else added = added + 1 end
    local delta = (kind == '${kind_village}' and 1 or 0) - (previous == '${kind_village}' and 1 or 0)
    if delta ~= 0 then
      local fields = counted_fields(code)
      for _, r in ipairs(regions_of(code)) do
        for _, fld in ipairs(fields) do add(region_key(r), fld, delta) end
      end
    end
  end
  local unit_key = '${reg_unit}' .. code
  redis.call('HSET', unit_key, '${unit_name}', name)
  if population == '' then
    redis.call('HDEL', unit_key, '${unit_population}')
  else
    redis.call('HSET', unit_key, '${unit_population}', population)
  end
  local plen = parent_length[#code]
  redis.call('SADD', '${reg_children}' .. (plen == 0 and '${national}' or string.sub(code, 1, plen)), code)
  if #code < 12 then redis.call('HSETNX', region_key(code), '${villages_total}', 0) end
end

for key, fields in pairs(incr) do
  for fld, n in pairs(fields) do
    if n ~= 0 then redis.call('HINCRBY', key, fld, n) end
  end
end
return {added, reclassified}
