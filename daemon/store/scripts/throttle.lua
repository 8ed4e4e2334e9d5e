-- The domain throttles the instances share (shards): one hash, under a
-- hash tag of its own, so this script never touches two slots. Each
-- instance counts the throttling replies of its own shards and, when its
-- share of them passes the threshold, merges its decision here; every
-- instance reads the hash back about once a second and holds its own
-- retries for the domains others backed off.
--
-- KEYS[1]  the shared hash: domain -> "<class>,<until>,<since>" (epoch ms)
-- ARGV[1]  what to do:
--   'M' merge   ARGV[2] domain, ARGV[3] "<class>,<until>,<since>",
--               ARGV[4] now. The back-off in force is the max of the untils;
--               an episode keeps the class and since of the instance that
--               began it. Returns {result, value stored}: 2 began (nothing
--               in force: ours is stored, and its instance announces it),
--               1 lengthened (ours ends later: until raised), 0 covered.
--   'E' end     ARGV[2] domain, ARGV[3] since, ARGV[4] now: the domain
--               delivers again; the episode that began at since, if still
--               in force, ends now (until = now). Returns 1 ended, 0 not.
--   'P' poll    ARGV[2] now, ARGV[3] keep (ms): every field, flat; those
--               ended more than keep ago are deleted first (an early end
--               stays readable that long so every instance sees it).
-- Not fenced: a throttle is about a domain across every shard, no one
-- shard's epoch speaks for it (docs/architecture.md says why that is safe).
local key, what = KEYS[1], ARGV[1]

local function parse(v)
  if not v then return nil end
  local c, u, s = string.match(v, '^([^,]*),(%d+),(%d+)$')
  if not c then return nil end
  return c, tonumber(u), tonumber(s), u, s
end

if what == 'M' then
  local domain, mine, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
  local mc, mu, ms, mus = parse(mine)
  if not mc then return redis.error_reply('ERR throttle: bad value') end
  local old = redis.call('HGET', key, domain)
  local oc, ou, os, _, oss = parse(old)
  if not oc or ou <= now then
    redis.call('HSET', key, domain, mine)
    return {2, mine}
  end
  if mu > ou then
    local v = oc .. ',' .. mus .. ',' .. oss
    redis.call('HSET', key, domain, v)
    return {1, v}
  end
  return {0, old}
elseif what == 'E' then
  local domain, since, now = ARGV[2], ARGV[3], ARGV[4]
  local oc, ou, _, _, oss = parse(redis.call('HGET', key, domain))
  if not oc or oss ~= since or ou <= tonumber(now) then return 0 end
  redis.call('HSET', key, domain, oc .. ',' .. now .. ',' .. oss)
  return 1
elseif what == 'P' then
  local now, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
  local all = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #all, 2 do
    local c, u = parse(all[i + 1])
    if not c or u + keep < now then
      redis.call('HDEL', key, all[i])
    else
      out[#out + 1] = all[i]
      out[#out + 1] = all[i + 1]
    end
  end
  return out
end
return redis.error_reply('ERR throttle: unknown action')
