-- Shared prelude, prepended to admit.lua, settle.lua and spend.lua when they are loaded.
--
-- Reservations, per tenant: one HASH holds every live reservation and the reserved totals,
--   field "r:<request id>" = "<admit second> <cost nano> <scope> <scope> ..."
--   field "s:<scope>"      = reserved nano of that scope (deleted when it reaches 0)
-- and one ZSET holds each reservation's lease expiry (ms). The two keys are written and emptied
-- together and share one TTL, so they never disagree about which reservations exist.
--
-- Windows, per scope and kind (rpm, tpm): one HASH of 60 one-second buckets,
--   field "<unix second>" = requests or tokens counted in that second
--   field "n"  = the sum of the bucket fields present, kept up to date by every write
--   field "lo" = the oldest bucket second present
-- A bucket counts from its second until 60 s after it. Reading a window is one HMGET of n and lo;
-- only when lo has left the window is the hash scanned (stale buckets dropped, n and lo recomputed),
-- which for a busy key happens once a second. The scan also repairs any drift in n.
--
-- Money travels as strings: Lua numbers are doubles, and redis.call would print a large one as 1e+15.

local REAP_BATCH = 100 -- bounds one call's work after a replica died mid-burst; the rest go next call
local WINDOW_TTL = 120 -- outlives every bucket (60 s) of a key whose TTL is renewed each second

-- Release one reservation: reserved totals down by its cost, reservation and lease gone.
-- Returns the second its tokens were counted in, or nil if it no longer exists.
local function release(res, lease, id)
  local field = 'r:' .. id
  local payload = redis.call('HGET', res, field)
  if not payload then
    return nil
  end
  local second, cost, scopes = string.match(payload, '^(%d+) (%d+)(.*)$')
  if cost ~= '0' then
    for scope in string.gmatch(scopes, '%S+') do
      if redis.call('HINCRBY', res, 's:' .. scope, '-' .. cost) <= 0 then
        redis.call('HDEL', res, 's:' .. scope)
      end
    end
  end
  redis.call('HDEL', res, field)
  redis.call('ZREM', lease, id)
  return tonumber(second)
end

-- Release every reservation whose lease expired strictly before now_ms (a string).
local function reap(res, lease, now_ms)
  local expired = redis.call('ZRANGEBYSCORE', lease, '-inf', '(' .. now_ms, 'LIMIT', 0, REAP_BATCH)
  for _, id in ipairs(expired) do
    release(res, lease, id)
  end
end

-- Live buckets of a window as {second, amount}, oldest first (for retry-after; refusals only).
local function buckets(key, first_live)
  local flat = redis.call('HGETALL', key)
  local live = {}
  for i = 1, #flat, 2 do
    local second = tonumber(flat[i])
    if second and second >= first_live then
      live[#live + 1] = { second, tonumber(flat[i + 1]) }
    end
  end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  return live
end

-- Drop stale buckets and recompute n and lo. Returns used, lo (nil when the window is empty).
local function scan(key, first_live)
  local flat = redis.call('HGETALL', key)
  local used, lo, stale = 0, nil, {}
  for i = 1, #flat, 2 do
    local second = tonumber(flat[i])
    if second then -- not n or lo
      if second >= first_live then
        used = used + tonumber(flat[i + 1])
        if not lo or second < lo then
          lo = second
        end
      else
        stale[#stale + 1] = flat[i]
      end
    end
  end
  if not lo then
    redis.call('DEL', key)
    return 0, nil
  end
  if #stale > 0 then
    redis.call('HDEL', key, unpack(stale))
  end
  redis.call('HSET', key, 'n', used, 'lo', lo)
  return used, lo
end

-- Used amount and oldest live second (nil when empty) of a window whose oldest live second is first_live.
local function window(key, first_live)
  local v = redis.call('HMGET', key, 'n', 'lo')
  local lo = tonumber(v[2])
  if not lo then
    if v[1] then
      return scan(key, first_live) -- n without lo: repair
    end
    return 0, nil
  end
  if lo < first_live then
    return scan(key, first_live)
  end
  return tonumber(v[1]), lo
end

-- Add amount (> 0) to the bucket of `second`; lo is the window's oldest second as last read.
local function window_add(key, second, amount, lo)
  if redis.call('HINCRBY', key, second, amount) == amount then
    redis.call('EXPIRE', key, WINDOW_TTL) -- first write of this second renews the key
  end
  redis.call('HINCRBY', key, 'n', amount)
  if not lo or second < lo then
    redis.call('HSET', key, 'lo', second)
  end
end

