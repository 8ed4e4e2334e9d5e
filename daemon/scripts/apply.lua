-- Applies a batch of message state changes and appends their events, in
-- one atomic step (the daemon acknowledges a report only after this ran).
--
-- KEYS[1]  the message hash: field = message id, value = record
-- KEYS[2]  the event stream
-- ARGV[1]  approximate maximum length of the stream
-- then, per message: id, mode, header, fragment, history item, n, event 1..n
--   mode "S": set the record to header \n fragment \n history, where the
--             history is the old one with the new item appended
--   mode "D": delete the record
--   mode "-": leave the record alone (events only)
-- Returns the number of messages applied.
local msgs, stream, maxlen = KEYS[1], KEYS[2], ARGV[1]
local i, applied = 2, 0
while i <= #ARGV do
  local id, mode = ARGV[i], ARGV[i + 1]
  if mode == 'S' then
    local item = ARGV[i + 4]
    local hist = '[' .. item .. ']'
    local old = redis.call('HGET', msgs, id)
    if old then
      local a = string.find(old, '\n', 1, true)
      local b = a and string.find(old, '\n', a + 1, true)
      if b then
        local oh = string.sub(old, b + 1)
        if #oh > 2 then hist = string.sub(oh, 1, -2) .. ',' .. item .. ']' end
      end
    end
    redis.call('HSET', msgs, id, ARGV[i + 2] .. '\n' .. ARGV[i + 3] .. '\n' .. hist)
  elseif mode == 'D' then
    redis.call('HDEL', msgs, id)
  end
  local n = tonumber(ARGV[i + 5])
  for k = 1, n do
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', ARGV[i + 5 + k])
  end
  i = i + 6 + n
  applied = applied + 1
end
return applied
