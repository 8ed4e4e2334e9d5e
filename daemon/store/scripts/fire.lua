-- Fires due retries: each pending record turns awaiting and its `retry`
-- event is appended to the stream, in one atomic step, so a retry is
-- emitted once even if the daemon dies right after. The same call then
-- reads the new entries of the stream for the consumer groups the daemon
-- names (those caught up with the stream), which spares each of them a
-- read of its own: one round trip from due to delivered. The daemon uses
-- it for small batches, where that round trip is what counts; a burst goes
-- as a transaction instead, which costs Redis less per retry
-- (daemon/firing.c).
--
-- KEYS[1]  the message hash (daemon/record.h says the format of a record),
--          KEYS[2] the event stream
-- ARGV[1]  now (epoch ms), ARGV[2] approximate stream maximum length,
-- ARGV[3]  the consumer that reads for the groups, ARGV[4] how many
--          entries at most each group reads (COUNT),
-- ARGV[5]  g, the number of groups, ARGV[6..5+g] their names,
-- then the message ids (distinct).
-- Returns {fired, read_1, ..., read_g}:
--   fired   two elements per id: the event id and the event body; 1 and
--           '' if it had fired before; 0 and '' if the id is unknown. The
--           bodies are left out ('') when no group is named.
--   read_j  the entries group j read, in stream order: an event of this
--           call as the integer i (its id was the i-th), any other entry
--           as its id then its body ('' when trimmed); or the error of
--           the read (the fires stand).
-- Fencing (several reboundd on one Redis, store/lease.c): with a key
-- after the script's own 2, that key is the lease's epoch counter and the
-- last argument the epoch the caller holds; a caller whose epoch is not
-- the current one has lost the schedule to another instance and must not
-- write. Without the key (lease_ttl 0) nothing is checked.
if #KEYS > 2 and redis.call('GET', KEYS[3]) ~= table.remove(ARGV) then
  return redis.error_reply('FENCED the lease on the schedule moved to another instance')
end
local msgs, stream, now, maxlen = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local consumer, count, ngroups = ARGV[3], ARGV[4], tonumber(ARGV[5])
local first = 6 + ngroups
-- redis.call takes its arguments from Lua's stack: keep each call well
-- under its limit (LUAI_MAXCSTACK, 8000).
local CHUNK = 1000

-- now in base 36, as the compact form writes at (integers are exact in
-- Lua's doubles up to 2^53).
local now36
do
  local digits, u, t = '0123456789abcdefghijklmnopqrstuvwxyz', tonumber(now), {}
  repeat
    local d = u % 36
    table.insert(t, 1, string.sub(digits, d + 1, d + 1))
    u = (u - d) / 36
  until u == 0
  now36 = table.concat(t)
end

-- The one place that knows the record's format: returns the record of id
-- turned from pending to awaiting and the body of its retry event, or nil
-- when the record is not pending (it fired before).
local function fire_record(id, rec)
  if string.byte(rec, 1) ~= 80 then -- not 'P'
    return nil
  end
  local a = string.find(rec, '\n', 1, true)
  local b = string.find(rec, '\n', a + 1, true)
  local due, attempt, class, first = string.match(rec, '^P(%-?%d+),(%d+),([%w_]+),(%d+)')
  -- due is relative to first (absolute in records of earlier versions)
  due = tonumber(due)
  if due < 1e12 then due = due + tonumber(first) end
  local who = string.sub(rec, a + 1, b - 1)
  -- The compact body (proto/event.h, event_retry_compact): the daemon
  -- turns it into the event's JSON when a subscriber reads it.
  if string.byte(who, 1) ~= 34 then who = id .. '\n' .. who end
  return 'A' .. string.sub(rec, 2), 'R' .. now36 .. ',' .. string.format('%d', tonumber(now) - due) .. ',' ..
    attempt .. ',' .. class .. '\n' .. who
end

local recs = {}
for s = first, #ARGV, CHUNK do
  local part = redis.call('HMGET', msgs, unpack(ARGV, s, math.min(s + CHUNK - 1, #ARGV)))
  for k = 1, #part do
    recs[#recs + 1] = part[k]
  end
end

-- Events are appended before the records change: should a write fail
-- half-way, a retry is emitted twice rather than never.
local out, sets, own, own_at = {}, {}, {}, {}
for i = 1, #recs do
  local rec = recs[i]
  if not rec then
    out[2 * i - 1], out[2 * i] = 0, ''
  else
    local awaiting, body = fire_record(ARGV[first + i - 1], rec)
    if not awaiting then
      out[2 * i - 1], out[2 * i] = 1, ''
    else
      local eid = redis.call('XADD', stream, '*', 'e', body)
      out[2 * i - 1], out[2 * i] = eid, ngroups > 0 and body or ''
      sets[#sets + 1] = ARGV[first + i - 1]
      sets[#sets + 1] = awaiting
      own[#own + 1] = eid
      own_at[#own_at + 1] = i
    end
  end
end
for s = 1, #sets, 2 * CHUNK do
  redis.call('HSET', msgs, unpack(sets, s, math.min(s + 2 * CHUNK - 1, #sets)))
end
-- Trimmed once per call rather than on every append.
if #own > 0 then
  redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
end

-- NOACK: the groups keep no pending list; the daemon holds what it read
-- and writes each group's mark with the acks (scripts/group.lua).
local res = {out}
for j = 1, ngroups do
  local r = redis.pcall('XREADGROUP', 'GROUP', ARGV[5 + j], consumer, 'COUNT', count, 'NOACK', 'STREAMS', stream, '>')
  local read = {}
  if type(r) == 'table' and r.err then
    read = r
  elseif r then
    -- This call's entries are the newest of the stream and come last, in
    -- the order they were appended.
    local entries, p = r[1][2], 1
    for k = 1, #entries do
      local eid, fields = entries[k][1], entries[k][2]
      if eid == own[p] then
        read[#read + 1] = own_at[p]
        p = p + 1
      else
        read[#read + 1] = eid
        read[#read + 1] = fields and fields[2] or ''
      end
    end
  end
  res[#res + 1] = read
end
return res
