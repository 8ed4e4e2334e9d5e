-- A burst's retry events as one batch entry of the stream (proto/event.h):
-- one XADD per batch instead of one per event, which was the largest part
-- of Redis's work per fired retry on AOF. Its events keep ids of their own:
-- the entry takes the last id of a range reserved above the stream's last
-- id, which only a script can read and use in one step. The daemon is the
-- only writer of the stream's retries under the lease, and any other XADD
-- with '*' lands above. Run by store/fire.c with EVAL inside the burst's
-- MULTI (a NOSCRIPT there would surface only at EXEC).
--
-- KEYS[1] the stream; ARGV[1] n, ARGV[2] the batch's value.
-- Returns the entry id; or, should the reserved id be refused (the
-- stream's newest entry deleted by hand, its last id above it), appends the
-- events one entry each and returns their count: never a fired retry
-- without its event.
local stream, n, v = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local t = redis.call('TIME')
local ms, seq = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), 0
local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
if top then
  local tm, ts = string.match(top[1], '^(%d+)%-(%d+)$')
  if tonumber(tm) >= ms then ms, seq = tonumber(tm), tonumber(ts) + 1 end
end
local id = string.format('%d-%d', ms, seq + n - 1)
local r = redis.pcall('XADD', stream, id, 'b', v)
if type(r) == 'string' then return r end
local pos, k = string.find(v, '\n', 1, true) + 1, 0
while pos <= #v do
  local c = string.find(v, ':', pos, true)
  local len = tonumber(string.sub(v, pos, c - 1))
  redis.call('XADD', stream, '*', 'e', string.sub(v, c + 1, c + len))
  pos, k = c + 1 + len, k + 1
end
return k
