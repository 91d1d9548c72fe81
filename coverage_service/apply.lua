-- Fold a batch of scan records into the read model, together with the consumed offsets, atomically.
-- (Runs after the readmodel.lua prelude.)
--
-- Redis runs a script to completion before any other command, so either every effect of the batch and
-- its offsets are stored, or none are. A record at or below the stored offset of its partition was
-- applied before (a replay after a crash or rebalance) and is skipped whole; an event whose
-- (carrier, event_id) was seen within the dedup window is a repeat and is dropped.
--
-- ARGV: dedup_window_seconds, now_ms, payload
-- payload (JSON): [[offset_field, offset, [entry, ...]], ...], offsets ascending per partition, where
-- entry = [seen_id, location_code, occurred_ms, reaches (0/1), [counter field, ...], [dimension, ...],
--          station_id or '']
-- Returns: {applied, duplicate, unknown_location, records_applied, records_replayed, newly_reached}

local window = ARGV[1]
local now_ms = ARGV[2]
local records = cjson.decode(ARGV[3])

local offsets_key = '${offsets}'
local stats_key = '${stats}'
local tiers = current_tiers()

local units = {}  -- code -> {kind, segments}, read once per call
local function unit_of(code)
  local u = units[code]
  if u == nil then
    local kind = redis.call('HGET', '${reg_kind}', code)
    if not kind then
      u = false
    else
      local population = #code == 12 and redis.call('HGET', '${reg_unit}' .. code, '${unit_population}') or nil
      u = {kind = kind, segments = segments(kind, population, tiers)}
    end
    units[code] = u
  end
  return u
end

local loc_counts = {}  -- location code -> {counter field -> n}
local loc_newest = {}  -- location code -> newest occurred_ms in this call
local region_keys = {}
local function region_keys_of(code)
  local keys = region_keys[code]
  if keys == nil then
    keys = {}
    for _, r in ipairs(regions_of(code)) do keys[#keys + 1] = region_key(r) end
    region_keys[code] = keys
  end
  return keys
end
local first_reach = {}  -- village code -> earliest reach ms in this batch
local last_reach = {}   -- village code -> {flag suffix -> latest reach ms in this batch}

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
      local seen_id, code, ms, reaches, counters, dims, station = e[1], e[2], e[3], e[4], e[5], e[6], e[7]
      local u = unit_of(code)
      if not u then
        unknown = unknown + 1
      elseif not redis.call('SET', '${seen}' .. seen_id, '1', 'NX', 'EX', window) then
        duplicate = duplicate + 1
      else
        applied = applied + 1
        local is_village_unit = #code == 12
        -- Counted per location here and spread to the location's regions once per call, below:
        -- most events of a batch share their regions, and building keys per event is the cost.
        local lc = loc_counts[code]
        if lc == nil then lc = {}; loc_counts[code] = lc end
        for _, fld in ipairs(counters) do lc[fld] = (lc[fld] or 0) + 1 end
        if (loc_newest[code] or -1) < ms then loc_newest[code] = ms end
        if is_village_unit and station ~= nil and station ~= '' then
          -- 一村一站: the first station seen at a village counts it once in villages_with_station.
          if redis.call('SADD', stations_key(code), station) == 1 and redis.call('SCARD', stations_key(code)) == 1 then
            for _, q in ipairs(u.segments) do
              for _, rk in ipairs(region_keys_of(code)) do add(rk, '${villages_with_station}' .. q, 1) end
            end
          end
        end
        if reaches == 1 and is_village_unit then
          -- Reach is settled per village at the end of the call, in one read and one write.
          if first_reach[code] == nil or ms < first_reach[code] then first_reach[code] = ms end
          local latest = last_reach[code]
          if latest == nil then latest = {}; last_reach[code] = latest end
          if (latest[''] or -1) < ms then latest[''] = ms end
          for _, d in ipairs(dims) do
            local s = '${dim_sep}' .. d
            if (latest[s] or -1) < ms then latest[s] = ms end
          end
        end
      end
    end
  end
end

local as_of = {}  -- region key -> newest occurred_ms
for code, counts in pairs(loc_counts) do
  local keys = region_keys_of(code)
  if #code == 12 then
    local lk = loc_key(code)
    for fld, n in pairs(counts) do add(lk, fld, n) end
  end
  local ms = loc_newest[code]
  for _, rk in ipairs(keys) do
    for fld, n in pairs(counts) do add(rk, fld, n) end
    if (as_of[rk] or -1) < ms then as_of[rk] = ms end
  end
end
flush_increments()
for key, ms in pairs(as_of) do
  local cur = tonumber(redis.call('HGET', key, '${as_of_ms}') or '-1')
  if ms > cur then redis.call('HSET', key, '${as_of_ms}', int(ms)) end
end
-- Each reached village: one HMGET of its flags and times, one HSET of what changed. A flag set for the
-- first time counts the village once in every region above it, in each of its segments; a last reach
-- that moved forward moves the village in the lapse indexes.
for code, latest in pairs(last_reach) do
  local lk = loc_key(code)
  local u = unit_of(code)
  local suffixes, fields = {}, {'${first_reach_ms}'}
  for s, _ in pairs(latest) do
    suffixes[#suffixes + 1] = s
    fields[#fields + 1] = REACHED .. s
    fields[#fields + 1] = LAST_REACH .. s
  end
  local cur = redis.call('HMGET', lk, unpack(fields))
  local changes = {}
  if cur[1] == false or first_reach[code] < tonumber(cur[1]) then
    changes[#changes + 1] = '${first_reach_ms}'
    changes[#changes + 1] = int(first_reach[code])
  end
  for i, s in ipairs(suffixes) do
    local ms = latest[s]
    if cur[2 * i] == false then
      changes[#changes + 1] = REACHED .. s
      changes[#changes + 1] = '1'
      if s == '' and u.kind == KIND_VILLAGE then newly_reached = newly_reached + 1 end
      for _, q in ipairs(u.segments) do
        for _, rk in ipairs(region_keys_of(code)) do add(rk, '${villages_reached}' .. s .. q, 1) end
      end
    end
    local last = cur[2 * i + 1]
    if last == false or ms > tonumber(last) then
      changes[#changes + 1] = LAST_REACH .. s
      changes[#changes + 1] = int(ms)
      for _, q in ipairs(u.segments) do
        for _, r in ipairs(indexed_regions_of(code)) do
          redis.call('ZADD', index_key(r .. s .. q), 'GT', int(ms), code)
        end
      end
    end
  end
  if #changes > 0 then redis.call('HSET', lk, unpack(changes)) end
end
flush_increments()

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
