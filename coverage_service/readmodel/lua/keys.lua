-- Key names, in front of every read-model script (placeholders from lastmile.names). A province's units' keys carry
-- its code as a Redis Cluster hash tag, '<prefix>:{37}:loc:370102001001': one province's keys share a slot.

local function shard(code) return '${prefix}:{' .. string.sub(code, 1, 2) .. '}:' end
local function region_key(code)
  if code == '${national}' then return '${prefix}:${region}' .. code end
  return shard(code) .. '${region}' .. code
end
local function loc_key(code) return shard(code) .. '${loc}' .. code end
-- A lapse index's name is its region's code and a suffix ('370102|carrier:sf@p2500').
local function index_key(name) return shard(name) .. '${reach_index}' .. name end
local function stations_key(code) return shard(code) .. '${stations}' .. code end
