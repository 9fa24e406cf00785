-- Settlement: release the reservation (once), add the actual cost, correct the TPM windows, and leave
-- a marker, so that running it again changes nothing. A release (an admission refused or lost
-- after it may have run) is a settlement of cost 0 and no tokens.
-- KEYS: res, lease, done (this request's marker), then per scope: tpm window, spent of the current period
-- ARGV: now_ms, request_id, token_delta (actual - reserved), cost_nano, done_ttl_s,
--       then per scope: name, has_tpm (1/0), spent_ttl_s (0 = keep forever)
-- Returns each scope's spent after this request (nano), in order; for a request already settled,
-- each scope's spent as it is, and nothing changes.

local res, lease = KEYS[1], KEYS[2]
local n = (#ARGV - 5) / 3

if redis.call('EXISTS', KEYS[3]) == 1 then
  local out = {}
  for i = 1, n do
    out[i] = tonumber(redis.call('GET', KEYS[3 + (i - 1) * 2 + 2]) or '0')
  end
  return out
end
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])

local now_s = math.floor(tonumber(ARGV[1]) / 1000)
local first_live = now_s - 59
local delta = tonumber(ARGV[3])

local admitted_at = release(res, lease, ARGV[2])

-- Give back over-reserved tokens in the bucket that holds the reservation, so the window never dips
-- below what was really used. Once that bucket has left the window there is nothing to give back.
local function give_back(key, amount)
  if not admitted_at or admitted_at < first_live then
    return
  end
  local held = tonumber(redis.call('HGET', key, admitted_at))
  if not held then
    return
  end
  local given = math.min(amount, held)
  redis.call('HINCRBY', key, 'n', -given)
  if given < held then
    redis.call('HINCRBY', key, admitted_at, -given)
    return
  end
  redis.call('HDEL', key, admitted_at)
  if tonumber(redis.call('HGET', key, 'lo')) == admitted_at then
    scan(key, first_live) -- the oldest bucket is gone: find the next
  end
end

local out = {}
for i = 1, n do
  local a, k = 5 + (i - 1) * 3, 3 + (i - 1) * 2
  if ARGV[a + 2] == '1' then
    local key = KEYS[k + 1]
    if delta > 0 then
      -- the extra tokens were used now
      window_add(key, now_s, delta, tonumber(redis.call('HGET', key, 'lo')))
    elseif delta < 0 then
      give_back(key, -delta)
    end
  end
  out[i] = redis.call('INCRBY', KEYS[k + 2], ARGV[4])
  if ARGV[a + 3] ~= '0' then
    redis.call('EXPIRE', KEYS[k + 2], ARGV[a + 3])
  end
end
return out
