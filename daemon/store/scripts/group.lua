-- Puts a consumer group where the daemon will read it from next: the
-- daemon reads the groups with NOACK (no pending entry per event, nothing
-- per event in the AOF), so Redis's own position of a group says what was
-- read, not what was handled. What was handled is the group's mark in
-- <prefix>groupmarks: every entry up to it is acknowledged (the daemon
-- writes it with the acks). Run when the daemon (re)connects, per group.
--
-- KEYS[1]  the event stream, KEYS[2] the marks hash
-- ARGV[1]  the group
-- ARGV[2]  where to read from: '' after a start (from the mark: whatever
--          was read and not acked comes again), or the last entry this
--          daemon received (it holds everything before in memory)
-- Returns {created, position}: created 1 when the group did not exist
-- (made at the start of the stream, as a new group is).
local stream, marks, group, from = KEYS[1], KEYS[2], ARGV[1], ARGV[2]

-- The id just before id (entry ids are <ms>-<seq>).
local function before(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  if not ms then return '0-0' end
  if seq ~= '0' then return ms .. '-' .. string.format('%d', tonumber(seq) - 1) end
  if ms == '0' then return '0-0' end
  return string.format('%d', tonumber(ms) - 1) .. '-18446744073709551615'
end

-- Whether entry id a is before b (digit strings compared by length first).
local function less(a, b)
  local am, as = string.match(a, '^(%d+)%-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)%-(%d+)$')
  if not am or not bm then return false end
  if am ~= bm then
    if #am ~= #bm then return #am < #bm end
    return am < bm
  end
  if #as ~= #bs then return #as < #bs end
  return as < bs
end

local found, pending, last = false, 0, '0-0'
if redis.call('EXISTS', stream) == 1 then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == group then
      found, pending, last = true, tonumber(f['pending']) or 0, f['last-delivered-id']
    end
  end
end
if not found then
  redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  redis.call('HSET', marks, group, '0')
  return {1, '0'}
end

local mark = redis.call('HGET', marks, group)
if from == '' then from = mark or last end
if pending > 0 then
  -- Entries an earlier version of the daemon read without NOACK and that
  -- were never acked: from the oldest of them, and the group's pending
  -- list goes (nothing reads it any more).
  local oldest = before(redis.call('XPENDING', stream, group)[2])
  if less(oldest, from) then from = oldest end
  redis.call('XGROUP', 'DESTROY', stream, group)
  redis.call('XGROUP', 'CREATE', stream, group, from)
elseif from ~= last then
  redis.call('XGROUP', 'SETID', stream, group, from)
end
if not mark or less(from, mark) then
  redis.call('HSET', marks, group, from)
end
return {0, from}
