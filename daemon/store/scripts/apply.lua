-- Applies a batch of state changes and appends their events, in one
-- atomic step (the daemon acknowledges a report only after this ran).
--
-- KEYS[1]  the message hash: field = message id, value = record
--          (daemon/record.h says the format)
-- KEYS[2]  the event stream
-- KEYS[3]  the recipient hash: field = address (lower case), value =
--          "<streak>,<first>,<last>,<soft>,<classes>,<campaign>": campaigns
--          in a row that ended in give-up, first and last soft bounce (ms),
--          soft bounces counted, the classes seen ("a|b"), and the campaign
--          that last counted ("c<name>", or "m<id>" for a message without
--          one); only classes that count toward the streak are recorded
-- KEYS[4]  the suppressed hash: field = address, value = "<reason>,<at>"
-- KEYS[5]  the domain hash: field = domain, value = "<class>,<until>,<since>"
-- KEYS[6]  the history hash: field = message id, value = its story,
--          "<outcome>,<reason>,<at>\n<record>" (the record as it ended)
-- KEYS[7]  the history's order: sorted set of ids by the time they ended
-- KEYS[8]  the learned hash: field = domain, value = its learned timing
--          (queue/learn.h, learn_encode)
-- ARGV[1]  approximate maximum length of the stream
-- ARGV[2]  campaigns in a row that suppress; ARGV[3] chronic span (ms);
-- ARGV[4]  soft bounces that, over the chronic span, suppress
-- ARGV[5]  f, the number of fresh records: first retries, in a class that
--          does not count toward the streak, raising no event, for ids
--          that have no record; then f pairs: id, record; then, when f > 0,
--          their recipients in lower case, each followed by "\n". A fresh
--          record is written as it is, unless its recipient is suppressed
-- then, per change: id, mode, header, who, history item, op, key,
-- argument, n, event 1..n
--   mode "S": set the record to header \n who \n history, where the
--             history is the old one with the new item appended
--   mode "D": delete the record
--   mode "-": leave the record alone (events only)
--   mode "H": delete the record, keeping its story in the history: header
--             is "<outcome>,<reason>,<at>,<cutoff>|<record header>" (the
--             record header for a message that has no record), item the
--             bounce that ended it (or ""); stories that ended before
--             cutoff are dropped, a few per change
--   op "B":   a bounce for address `key`; argument
--             "<action><c>,<now>,<code>,<attempt>,<class>,<enhanced>,<campaign>"
--             (action R, G or S as decided; c is "c" when the class counts
--             toward the streak). A suppressed address overrides the
--             decision: the message is dropped and its outcome event (the
--             first, when the action is not R) becomes a `suppress`
--   op "R":   delivered: forget the streak and the suppression of `key`,
--             or of the message's recipient when key is empty
--   op "U":   unsuppress `key` (and forget its streak)
--   op "T":   a domain throttle: domain `key` is backed off (argument)
--   op "E":   the throttle of domain `key` ended
--   op "L":   domain `key`'s learned timing is now `argument`
-- Returns one integer per fresh record, then per change: for "B" and a
-- fresh record 0 (as decided), 1 (suppressed now: chronic_soft), 2 (was
-- suppressed already); for "R" and "U" 1 when a suppression was lifted,
-- else 0; 0 otherwise.
-- Fencing (several reboundd on one Redis, store/lease.c): with a key
-- after the script's own 8, that key is the lease's epoch counter and the
-- last argument the epoch the caller holds; a caller whose epoch is not
-- the current one has lost the schedule to another instance and must not
-- write. Without the key (lease_ttl 0) nothing is checked.
-- Shards (store.c, a sharded layout): a batch of the changes of m shards
-- has after the 8 keys the m shards' epoch keys, then their message
-- hashes, and its arguments end with the m epochs held, a selector (one
-- byte per fresh record, then per change: 64 + the change's shard among the
-- m) and "M<m>". Every shard's epoch is checked; KEYS[1] is then unused.
-- Shards on several Redis Cluster primaries (store.c, the shards apart):
-- one call per primary carries the changes of m shards of that primary,
-- each shard with keys of its own slot. KEYS are the first shard's 8 and
-- its epoch key (the slot the call is routed by); the arguments end with,
-- per shard, its epoch key, the epoch held, its message hash, stream,
-- recipient hash, suppressed hash, history and history order (keys of
-- other slots of the same node, which a script may reach there), then the
-- selector and "P<m>". Every shard's epoch is checked.
local shard_msgs, sel, ngen = nil, nil, 0
local spread = nil
if #KEYS == 9 and string.byte(ARGV[#ARGV], 1) == 80 then
  local m = tonumber(string.sub(table.remove(ARGV), 2))
  sel = table.remove(ARGV)
  spread = {}
  for j = m, 1, -1 do
    local t = {}
    t.hist_at, t.hist, t.supp = table.remove(ARGV), table.remove(ARGV), table.remove(ARGV)
    t.rcpts, t.stream, t.msgs = table.remove(ARGV), table.remove(ARGV), table.remove(ARGV)
    local epoch, ekey = table.remove(ARGV), table.remove(ARGV)
    if redis.call('GET', ekey) ~= epoch then
      return redis.error_reply('FENCED the lease on a shard moved to another instance')
    end
    t.any = redis.call('EXISTS', t.supp) == 1
    spread[j] = t
  end
elseif #KEYS > 8 and string.byte(ARGV[#ARGV], 1) == 77 then
  local m = tonumber(string.sub(table.remove(ARGV), 2))
  sel = table.remove(ARGV)
  -- one MGET for every epoch: on one Redis any keys may go together
  local held = redis.call('MGET', unpack(KEYS, 9, 8 + m))
  for j = m, 1, -1 do
    if held[j] ~= table.remove(ARGV) then
      return redis.error_reply('FENCED the lease on a shard moved to another instance')
    end
  end
  shard_msgs = {}
  for j = 1, m do shard_msgs[j] = KEYS[8 + m + j] end
elseif #KEYS > 8 and redis.call('GET', KEYS[9]) ~= table.remove(ARGV) then
  return redis.error_reply('FENCED the lease on the schedule moved to another instance')
end
local msgs, stream, rcpts, supp, doms = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local hist, hist_at, learned = KEYS[6], KEYS[7], KEYS[8]
local maxlen = ARGV[1]
local need, span, chronic_n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
-- Most reports are retries in classes that do not count, for addresses
-- that are not suppressed: they cost one lookup, or none while nothing is
-- suppressed at all.
local any_suppressed = redis.call('EXISTS', supp) == 1

local function emit(body)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', body)
end

-- A message's members for events, from the who line of its record: the
-- members themselves, or the recipient alone of a plain id.
local function members(id, who)
  if string.byte(who, 1) == 34 then return who end
  return '"id":"' .. id .. '","rcpt":"' .. who .. '"'
end

-- The recipient named in a message's record, or ''.
local function rcpt_of(id)
  local rec = redis.call('HGET', msgs, id)
  if not rec then return '' end
  local a = string.find(rec, '\n', 1, true)
  local b = a and string.find(rec, '\n', a + 1, true)
  if not b then return '' end
  local who = string.sub(rec, a + 1, b - 1)
  if string.byte(who, 1) ~= 34 then return who end
  local ok, o = pcall(cjson.decode, '{' .. who .. '}')
  if ok and type(o) == 'table' and type(o.rcpt) == 'string' then return o.rcpt end
  return ''
end

-- A history whose times are relative to ofirst (or, written by an earlier
-- version, a JSON array with epoch times), made relative to nfirst.
local function rebase(hist, ofirst, nfirst)
  local parts = {}
  if string.byte(hist, 1) == 91 then
    local ok, arr = pcall(cjson.decode, hist)
    if ok and type(arr) == 'table' then
      for _, it in ipairs(arr) do
        parts[#parts + 1] = string.format('%d,%d,%s,%s', it[1] - nfirst, it[2], it[3] or '', it[4] or '')
      end
    end
  else
    for at, rest in string.gmatch(hist, '(%-?%d+)(,[^;]*)') do
      parts[#parts + 1] = string.format('%d', tonumber(at) + ofirst - nfirst) .. rest
    end
  end
  return table.concat(parts, ';')
end

-- A suppress event in the positional form (proto/event.h, event_compact):
-- S<at, base 36>,<attempt>,<code>,<enhanced>,<reason letter><class>
-- then the message as its record holds it (an id and recipient on two
-- lines, or the members JSON). The daemon turns it into the event's JSON.
local REASON_LETTER = { suppressed = 's', chronic_soft = 'c' }
local function suppress_body(at, id, who, class, attempt, code, enh, reason)
  local digits, u, t = '0123456789abcdefghijklmnopqrstuvwxyz', tonumber(at), {}
  repeat
    local d = u % 36
    table.insert(t, 1, string.sub(digits, d + 1, d + 1))
    u = (u - d) / 36
  until u == 0
  if who == '' then
    who = members(id, who)
  elseif string.byte(who, 1) ~= 34 then
    who = id .. '\n' .. who
  end
  local letter = reason == class and '=' or REASON_LETTER[reason]
  return 'S' .. table.concat(t) .. ',' .. attempt .. ',' .. code .. ',' .. enh .. ',' .. letter .. class .. '\n' .. who
end

-- The suppress event of a fresh record whose recipient is suppressed.
local function suppressed_fresh(id, rec)
  local class, first, who, code, enh =
    string.match(rec, '^P%-?%d+,%d+,([%w_]+),(%d+)\n([^\n]*)\n%-?%d+,(%d+),([%d.]*),')
  if not class then return end
  emit(suppress_body(first, id, who, class, 0, code, enh, 'suppressed'))
end

-- Fresh records: one HSET for all, unless a recipient is suppressed.
local nfresh = tonumber(ARGV[5])
local i = 6
if nfresh > 0 and spread then
  -- grouped by shard (store.c): one HSET per run, unless its shard has
  -- suppressed addresses
  local last = 5 + 2 * nfresh
  local addrs = nil
  local k = 1
  while k <= nfresh do
    local j = string.byte(sel, k)
    local e = k
    while e < nfresh and string.byte(sel, e + 1) == j do e = e + 1 end
    local t = spread[j - 64]
    if not t.any then
      local stop = 5 + 2 * e
      for a = 4 + 2 * k, stop, 4000 do
        redis.call('HSET', t.msgs, unpack(ARGV, a, math.min(a + 3999, stop)))
      end
      for q = k, e do out[q] = 0 end
    else
      if not addrs then
        addrs = {}
        for a in string.gmatch(ARGV[last + 1], '([^\n]*)\n') do addrs[#addrs + 1] = a end
      end
      stream = t.stream
      for q = k, e do
        local id, rec = ARGV[4 + 2 * q], ARGV[5 + 2 * q]
        if addrs[q] and redis.call('HEXISTS', t.supp, addrs[q]) == 1 then
          suppressed_fresh(id, rec)
          out[q] = 2
        else
          redis.call('HSET', t.msgs, id, rec)
          out[q] = 0
        end
      end
    end
    k = e + 1
  end
  i = last + 2
elseif nfresh > 0 then
  local last = 5 + 2 * nfresh
  local blocked = nil
  if any_suppressed then
    local addrs = {}
    for a in string.gmatch(ARGV[last + 1], '([^\n]*)\n') do addrs[#addrs + 1] = a end
    for a = 1, #addrs, 4000 do
      local got = redis.call('HMGET', supp, unpack(addrs, a, math.min(a + 3999, #addrs)))
      for k = 1, #got do
        if got[k] then
          blocked = blocked or {}
          blocked[a + k - 1] = true
        end
      end
    end
  end
  if not blocked and shard_msgs then
    -- the pairs come grouped by shard (store.c): one HSET per run
    local k = 1
    while k <= nfresh do
      local c = string.sub(sel, k, k)
      local j = string.byte(c)
      -- the run ends before the first other byte (escaped unless a letter)
      local other = string.find(sel, string.find(c, '%w') and ('[^' .. c .. ']') or ('[^%' .. c .. ']'), k + 1)
      local e = other and other - 1 or nfresh
      if e > nfresh then e = nfresh end
      local stop = 5 + 2 * e
      for a = 4 + 2 * k, stop, 4000 do
        redis.call('HSET', shard_msgs[j - 64], unpack(ARGV, a, math.min(a + 3999, stop)))
      end
      k = e + 1
    end
    for k = 1, nfresh do out[k] = 0 end
  elseif not blocked then
    for a = 6, last, 4000 do
      redis.call('HSET', msgs, unpack(ARGV, a, math.min(a + 3999, last)))
    end
    for k = 1, nfresh do out[k] = 0 end
  else
    for k = 1, nfresh do
      local id, rec = ARGV[4 + 2 * k], ARGV[5 + 2 * k]
      if shard_msgs then msgs = shard_msgs[string.byte(sel, k) - 64] end
      if blocked[k] then
        suppressed_fresh(id, rec)
        out[k] = 2
      else
        redis.call('HSET', msgs, id, rec)
        out[k] = 0
      end
    end
  end
  i = last + 2
end

-- Counts a soft bounce toward the address's streak; returns true when the
-- address is to be suppressed now.
local function count_soft(addr, action, now, class, campaign)
  local streak, first, last, soft, classes, lastc = 0, now, now, 0, '', ''
  local rec = redis.call('HGET', rcpts, addr)
  if rec then
    local s, f, l, n, c, lc = string.match(rec, '^(%d+),(%d+),(%d+),(%d+),([^,]*),(.*)$')
    if s then
      streak, first, last, soft, classes, lastc = tonumber(s), tonumber(f), tonumber(l), tonumber(n), c, lc
    end
  end
  soft = soft + 1
  if now > last then last = now end
  if not string.find('|' .. classes .. '|', '|' .. class .. '|', 1, true) then
    classes = classes == '' and class or classes .. '|' .. class
  end
  -- a campaign ends for the address with a give-up; two messages of one
  -- campaign count once
  if action == 'G' and campaign ~= lastc then
    streak = streak + 1
    lastc = campaign
  end
  redis.call('HSET', rcpts, addr, string.format('%d,%d,%d,%d,', streak, first, last, soft) .. classes .. ',' .. lastc)
  return streak >= need or (last - first >= span and soft >= chronic_n)
end

-- Mode "H": the message ends; its record, with the bounce that ended it,
-- becomes its story, kept until cutoff passes.
local function keep_story(id, header, who, item, outcome)
  local line, rheader = string.match(header, '^([^|]*)|(.*)$')
  if not line then return redis.call('HDEL', msgs, id) end
  local o, at, cutoff = string.match(line, '^(.-),(%d+),(%-?%d+)$')
  outcome = outcome or o
  local rec = redis.call('HGET', msgs, id)
  if rec then
    if item ~= '' then rec = rec .. ';' .. item end
  elseif rheader ~= '' then
    rec = rheader .. '\n' .. who .. '\n' .. item
  end
  redis.call('HDEL', msgs, id)
  if rec then
    redis.call('HSET', hist, id, outcome .. ',' .. at .. '\n' .. rec)
    redis.call('ZADD', hist_at, at, id)
  end
  local old = redis.call('ZRANGEBYSCORE', hist_at, '-inf', '(' .. cutoff, 'LIMIT', 0, 4)
  for _, oid in ipairs(old) do
    redis.call('HDEL', hist, oid)
    redis.call('ZREM', hist_at, oid)
  end
end

local cur = nil
while i <= #ARGV do
  if shard_msgs then
    ngen = ngen + 1
    msgs = shard_msgs[string.byte(sel, nfresh + ngen) - 64]
  elseif spread then
    ngen = ngen + 1
    if cur then cur.any = any_suppressed end
    cur = spread[string.byte(sel, nfresh + ngen) - 64]
    msgs, stream, rcpts, supp, hist, hist_at = cur.msgs, cur.stream, cur.rcpts, cur.supp, cur.hist, cur.hist_at
    any_suppressed = cur.any
  end
  local id, mode, header, who, item = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local op, key, arg = ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  local n = tonumber(ARGV[i + 8])
  local result, skip_first, extra = 0, false, nil

  if op == 'B' then
    local addr, was = nil, false
    if any_suppressed then
      addr = string.lower(key)
      was = redis.call('HEXISTS', supp, addr) == 1
    end
    -- "R-": a retry in a class that does not count; nothing more to do
    -- unless the address is suppressed
    if was or string.sub(arg, 1, 2) ~= 'R-' then
      addr = addr or string.lower(key)
      local action, counting, now, code, attempt, class, enh, campaign =
        string.match(arg, '^(.)(.),(%d+),(%d+),(%d+),([%w_]+),([%d.]*),(.*)$')
      local reason
      if was then
        result, reason = 2, 'suppressed'
      elseif action == 'S' then
        redis.call('HSET', supp, addr, 'hard_invalid,' .. now)
        any_suppressed = true
      elseif counting == 'c' and count_soft(addr, action, tonumber(now), class, campaign) then
        redis.call('HSET', supp, addr, 'chronic_soft,' .. now)
        any_suppressed = true
        result, reason = 1, 'chronic_soft'
      end
      if result ~= 0 then
        if mode == 'H' then
          keep_story(id, header, who, item, 'suppress,' .. reason)
        elseif mode ~= '-' then
          redis.call('HDEL', msgs, id)
        end
        mode = '-'
        skip_first = action ~= 'R'
        extra = suppress_body(now, id, who, class, attempt, code, enh, reason)
      end
    end
  elseif op == 'R' or op == 'U' then
    local addr = key
    if addr == '' and id ~= '' then addr = rcpt_of(id) end
    if addr ~= '' then
      addr = string.lower(addr)
      redis.call('HDEL', rcpts, addr)
      result = redis.call('HDEL', supp, addr)
    end
  elseif op == 'T' then
    redis.call('HSET', doms, key, arg)
  elseif op == 'E' then
    redis.call('HDEL', doms, key)
  elseif op == 'L' then
    redis.call('HSET', learned, key, arg)
  end

  if mode == 'S' then
    local hist = item
    local old = redis.call('HGET', msgs, id)
    if old then
      local a = string.find(old, '\n', 1, true)
      local b = a and string.find(old, '\n', a + 1, true)
      if b and b < #old then
        local oh = string.sub(old, b + 1)
        local ofirst = string.match(string.sub(old, 1, a - 1), ',(%d+)$')
        local nfirst = string.match(header, ',(%d+)$')
        if ofirst ~= nfirst or string.byte(oh, 1) == 91 then
          oh = rebase(oh, tonumber(ofirst), tonumber(nfirst))
        end
        if oh ~= '' then hist = oh .. ';' .. item end
      end
    end
    redis.call('HSET', msgs, id, header .. '\n' .. who .. '\n' .. hist)
  elseif mode == 'D' then
    redis.call('HDEL', msgs, id)
  elseif mode == 'H' then
    keep_story(id, header, who, item, nil)
  end
  for k = 1, n do
    if not (skip_first and k == 1) then emit(ARGV[i + 8 + k]) end
  end
  if extra then emit(extra) end
  out[#out + 1] = result
  i = i + 9 + n
end
return out
