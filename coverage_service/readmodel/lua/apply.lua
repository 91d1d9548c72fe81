-- Fold a batch of scan records into the read model, together with the consumed offsets, atomically.
-- (Runs after the shared prelude, prelude.lua.)
--
-- Redis runs a script to completion before any other command, so either every effect of the batch, its
-- offsets and its dedup digests are stored, or none are. A record at or below the stored offset of its
-- partition was applied before (a replay after a crash or rebalance) and is skipped whole. Repeats of
-- (carrier, event_id) were taken out by the writer (coverage_service.dedup); the script appends the
-- digests of what it applies to the partition's dedup string for this hour, the writer's memory of them.
--
-- Cost: a redis.call from a script costs several times the command it runs, so the script reads and
-- writes each hash once per call (HMGET, then HSET of the new values) instead of once per event and
-- field, and nothing is called per event. Everything else is gathered in Lua tables first.
--
-- ARGV: now_ms, payload, then one string of digests (DIGEST bytes each) per record (coverage_service.fold.payload):
-- payload (JSON): {"expect": {offset_field: offset}, "hour": h, "expire_at": unix s,
--   "profiles": [[[counter field, ...], [dimension, ...]], ...],
--   "records": [[offset_field, offset, flat, dead_letters, duplicates], ...]}, offsets ascending per partition,
--   where flat holds 5 values per entry: location_code, occurred_ms, reaches (0/1), profile (index into
--   profiles), station_id or ''; dead_letters and duplicates are what the worker took out of the record
-- Returns: {applied, duplicate, unknown_location, records_applied, records_replayed, newly_reached}
-- Fails, writing nothing, with REGISTRY_MISSING when no whole registry is loaded (reg:meta is written last).
--
-- Position checks: payload "expect" holds, per partition of the batch, the offset the writer knows Redis holds
-- (-1: none), and its dedup memory is Redis's as of that offset. A stored offset below it means the read model
-- lost applied batches (a Redis restart that lost the tail of its AOF, a restore): READ_MODEL_BEHIND, and the
-- worker folds the lost records again from the topic first; without the check it would go on past them, and
-- they would be lost for good. One above it means another writer applied the partition meanwhile (two workers
-- overlapping in a rebalance): READ_MODEL_AHEAD, and the writer reads the partition's state again. Either
-- way the script changes nothing.

local now_ms = ARGV[1]
local input = cjson.decode(ARGV[2])
local profiles, records = input.profiles, input.records
local STRIDE = 5
local DIGEST = ${digest_bytes}

local offsets_key = '${offsets}'
local stats_key = '${stats}'
local tiers = current_tiers()

-- 0. The registry must be whole: without it every event would look like an unknown location and be counted
--    as one, lost for good. After a wipe the worker waits (retrying) until a registry load is complete.
if redis.call('EXISTS', '${reg_meta}') == 0 then
  return redis.error_reply('REGISTRY_MISSING the division registry is not loaded (lastmile registry load)')
end

-- Position checks, before anything is written.
local stored_offsets = {}
for ofield, offset in pairs(input.expect) do
  local stored = tonumber(redis.call('HGET', offsets_key, ofield) or '-1')
  if stored < offset then
    return redis.error_reply('READ_MODEL_BEHIND ' .. ofield .. ' stored ' .. int(stored) .. ' applied ' .. int(offset))
  elseif stored > offset then
    return redis.error_reply('READ_MODEL_AHEAD ' .. ofield .. ' stored ' .. int(stored) .. ' expected ' .. int(offset))
  end
  stored_offsets[ofield] = stored
end

-- 1. Which records are new: the rest were applied before and are skipped whole.
local applied, duplicate, unknown, records_applied, records_replayed, newly_reached = 0, 0, 0, 0, 0, 0
local dead_letters = 0
local fresh = {}  -- the new records
local moved = {}  -- offset field -> the newest offset applied now
for j, record in ipairs(records) do
  local ofield, offset = record[1], record[2]
  local stored = moved[ofield] or stored_offsets[ofield]
  if stored == nil then
    return redis.error_reply('NO_EXPECTATION ' .. ofield .. ' has no expected offset')
  end
  if offset <= stored then
    records_replayed = records_replayed + 1
  else
    moved[ofield] = offset
    records_applied = records_applied + 1
    dead_letters = dead_letters + record[4]
    duplicate = duplicate + record[5]
    fresh[#fresh + 1] = {record[3], ofield, ARGV[2 + j]}
  end
end

-- 2. The registry entry of every code in them, in one read (and a population read per village when
--    population tiers are kept).
local units = {}  -- code -> {kind, segments} or false when the registry does not hold it
do
  local codes, listed = {}, {}
  for _, f in ipairs(fresh) do
    local flat = f[1]
    for i = 1, #flat, STRIDE do
      local code = flat[i]
      if not listed[code] then listed[code] = true; codes[#codes + 1] = code end
    end
  end
  local kinds = call_sliced('HMGET', '${reg_kind}', codes, 1)
  for i, code in ipairs(codes) do
    local kind = kinds[i]
    if not kind then
      units[code] = false
    else
      local population = nil
      if kind == KIND_VILLAGE and #tiers > 0 then
        population = redis.call('HGET', '${reg_unit}' .. code, '${unit_population}')
      end
      units[code] = {kind = kind, segments = segments(kind, population, tiers)}
    end
  end
end

-- 3. Each event's effects gathered per location and profile; its digest kept unless its location is unknown.
local loc_profiles = {}  -- location code -> {profile -> n}
local loc_newest = {}  -- location code -> newest occurred_ms in this call
local new_stations = {}  -- village code -> {station_id, ...}
local first_reach = {}  -- village code -> earliest reach ms in this call
local reach_profiles = {}   -- village code -> {profile -> latest reach ms in this call}
local digests = {}  -- offset field -> {digest string, ...}
for _, f in ipairs(fresh) do
  local flat, ofield, packed = f[1], f[2], f[3]
  local kept = digests[ofield]
  if kept == nil then kept = {}; digests[ofield] = kept end
  local whole = true
  for i = 1, #flat, STRIDE do
    local code = flat[i]
    if not units[code] then
      unknown = unknown + 1
      if whole then  -- keep the digests before this one
        whole = false
        kept[#kept + 1] = string.sub(packed, 1, (i - 1) / STRIDE * DIGEST)
      end
    else
      if not whole then
        local at = (i - 1) / STRIDE * DIGEST
        kept[#kept + 1] = string.sub(packed, at + 1, at + DIGEST)
      end
      applied = applied + 1
      local ms, profile = flat[i + 1], flat[i + 3]
      local lp = loc_profiles[code]
      if lp == nil then lp = {}; loc_profiles[code] = lp end
      lp[profile] = (lp[profile] or 0) + 1
      if (loc_newest[code] or -1) < ms then loc_newest[code] = ms end
      if #code == 12 then
        local station = flat[i + 4]
        if station ~= '' then
          local st = new_stations[code]
          if st == nil then st = {}; new_stations[code] = st end
          st[#st + 1] = station
        end
        if flat[i + 2] == 1 then
          if first_reach[code] == nil or ms < first_reach[code] then first_reach[code] = ms end
          local rp = reach_profiles[code]
          if rp == nil then rp = {}; reach_profiles[code] = rp end
          if (rp[profile] or -1) < ms then rp[profile] = ms end
        end
      end
    end
  end
  if whole then kept[#kept + 1] = packed end
end

-- Per location: its counter fields from its profiles; per reached village: the latest reach per flag suffix
-- ('' and one per dimension).
local loc_counts = {}  -- location code -> {counter field -> n}
for code, lp in pairs(loc_profiles) do
  local counts = {}
  for profile, n in pairs(lp) do
    for _, fld in ipairs(profiles[profile][1]) do counts[fld] = (counts[fld] or 0) + n end
  end
  loc_counts[code] = counts
end
local last_reach = {}   -- village code -> {flag suffix -> latest reach ms in this call}
for code, rp in pairs(reach_profiles) do
  local latest = {}
  for profile, ms in pairs(rp) do
    if (latest[''] or -1) < ms then latest[''] = ms end
    for _, d in ipairs(profiles[profile][2]) do
      local s = '${dim_sep}' .. d
      if (latest[s] or -1) < ms then latest[s] = ms end
    end
  end
  last_reach[code] = latest
end

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

-- 4. Regions: counters summed level by level (location, township, county, city, province, nation), so each
--    location's counters are added once to its parent rather than to all five regions above it.
local as_of = {}  -- region key -> {as_of field -> newest occurred_ms}
do
  local level_counts, level_newest = {}, {}
  for code, counts in pairs(loc_counts) do
    local t = string.sub(code, 1, 9)
    local c = level_counts[t]
    if c == nil then c = {}; level_counts[t] = c end
    for fld, n in pairs(counts) do c[fld] = (c[fld] or 0) + n end
    if (level_newest[t] or -1) < loc_newest[code] then level_newest[t] = loc_newest[code] end
  end
  for _, len in ipairs({6, 4, 2, 0}) do
    local parent_counts, parent_newest = {}, {}
    for code, counts in pairs(level_counts) do
      local rk = region_key(code)
      for fld, n in pairs(counts) do add(rk, fld, n) end
      as_of[rk] = {['${as_of_ms}'] = level_newest[code]}
      local parent = len == 0 and '${national}' or string.sub(code, 1, len)
      local pc = parent_counts[parent]
      if pc == nil then pc = {}; parent_counts[parent] = pc end
      for fld, n in pairs(counts) do pc[fld] = (pc[fld] or 0) + n end
      if (parent_newest[parent] or -1) < level_newest[code] then parent_newest[parent] = level_newest[code] end
    end
    level_counts, level_newest = parent_counts, parent_newest
  end
  for code, counts in pairs(level_counts) do  -- the nation
    local rk = region_key(code)
    for fld, n in pairs(counts) do add(rk, fld, n) end
    as_of[rk] = {['${as_of_ms}'] = level_newest[code]}
  end
end

-- 5. Stations (一村一站): the first station seen at a village counts it once in villages_with_station.
for code, stations in pairs(new_stations) do
  local sk = stations_key(code)
  local added = 0
  for i = 1, #stations, SLICE do
    added = added + redis.call('SADD', sk, unpack(stations, i, math.min(#stations, i + SLICE - 1)))
  end
  -- SADD answers how many were new: the set was empty before if that is all it holds now.
  if added > 0 and redis.call('SCARD', sk) == added then
    for _, q in ipairs(units[code].segments) do
      for _, rk in ipairs(region_keys_of(code)) do add(rk, '${villages_with_station}' .. q, 1) end
    end
  end
end

-- 6. Villages: one HMGET and one HSET each. A reach flag set for the first time counts the village once in
--    every region above it, in each of its segments; a last reach that moved forward moves the village in
--    the lapse indexes (gathered per index, one ZADD each).
local zadds = {}  -- index key -> {score, member, ...}
local touched = {}
for code, _ in pairs(loc_counts) do if #code == 12 then touched[code] = true end end
for code, _ in pairs(last_reach) do touched[code] = true end
for code, _ in pairs(touched) do
  local lk = loc_key(code)
  local u = units[code]
  local counts = loc_counts[code] or {}
  local latest = last_reach[code] or {}
  local fields, count_fields, suffixes = {}, {}, {}
  for fld, _ in pairs(counts) do count_fields[#count_fields + 1] = fld; fields[#fields + 1] = fld end
  local nc = #fields
  fields[#fields + 1] = '${first_reach_ms}'
  for s, _ in pairs(latest) do
    suffixes[#suffixes + 1] = s
    fields[#fields + 1] = REACHED .. s
    fields[#fields + 1] = LAST_REACH .. s
  end
  local cur = redis.call('HMGET', lk, unpack(fields))
  local changes = {}
  for i, fld in ipairs(count_fields) do
    changes[#changes + 1] = fld
    changes[#changes + 1] = int((tonumber(cur[i]) or 0) + counts[fld])
  end
  local first = first_reach[code]
  if first ~= nil and (cur[nc + 1] == false or first < tonumber(cur[nc + 1])) then
    changes[#changes + 1] = '${first_reach_ms}'
    changes[#changes + 1] = int(first)
  end
  for i, s in ipairs(suffixes) do
    local ms = latest[s]
    if cur[nc + 2 * i] == false then
      changes[#changes + 1] = REACHED .. s
      changes[#changes + 1] = '1'
      if s == '' and u.kind == KIND_VILLAGE then newly_reached = newly_reached + 1 end
      for _, q in ipairs(u.segments) do
        for _, rk in ipairs(region_keys_of(code)) do add(rk, '${villages_reached}' .. s .. q, 1) end
      end
    end
    local last = cur[nc + 2 * i + 1]
    if last == false or ms > tonumber(last) then
      changes[#changes + 1] = LAST_REACH .. s
      changes[#changes + 1] = int(ms)
      for _, q in ipairs(u.segments) do
        for _, r in ipairs(indexed_regions_of(code)) do
          local ik = index_key(r .. s .. q)
          local z = zadds[ik]
          if z == nil then z = {}; zadds[ik] = z end
          z[#z + 1] = int(ms)
          z[#z + 1] = code
        end
      end
    end
  end
  if #changes > 0 then redis.call('HSET', lk, unpack(changes)) end
end
for ik, z in pairs(zadds) do
  for i = 1, #z, SLICE do
    redis.call('ZADD', ik, 'GT', unpack(z, i, math.min(#z, i + SLICE - 1)))
  end
end

flush_increments(as_of)

for ofield, offset in pairs(moved) do redis.call('HSET', offsets_key, ofield, int(offset)) end
-- The digests, in the partition's strings for this hour: each string is created whole (one allocation of its
-- final size) and filled in place; the base key holds how many bytes are filled.
local CHUNK = ${dedup_chunk_bytes}
local zeros = nil
for ofield, kept in pairs(digests) do
  local packed = table.concat(kept)
  if #packed > 0 then
    local base = '${dedup}' .. ofield .. ':' .. int(input.hour)
    local used = tonumber(redis.call('GET', base) or '0')
    local pos = 1
    while pos <= #packed do
      local at = used % CHUNK
      local take = math.min(CHUNK - at, #packed - pos + 1)
      local ck = base .. ':' .. int(math.floor(used / CHUNK))
      if at == 0 then
        if zeros == nil then zeros = string.rep('\0', CHUNK) end
        redis.call('SET', ck, zeros, 'EXAT', input.expire_at)
      end
      redis.call('SETRANGE', ck, at, string.sub(packed, pos, pos + take - 1))
      used, pos = used + take, pos + take
    end
    redis.call('SET', base, int(used), 'EXAT', input.expire_at)
  end
end

if records_applied > 0 or records_replayed > 0 then
  redis.call('HINCRBY', stats_key, '${stat_events_applied}', applied)
  redis.call('HINCRBY', stats_key, '${stat_events_duplicate}', duplicate)
  redis.call('HINCRBY', stats_key, '${stat_events_unknown_location}', unknown)
  redis.call('HINCRBY', stats_key, '${stat_records_applied}', records_applied)
  redis.call('HINCRBY', stats_key, '${stat_records_replayed}', records_replayed)
  redis.call('HINCRBY', stats_key, '${stat_villages_newly_reached}', newly_reached)
  if dead_letters > 0 then redis.call('HINCRBY', stats_key, '${stat_dead_letters}', dead_letters) end
  redis.call('HSET', stats_key, '${stat_applied_at_ms}', now_ms)
end
return {applied, duplicate, unknown, records_applied, records_replayed, newly_reached}
