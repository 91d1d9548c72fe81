-- Key names, in front of every read-model script (placeholders from lastmile.names). A province's units' keys carry
-- its code as a Redis Cluster hash tag, '<prefix>:{37}:loc:370102001001': one province's keys share a slot. The
-- write-path scripts name their keys from ARGV; they are called with one key of their shard as KEYS[1], unused,
-- so that a cluster client sends them to the shard's master.

local function shard(code) return '${prefix}:{' .. string.sub(code, 1, 2) .. '}:' end
local function region_key(code)
  if code == '${national}' then return '${prefix}:${region}' .. code end
  return shard(code) .. '${region}' .. code
end
local function loc_key(code) return shard(code) .. '${loc}' .. code end
-- A lapse index's name is its region's code and a suffix ('370102|carrier:sf@p2500').
local function index_key(name) return shard(name) .. '${reach_index}' .. name end
-- A city's or province's counts of last reaches on one CST day (days since 1970-01-01): '{37}:lapse:3701:20500'.
local function lapse_key(code, day) return shard(code) .. '${lapse}' .. code .. ':' .. string.format('%d', day) end
local function stations_key(code) return shard(code) .. '${stations}' .. code end
local function ledger_key(code) return shard(code) .. '${ledger}' .. code end
local function traces_key(code) return shard(code) .. '${traces}' .. code end
local function restated_key(code) return shard(code) .. '${restated}' .. code end

-- The registry index: each province's part in its shard (kinds in one hash), the nation's untagged.
local function kind_key(code) return shard(code) .. '${reg_kind}' end
local function unit_key(code)
  if code == '${national}' then return '${prefix}:${reg_unit}' .. code end
  return shard(code) .. '${reg_unit}' .. code
end
local function children_key(code)
  if code == '${national}' then return '${prefix}:${reg_children}' .. code end
  return shard(code) .. '${reg_children}' .. code
end
