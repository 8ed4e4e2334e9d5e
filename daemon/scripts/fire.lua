-- Fires due retries: each pending record turns awaiting and its `retry`
-- event is appended to the stream, in one atomic step, so a retry is
-- emitted once even if the daemon dies right after.
--
-- KEYS[1]  the message hash (daemon/record.h says the format of a record),
--          KEYS[2] the event stream
-- ARGV[1]  now (epoch ms), ARGV[2] approximate stream maximum length
-- ARGV[3..] message ids
-- Returns, per id: the event id, 1 if it had already fired, 0 if unknown.
local msgs, stream, now, maxlen = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local rec = redis.call('HGET', msgs, id)
  if not rec then
    out[#out + 1] = 0
  elseif string.byte(rec, 1) ~= 80 then -- not 'P': fired before
    out[#out + 1] = 1
  else
    local a = string.find(rec, '\n', 1, true)
    local b = string.find(rec, '\n', a + 1, true)
    local due, attempt, class, first = string.match(string.sub(rec, 2, a - 1), '^(%-?%d+),(%d+),([%w_]+),(%d+)')
    -- due is relative to first (absolute in records of earlier versions)
    due = tonumber(due)
    if due < 1e12 then due = due + tonumber(first) end
    local who = string.sub(rec, a + 1, b - 1)
    if string.byte(who, 1) ~= 34 then who = '"id":"' .. id .. '","rcpt":"' .. who .. '"' end
    redis.call('HSET', msgs, id, 'A' .. string.sub(rec, 2))
    local body = '{"type":"retry","at":' .. now .. ',' .. who ..
      ',"class":"' .. class .. '","attempt":' .. attempt .. ',"due_at":' .. string.format('%d', due) .. '}'
    out[#out + 1] = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', body)
  end
end
return out
