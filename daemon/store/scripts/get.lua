-- Reads what `get` shows, in one round trip: a message's record and its
-- recipient's streak and suppression, or a recipient's alone.
--
-- KEYS[1]  the message hash, KEYS[2] the recipient hash, KEYS[3] the
--          suppressed hash (see apply.lua for the values)
-- ARGV[1]  a message id, or '' to read the recipient ARGV[2] alone
-- Returns {message record, recipient record, suppression, address}: each
-- false (nil) when absent; with an id that is not known, all four absent.
local msgs, rcpts, supp = KEYS[1], KEYS[2], KEYS[3]
local rec, addr = false, ARGV[2]
if ARGV[1] ~= '' then
  rec = redis.call('HGET', msgs, ARGV[1])
  if not rec then return {false, false, false, false} end
  addr = ''
  local a = string.find(rec, '\n', 1, true)
  local b = a and string.find(rec, '\n', a + 1, true)
  if b then
    -- the who line: the recipient alone, or the message's JSON members
    local who = string.sub(rec, a + 1, b - 1)
    if string.byte(who, 1) ~= 34 then
      addr = who
    else
      local ok, o = pcall(cjson.decode, '{' .. who .. '}')
      if ok and type(o) == 'table' and type(o.rcpt) == 'string' then addr = o.rcpt end
    end
  end
end
if addr == '' then return {rec, false, false, false} end
addr = string.lower(addr)
return {rec, redis.call('HGET', rcpts, addr), redis.call('HGET', supp, addr), addr}
