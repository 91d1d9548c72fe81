-- Fold a batch of scan records into the read model, together with the consumed offsets, atomically.
--
-- Redis runs a script to completion before any other command, so either every effect of the batch and
-- its offsets are stored, or none are. A record at or below the stored offset of its partition was
-- applied before (a replay after a crash or rebalance) and is skipped whole; an event whose
-- (carrier, event_id) was seen within the dedup window is a repeat and is dropped.
--
-- Key and field names are template placeholders, filled from lastmile.names.lua_names on loading.
-- ARGV: dedup_window_seconds, now_ms, payload
-- payload (JSON): [[offset_field, offset, [entry, ...]], ...], offsets ascending per partition, where
-- entry = [seen_id, location_code, occurred_ms, reaches (0/1), [counter field, ...], [dimension, ...]]
-- Returns: {applied, duplicate, unknown_location, records_applied, records_replayed, newly_reached}

local window = ARGV[1]
local now_ms = ARGV[2]
local records = cjson.decode(ARGV[3])

local reg_kind = '${reg_kind}'
local offsets_key = '${offsets}'
local stats_key = '${stats}'
local function region_key(code) return '${region}' .. code end
local function loc_key(code) return '${loc}' .. code end
local function seen_key(id) return '${seen}' .. id end
local function int(n) return string.format('%d', n) end

-- The regions a location rolls up into, innermost first; a 9-digit township is its own first region.
local function regions_of(code)
  return {string.sub(code, 1, 9), string.sub(code, 1, 6), string.sub(code, 1, 4), string.sub(code, 1, 2), '${national}'}
end

local kinds = {}
local function kind_of(code)
  local k = kinds[code]
  if k == nil then
    k = redis.call('HGET', reg_kind, code) or false
    kinds[code] = k
  end
  return k
end

-- Counter increments and maxima are gathered first and written once per (key, field).
local incr = {}
local function add(key, fld, n)
  local h = incr[key]
  if h == nil then h = {}; incr[key] = h end
  h[fld] = (h[fld] or 0) + n
end
local as_of = {}
local reach_span = {}  -- village code -> {min_ms, max_ms}

local applied, duplicate, unknown, records_applied, records_replayed, newly_reached = 0, 0, 0, 0, 0, 0
local stored_offsets = {}

for _, record in ipairs(records) do
  local ofield, offset, entries = record[1], record[2], record[3]
  local stored = stored_offsets[ofield]
  if stored == nil then stored = tonumber(redis.call('HGET', offsets_key, ofield) or '-1') end
  if offset <= stored then
    records_replayed = records_replayed + 1
  else
    stored_offsets[ofield] = offset
    records_applied = records_applied + 1
    for _, e in ipairs(entries) do
      local seen_id, code, ms, reaches, counters, dims = e[1], e[2], e[3], e[4], e[5], e[6]
      local kind = kind_of(code)
      if not kind then
        unknown = unknown + 1
      elseif not redis.call('SET', seen_key(seen_id), '1', 'NX', 'EX', window) then
        duplicate = duplicate + 1
      else
        applied = applied + 1
        local regions = regions_of(code)
        local is_village_unit = #code == 12
        for _, fld in ipairs(counters) do
          if is_village_unit then add(loc_key(code), fld, 1) end
          for _, r in ipairs(regions) do add(region_key(r), fld, 1) end
        end
        for _, r in ipairs(regions) do
          local k = region_key(r)
          if (as_of[k] or -1) < ms then as_of[k] = ms end
        end
        if reaches == 1 and is_village_unit then
          local span = reach_span[code]
          if span == nil then reach_span[code] = {ms, ms}
          else
            if ms < span[1] then span[1] = ms end
            if ms > span[2] then span[2] = ms end
          end
          -- One flag for "any carrier" and one per dimension; a flag set for the first time counts
          -- the village once in every region above it, if the registry says it is a village.
          local lk = loc_key(code)
          local flags = {''}
          for _, d in ipairs(dims) do flags[#flags + 1] = '${dim_sep}' .. d end
          for _, suffix in ipairs(flags) do
            if redis.call('HSETNX', lk, '${reached}' .. suffix, '1') == 1 and kind == '${kind_village}' then
              if suffix == '' then newly_reached = newly_reached + 1 end
              for _, r in ipairs(regions) do add(region_key(r), '${villages_reached}' .. suffix, 1) end
            end
          end
        end
      end
    end
  end
end

for key, fields in pairs(incr) do
  for fld, n in pairs(fields) do redis.call('HINCRBY', key, fld, n) end
end
for key, ms in pairs(as_of) do
  local cur = tonumber(redis.call('HGET', key, '${as_of_ms}') or '-1')
  if ms > cur then redis.call('HSET', key, '${as_of_ms}', int(ms)) end
end
for code, span in pairs(reach_span) do
  local lk = loc_key(code)
  local cur = redis.call('HMGET', lk, '${first_reach_ms}', '${last_reach_ms}')
  if cur[1] == false or span[1] < tonumber(cur[1]) then redis.call('HSET', lk, '${first_reach_ms}', int(span[1])) end
  if cur[2] == false or span[2] > tonumber(cur[2]) then redis.call('HSET', lk, '${last_reach_ms}', int(span[2])) end
end
for ofield, offset in pairs(stored_offsets) do redis.call('HSET', offsets_key, ofield, int(offset)) end

if records_applied > 0 or records_replayed > 0 then
  redis.call('HINCRBY', stats_key, '${stat_events_applied}', applied)
  redis.call('HINCRBY', stats_key, '${stat_events_duplicate}', duplicate)
  redis.call('HINCRBY', stats_key, '${stat_events_unknown_location}', unknown)
  redis.call('HINCRBY', stats_key, '${stat_records_applied}', records_applied)
  redis.call('HINCRBY', stats_key, '${stat_records_replayed}', records_replayed)
  redis.call('HINCRBY', stats_key, '${stat_villages_newly_reached}', newly_reached)
  redis.call('HSET', stats_key, '${stat_applied_at_ms}', now_ms)
end
return {applied, duplicate, unknown, records_applied, records_replayed, newly_reached}
