-- What some villages hold, for the worker's decisions (coverage_service.changes). Read-only.
-- One call instead of a command per village: a pipelined command costs the worker far more than Redis the
-- HGETALL it runs.
--
-- ARGV[1] (MessagePack): [village, ...], whose loc: hashes are wanted; ARGV[2]: [village, ...], whose station
-- sets are to be counted.
-- Returns: {{field, value, ...} per village of ARGV[1], ..., then the station set sizes of ARGV[2]}

local out = {}
for _, code in ipairs(cmsgpack.unpack(ARGV[1])) do
  out[#out + 1] = redis.call('HGETALL', loc_key(code))
end
for _, code in ipairs(cmsgpack.unpack(ARGV[2])) do
  out[#out + 1] = redis.call('SCARD', stations_key(code))
end
return out
