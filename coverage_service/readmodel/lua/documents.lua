-- Reads for the coverage API's documents, each one script call answering one JSON string (cjson): one
-- round trip and one bulk reply, where a client pipeline would cost the API a parsed reply per field.
-- Read only. Key and field names are placeholders, filled from lastmile.names.lua_names when the script loads.
--
-- One call reads one shard (a province: every key it reads carries the province's hash tag), so that it runs
-- on a Redis Cluster as on one server. KEYS[1] is the shard's stats hash: it routes the call, and every reply
-- carries the shard's last apply (applied_at). The nation, which is no shard's, is summed by the caller
-- (coverage_service.readmodel.queries) from its provinces' replies.
--
-- ARGV[1] is the mode; every code given is of the shard. A window is three arguments, from fold.lapse_window:
-- cutoff_ms first_day last_day. A region's active villages in a dimension are counted from its lapse index at or
-- after cutoff_ms (townships and counties), or summed from its per-day counts of last reaches over first_day ..
-- last_day (cities and provinces): the same villages, at a cost that does not grow with them.
--   region  code window dim tier want_dims
--           A region's hash, name and kind, its active villages in the scope's dimension and, with want_dims =
--           '1', in every dimension its hash has a villages_reached field of ("counts"), and its children's
--           figures fields (a township's children: its village-level units, with their reach flags, population
--           and stations).
--   provinces window dim tier want_dims code...
--           For each province: [code, kind, name, its hash as HGETALL answers it, its active counts as "counts"].
--   figures window dim tier code...
--           For each region (2/4/6/9 digits): [code, kind, name, total, reached, as_of_ms, stations, active],
--           as the children rows of `region`; kind is false for a code the registry does not hold.
--   version code type_field...
--           A token that changes whenever the region's report may change but for the day: the events applied
--           below it (its type: counters summed; every event counts in every region above it) and the shard's
--           registry generation. `region` answers it too, read with the figures.
--   village code
--           One village-level unit: kind, name, population, its ancestors' names, its location hash and stations.

local mode = ARGV[1]
local REACHED_HEAD = '${villages_reached}' .. '${dim_sep}'
local TIER_SEP = '${tier_sep}'

local function times(out)
  out.applied_at = redis.call('HGET', KEYS[1], '${stat_applied_at_ms}')
  return out
end

local function sorted_children(code)
  local kids = redis.call('SMEMBERS', children_key(code))
  table.sort(kids)
  return kids
end

-- A flat HGETALL reply as a table.
local function as_table(flat)
  local fields = {}
  for i = 1, #flat, 2 do fields[flat[i]] = flat[i + 1] end
  return fields
end

-- The dimensions of a region hash (as a table): '|carrier:sf', '|model:postal_express' ...
local function dims_of(fields)
  local dims = {}
  for f, _ in pairs(fields) do
    if string.sub(f, 1, #REACHED_HEAD) == REACHED_HEAD and not string.find(f, TIER_SEP, 1, true) then
      dims[#dims + 1] = string.sub(f, #'${villages_reached}' + 1)
    end
  end
  return dims
end

local TYPE_HEAD = '${type_prefix}'

-- The type: counters' values of a region hash (as a table), for its version.
local function type_counters(fields)
  local counters = {}
  for f, v in pairs(fields) do
    if string.sub(f, 1, #TYPE_HEAD) == TYPE_HEAD then counters[#counters + 1] = v end
  end
  return counters
end

-- The version of a region's figures (mode `version`) from its type: counters' values.
local function version_of(code, counters)
  local events = 0
  for _, v in ipairs(counters) do
    if v then events = events + tonumber(v) end
  end
  return string.format('%d', events) .. ':' .. (redis.call('GET', shard(code) .. '${shard_generation}') or '')
end

local function window(i)
  return {cutoff = ARGV[i], first = tonumber(ARGV[i + 1]), last = tonumber(ARGV[i + 2])}
end

-- A city's or province's active villages in each of dims (suffixes with the tier): its days' counts summed.
local function day_sums(code, dims, w)
  local fields, sums = {}, {}
  for j, d in ipairs(dims) do fields[j], sums[j] = '${villages_reached}' .. d, 0 end
  for day = w.first, w.last do
    local v = redis.call('HMGET', lapse_key(code, day), unpack(fields))
    for j = 1, #dims do
      if v[j] then sums[j] = sums[j] + tonumber(v[j]) end
    end
  end
  return sums
end

-- A region's active villages in one dimension suffix (with the tier), given its villages_reached count there:
-- none to count when that is 0, since the index and the days' counts hold exactly the villages it counts.
local function active(code, suffix, reached, w)
  if not reached or reached == '0' then return 0 end
  if #code >= 6 then return redis.call('ZCOUNT', index_key(code .. suffix), w.cutoff, '+inf') end
  return day_sums(code, {suffix}, w)[1]
end

-- A region's active villages in its scope's dimension and, with want_dims, in every dimension of its hash (as a
-- table), as [[dimension, count], ...] (cjson needs string keys, and '' is one). A city's or province's are
-- summed over the window's days once for all its reached dimensions.
local function own_counts(code, fields, dim, tier, want_dims, w)
  local dims = {dim}
  if want_dims then
    for _, d in ipairs(dims_of(fields)) do
      if d ~= dim then dims[#dims + 1] = d end
    end
  end
  local out = {}
  if #code >= 6 then
    for _, d in ipairs(dims) do
      out[#out + 1] = {d, active(code, d .. tier, fields['${villages_reached}' .. d .. tier], w)}
    end
    return out
  end
  local counted, suffixes = {}, {}
  for _, d in ipairs(dims) do
    local reached = fields['${villages_reached}' .. d .. tier]
    if reached and reached ~= '0' then counted[#counted + 1], suffixes[#suffixes + 1] = d, d .. tier end
  end
  local found = {}
  if #counted > 0 then
    for j, n in ipairs(day_sums(code, suffixes, w)) do found[counted[j]] = n end
  end
  for _, d in ipairs(dims) do out[#out + 1] = {d, found[d] or 0} end
  return out
end

if mode == 'region' then
  local code, w, dim, tier, want_dims = ARGV[2], window(3), ARGV[6], ARGV[7], ARGV[8] == '1'
  local out = {}
  out.kind = redis.call('HGET', kind_key(code), code)
  if not out.kind then return cjson.encode(times(out)) end
  out.name = redis.call('HGET', unit_key(code), '${unit_name}')
  out.region = redis.call('HGETALL', region_key(code))
  local fields = as_table(out.region)
  out.counts = own_counts(code, fields, dim, tier, want_dims, w)
  out.version = version_of(code, type_counters(fields))
  local kids = sorted_children(code)
  local kinds = {}
  if #kids > 0 then kinds = redis.call('HMGET', kind_key(code), unpack(kids)) end  -- in the region's province
  local rows = {}
  if #code == 9 then
    local reached_flag, last_field = '${reached}' .. dim, '${last_reach_ms}' .. dim
    for i, c in ipairs(kids) do
      local unit = redis.call('HMGET', unit_key(c), '${unit_name}', '${unit_population}')
      local loc = redis.call('HMGET', loc_key(c), reached_flag, last_field, '${last_reach_ms}')
      rows[i] = {c, kinds[i], unit[1], unit[2], loc[1], loc[2], loc[3], redis.call('SCARD', stations_key(c))}
    end
  else
    local fields = {'${villages_total}' .. tier, '${villages_reached}' .. dim .. tier, '${as_of_ms}',
                    '${villages_with_station}' .. tier}
    for i, c in ipairs(kids) do
      local v = redis.call('HMGET', region_key(c), unpack(fields))
      rows[i] = {c, kinds[i], redis.call('HGET', unit_key(c), '${unit_name}'), v[1], v[2], v[3], v[4],
                 active(c, dim .. tier, v[2], w)}
    end
  end
  out.children = rows
  return cjson.encode(times(out))
end

if mode == 'figures' then
  local w, dim, tier = window(2), ARGV[5], ARGV[6]
  local fields = {'${villages_total}' .. tier, '${villages_reached}' .. dim .. tier, '${as_of_ms}',
                  '${villages_with_station}' .. tier}
  local rows = {}
  for i = 7, #ARGV do
    local c = ARGV[i]
    local kind = redis.call('HGET', kind_key(c), c)
    local v = redis.call('HMGET', region_key(c), unpack(fields))
    rows[#rows + 1] = {c, kind or false, redis.call('HGET', unit_key(c), '${unit_name}'), v[1], v[2], v[3],
                       v[4], kind and active(c, dim .. tier, v[2], w) or 0}
  end
  return cjson.encode(times({rows = rows}))
end

if mode == 'version' then
  local fields = {}
  for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
  return version_of(ARGV[2], redis.call('HMGET', region_key(ARGV[2]), unpack(fields)))
end

if mode == 'village' then
  local code = ARGV[2]
  local out = {}
  out.kind = redis.call('HGET', kind_key(code), code)
  if not out.kind then return cjson.encode(times(out)) end
  out.unit = redis.call('HMGET', unit_key(code), '${unit_name}', '${unit_population}')
  out.ancestors = {}
  for i, n in ipairs({9, 6, 4, 2}) do
    out.ancestors[i] = redis.call('HGET', unit_key(string.sub(code, 1, n)), '${unit_name}')
  end
  out.loc = redis.call('HGETALL', loc_key(code))
  out.stations = redis.call('SMEMBERS', stations_key(code))
  return cjson.encode(times(out))
end

if mode == 'provinces' then
  local w, dim, tier, want_dims = window(2), ARGV[5], ARGV[6], ARGV[7] == '1'
  local rows = {}
  for i = 8, #ARGV do
    local p = ARGV[i]
    local flat = redis.call('HGETALL', region_key(p))
    rows[#rows + 1] = {p, redis.call('HGET', kind_key(p), p) or false, redis.call('HGET', unit_key(p), '${unit_name}')
                       or false, flat, own_counts(p, as_table(flat), dim, tier, want_dims, w)}
  end
  return cjson.encode(times({rows = rows}))
end

return redis.error_reply('documents.lua: unknown mode ' .. tostring(mode))
