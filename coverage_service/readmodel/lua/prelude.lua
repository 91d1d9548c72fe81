-- Prelude of every read-model script (loaded in front of apply.lua and registry.lua): what a unit counts
-- toward in the regions above it. Key and field names are template placeholders from lastmile.names.
--
-- A unit counts in a region's figures through "segments": '' (all administrative villages) plus one
-- '@p<N>' per population tier it reaches. Only kind 'village' units have segments. For each segment q
-- it adds to villages_total<q>; for each reach flag s it holds ('' or '|carrier:sf' ...), to
-- villages_reached<s><q> and to the sorted sets reach:<township><s><q> and reach:<county><s><q> (scored
-- by its last reach in ms, for the lapse window) and, at its city and province, to the count of the day of that
-- last reach (lapse:<region>:<day>, field villages_reached<s><q>); with a station, to villages_with_station<q>.

local KIND_VILLAGE = '${kind_village}'
local REACHED = '${reached}'
local LAST_REACH = '${last_reach_ms}'

local function int(n) return string.format('%d', n) end

-- The regions a location rolls up into, innermost first; a 9-digit township is its own first region. The nation
-- has no hash of its own: its figures are its provinces' summed when read.
local function regions_of(code)
  return {string.sub(code, 1, 9), string.sub(code, 1, 6), string.sub(code, 1, 4), string.sub(code, 1, 2)}
end

-- The regions that keep a lapse index (sorted set) of their villages: township and county.
local function indexed_regions_of(code)
  return {string.sub(code, 1, 9), string.sub(code, 1, 6)}
end

-- The regions that count last reaches per day (lapse:<region>:<day>): city and province (changes.LAPSE_DIGITS).
local function lapse_regions_of(code)
  return {string.sub(code, 1, 4), string.sub(code, 1, 2)}
end

-- The CST day of a time in ms (fold.cst_day).
local function cst_day(ms)
  return math.floor((tonumber(ms) + ${cst_offset_ms}) / ${day_ms})
end

-- When a day's counts expire (unix s): once no lapse window can reach them (scripts.LAPSE_DAYS_KEPT). A day
-- already past it is not counted at all.
local function lapse_expire_at(day)
  return ((day + ${lapse_days_kept}) * ${day_ms} - ${cst_offset_ms}) / 1000
end

-- Redis's clock, in s, read once per script.
local clock_s = nil
local function now_s()
  if clock_s == nil then clock_s = tonumber(redis.call('TIME')[1]) end
  return clock_s
end

local function parse_tiers(text)
  local tiers = {}
  for n in string.gmatch(text or '', '%d+') do tiers[#tiers + 1] = tonumber(n) end
  return tiers
end


local function segments(kind, population, tiers)
  if kind ~= KIND_VILLAGE then return {} end
  local out = {''}
  local pop = tonumber(population)
  if pop then
    for _, t in ipairs(tiers) do
      if pop >= t then out[#out + 1] = '${tier_sep}' .. t end
    end
  end
  return out
end

-- Lua's unpack has a limit (LUAI_MAXCSTACK, 8000 values): long argument lists go in slices of this many.
local SLICE = 4000

-- Calls ``command key args...`` over ``list`` in slices; returns the replies concatenated.
local function call_sliced(command, key, list, step)
  local out, n = {}, SLICE - (SLICE % step)
  for i = 1, #list, n do
    local reply = redis.call(command, key, unpack(list, i, math.min(#list, i + n - 1)))
    if type(reply) == 'table' then
      for _, v in ipairs(reply) do out[#out + 1] = v end
    end
  end
  return out
end

-- Adds ``fields`` (field -> n) to hash ``key`` with one HMGET of the fields and one HSET of their sums, instead of
-- one HINCRBY per field (a script's redis.call costs more than the command itself); with ``floor`` >= 0, field
-- ``floor_field`` is raised to at least ``floor`` in the same write (as_of_ms). Sums go to Redis as Lua numbers:
-- Redis formats them itself, faster than string.format here.
local function increment_hash(key, fields, floor_field, floor)
  local names, deltas, n = {}, {}, 0
  for fld, d in pairs(fields) do
    if d ~= 0 then n = n + 1; names[n], deltas[n] = fld, d end
  end
  local floored = floor ~= nil and floor >= 0
  if floored then names[n + 1] = floor_field end
  if #names == 0 then return end
  local cur = #names < SLICE and redis.call('HMGET', key, unpack(names)) or call_sliced('HMGET', key, names, 1)
  local out = {}
  for i = 1, n do
    out[2 * i - 1] = names[i]
    out[2 * i] = (tonumber(cur[i]) or 0) + deltas[i]
  end
  if floored then
    local was = tonumber(cur[n + 1])
    if was == nil or floor > was then
      out[#out + 1] = floor_field
      out[#out + 1] = floor
    end
  end
  if #out == 0 then return end
  if #out < SLICE then redis.call('HSET', key, unpack(out)) else call_sliced('HSET', key, out, 2) end
end

-- Increments gathered with add() over a script, then written once per hash by flush_increments(); hashes in
-- ``expiring`` get their expiry (unix s) after.
local incr, expiring = {}, {}
local function add(key, fld, n)
  local h = incr[key]
  if h == nil then h = {}; incr[key] = h end
  h[fld] = (h[fld] or 0) + n
end
local function flush_increments()
  for key, fields in pairs(incr) do increment_hash(key, fields) end
  for key, at in pairs(expiring) do redis.call('EXPIREAT', key, at) end
  incr, expiring = {}, {}
end

-- What a unit already holds: its reach flags (suffix -> last reach ms) and whether it has a station.
local function unit_state(code)
  local loc = redis.call('HGETALL', loc_key(code))
  local fields = {}
  for i = 1, #loc, 2 do fields[loc[i]] = loc[i + 1] end
  local flags = {}
  for name, _ in pairs(fields) do
    if name == REACHED or string.sub(name, 1, #REACHED + 1) == REACHED .. '${dim_sep}' then
      local suffix = string.sub(name, #REACHED + 1)
      flags[suffix] = fields[LAST_REACH .. suffix] or fields[LAST_REACH] or '0'
    end
  end
  return {flags = flags, station = redis.call('SCARD', stations_key(code)) > 0}
end

-- Add (delta 1) or remove (delta -1) a unit's contribution to segment q of every region above it.
local function move_segment(code, q, delta, state)
  for _, r in ipairs(regions_of(code)) do
    local rk = region_key(r)
    add(rk, '${villages_total}' .. q, delta)
    for s, _ in pairs(state.flags) do add(rk, '${villages_reached}' .. s .. q, delta) end
    if state.station then add(rk, '${villages_with_station}' .. q, delta) end
  end
  for s, ms in pairs(state.flags) do
    local day = cst_day(ms)
    local expire_at = lapse_expire_at(day)
    if expire_at > now_s() then
      for _, r in ipairs(lapse_regions_of(code)) do
        local lk = lapse_key(r, day)
        add(lk, '${villages_reached}' .. s .. q, delta)
        expiring[lk] = expire_at
      end
    end
    for _, r in ipairs(indexed_regions_of(code)) do
      if delta > 0 then
        redis.call('ZADD', index_key(r .. s .. q), 'GT', ms, code)
      else
        redis.call('ZREM', index_key(r .. s .. q), code)
      end
    end
  end
end

-- Raises a ledger's floor (docs/corrections.md) by ``fields`` ([field, value, ...]): the first reach to the lower,
-- each last reach to the higher, stations added. The floor only grows, so merging twice changes nothing.
local function merge_floor(key, fields)
  for i = 1, #fields, 2 do
    local name, value = fields[i], fields[i + 1]
    local first = name == '${ledger_first}'
    if first or string.sub(name, 1, #'${ledger_last}') == '${ledger_last}' then
      local held = tonumber(redis.call('HGET', key, name))
      local v = tonumber(value)
      if held == nil or (first and v < held) or (not first and v > held) then redis.call('HSET', key, name, value) end
    else
      redis.call('HSET', key, name, value)
    end
  end
end
