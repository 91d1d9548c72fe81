-- Reads for the coverage API's documents, each one script call answering one JSON string (cjson): one
-- round trip and one bulk reply, where a client pipeline would cost the API a parsed reply per field.
-- Read only. Key and field names are placeholders, filled from lastmile.names.lua_names when the script loads.
--
-- One call reads one shard (a province: every key it reads carries the province's hash tag), so that it runs
-- on a Redis Cluster as on one server. KEYS[1] is the shard's stats hash: it routes the call, and every reply
-- carries the shard's last apply (applied_at). The nation, which is no shard's, is summed by the caller
-- (coverage_service.readmodel.queries) from its provinces' replies.
--
-- ARGV[1] is the mode; every code given is of the shard:
--   region  code cutoff_ms dim tier want_dims own_counts
--           A region's hash, name and kind, and its children's figures fields (a township's children: its
--           village-level units, with their reach flags, population and stations). With own_counts = '1'
--           (townships and counties, which keep lapse indexes) also the active villages of the region and of
--           each child: the index counts at or after cutoff_ms, for the scope's dimension and, with
--           want_dims = '1', for every dimension the region's hash has a villages_reached field of.
--   provinces code...
--           For each province: [code, kind, name, its hash as HGETALL answers it].
--   figures cutoff_ms dim tier code...
--           For each region (2/4/6/9 digits): [code, kind, name, total, reached, as_of_ms, stations, active],
--           as the children rows of `region`; kind is false for a code the registry does not hold; active is
--           the index count at or after cutoff_ms for townships and counties, false above them.
--   village code
--           One village-level unit: kind, name, population, its ancestors' names, its location hash and stations.
--   tree    code...
--           The registry below these provinces, above the counties: {parent: [children]} down to the units of
--           6 digits or more.
--   reached tier n_dims dim... region...
--           For each region, the positions of the dimensions it has a villages_reached count above 0 in,
--           joined by '.'; the regions' answers comma-separated.
--   actives cutoff_ms tier budget_us n_dims dim... county...
--           The counties' active villages per dimension (the index counts at or after cutoff_ms), as
--           'county position:dimension position:count' for each count above 0, comma-separated, after the
--           number of counties done: the call stops after about budget_us microseconds.

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

local function active(code, suffix, cutoff)
  return redis.call('ZCOUNT', index_key(code .. suffix), cutoff, '+inf')
end

-- The dimensions of a region hash (flat HGETALL reply): '|carrier:sf', '|model:postal_express' ...
local function dims_of(flat)
  local dims = {}
  for i = 1, #flat, 2 do
    local f = flat[i]
    if string.sub(f, 1, #REACHED_HEAD) == REACHED_HEAD and not string.find(f, TIER_SEP, 1, true) then
      dims[#dims + 1] = string.sub(f, #'${villages_reached}' + 1)
    end
  end
  return dims
end

if mode == 'region' then
  local code, cutoff, dim, tier = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
  local want_dims, own_counts = ARGV[6] == '1', ARGV[7] == '1'
  local out = {}
  out.kind = redis.call('HGET', kind_key(code), code)
  if not out.kind then return cjson.encode(times(out)) end
  out.name = redis.call('HGET', unit_key(code), '${unit_name}')
  out.region = redis.call('HGETALL', region_key(code))
  if own_counts then
    -- An index holds the villages its villages_reached field counts: where that is 0 there is nothing to count.
    local fields = {}
    for i = 1, #out.region, 2 do fields[out.region[i]] = out.region[i + 1] end
    local function count(d)
      local reached = fields['${villages_reached}' .. d .. tier]
      if not reached or reached == '0' then return 0 end
      return active(code, d .. tier, cutoff)
    end
    local counts = {}
    counts[dim] = count(dim)
    if want_dims then
      for _, d in ipairs(dims_of(out.region)) do counts[d] = count(d) end
    end
    -- '' would make an empty key: cjson needs string keys, so the dimension travels with its count.
    out.counts = {}
    for d, n in pairs(counts) do out.counts[#out.counts + 1] = {d, n} end
  end
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
      local n = false
      if own_counts then n = (v[2] and v[2] ~= '0') and active(c, dim .. tier, cutoff) or 0 end
      rows[i] = {c, kinds[i], redis.call('HGET', unit_key(c), '${unit_name}'), v[1], v[2], v[3], v[4], n}
    end
  end
  out.children = rows
  return cjson.encode(times(out))
end

if mode == 'figures' then
  local cutoff, dim, tier = ARGV[2], ARGV[3], ARGV[4]
  local fields = {'${villages_total}' .. tier, '${villages_reached}' .. dim .. tier, '${as_of_ms}',
                  '${villages_with_station}' .. tier}
  local rows = {}
  for i = 5, #ARGV do
    local c = ARGV[i]
    local kind = redis.call('HGET', kind_key(c), c)
    local v = redis.call('HMGET', region_key(c), unpack(fields))
    local n = false
    if kind and #c >= 6 then n = (v[2] and v[2] ~= '0') and active(c, dim .. tier, cutoff) or 0 end
    rows[#rows + 1] = {c, kind or false, redis.call('HGET', unit_key(c), '${unit_name}'), v[1], v[2], v[3],
                       v[4], n}
  end
  return cjson.encode(times({rows = rows}))
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
  local rows = {}
  for i = 2, #ARGV do
    local p = ARGV[i]
    rows[#rows + 1] = {p, redis.call('HGET', kind_key(p), p) or false, redis.call('HGET', unit_key(p), '${unit_name}')
                       or false, redis.call('HGETALL', region_key(p))}
  end
  return cjson.encode(times({rows = rows}))
end

if mode == 'tree' then
  local tree, frontier = {}, {}
  for i = 2, #ARGV do frontier[i - 1] = ARGV[i] end
  while #frontier > 0 do
    local deeper = {}
    for _, node in ipairs(frontier) do
      local kids = sorted_children(node)
      tree[node] = kids
      for _, c in ipairs(kids) do
        if #c < 6 then deeper[#deeper + 1] = c end
      end
    end
    frontier = deeper
  end
  return cjson.encode(times({tree = tree}))
end

if mode == 'reached' then
  -- Which dimensions each region has reached a village in: no county below a region that has not can have.
  local tier, n_dims = ARGV[2], tonumber(ARGV[3])
  local fields = {}
  for j = 1, n_dims do fields[j] = '${villages_reached}' .. ARGV[3 + j] .. tier end
  local out = {}
  for i = 4 + n_dims, #ARGV do
    local reached = redis.call('HMGET', region_key(ARGV[i]), unpack(fields))
    local columns = {}
    for j = 1, n_dims do
      local r = reached[j]
      if r and r ~= '0' then columns[#columns + 1] = j - 1 end
    end
    out[#out + 1] = table.concat(columns, '.')
  end
  return table.concat(out, ',')
end

if mode == 'actives' then
  -- A county's index of a dimension holds exactly the villages its villages_reached field of that dimension
  -- counts (the apply and registry scripts move both together): where that field is 0 there is nothing
  -- to count, which spares most calls where carriers have reached few counties. The call stops once it has
  -- run budget_us microseconds, so Redis never stops long for it, and says how many counties it did.
  local cutoff, tier, budget, n_dims = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
  local dims, fields = {}, {}
  for j = 1, n_dims do
    dims[j] = ARGV[5 + j] .. tier
    fields[j] = '${villages_reached}' .. dims[j]
  end
  local function now_us()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  local started = now_us()
  local out, n, first, done = {}, 0, 6 + n_dims, 0
  for i = first, #ARGV do
    local county = ARGV[i]
    local reached = redis.call('HMGET', region_key(county), unpack(fields))
    for j = 1, n_dims do
      local r = reached[j]
      if r and r ~= '0' then
        local a = redis.call('ZCOUNT', index_key(county .. dims[j]), cutoff, '+inf')
        if a > 0 then
          n = n + 1
          out[n] = (i - first) .. ':' .. (j - 1) .. ':' .. a
        end
      end
    end
    done = done + 1
    if done % 16 == 0 and now_us() - started > budget then break end
  end
  return {done, table.concat(out, ',')}
end

return redis.error_reply('documents.lua: unknown mode ' .. tostring(mode))
