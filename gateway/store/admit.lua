-- Admission: check every scope's RPM, TPM and budget; record all of them, or nothing.
-- KEYS: res, lease, done (this request's settled marker), then per scope: rpm window, tpm window,
--       spent of the current period
-- ARGV: now_ms, lease_expiry_ms, lease_ttl_s (lease + margin), request_id, tokens, cost_nano,
--       then per scope: name, rpm, tpm, budget_nano  (-1 = no such limit)
-- Returns {1, 0, 0, 0, states...} admitted, or {0, kind (1 rpm, 2 tpm, 3 budget), scope index, retry_ms,
-- states...} refused; for a budget refusal the 4th integer is instead what the scope's budget has left
-- (budget - spent - reserved, nano-USD; <= 0 when it is spent), so the client can be told why.
-- states are 4 integers per scope: rpm_used, tpm_used, rpm_reset_ms, tpm_reset_ms.
-- Returns {0, 4} when the request was already settled or released (its marker exists): an admission
-- that arrives late (sent on a stalled connection, run after its caller gave up and released it)
-- records nothing, so it cannot hold budget nobody will ever release.

if redis.call('EXISTS', KEYS[3]) == 1 then
  return { 0, 4 }
end

local res, lease = KEYS[1], KEYS[2]
local now_ms = ARGV[1]
local now = tonumber(now_ms)
local now_s = math.floor(now / 1000)
local first_live = now_s - 59 -- a bucket counts from its second until 60 s after it
local tokens, cost = tonumber(ARGV[5]), tonumber(ARGV[6])
local n = (#ARGV - 6) / 4

-- Milliseconds until enough of the oldest buckets leave the window for `need` more to fit under `limit`.
local function retry_ms(key, used, need, limit)
  if need > limit then
    return 60000 -- can never fit; a full window is the honest lower bound
  end
  for _, bucket in ipairs(buckets(key, first_live)) do
    used = used - bucket[2]
    if used + need <= limit then
      return (bucket[1] + 60) * 1000 - now
    end
  end
  return 60000
end

local function reset_ms(oldest)
  if not oldest then
    return 0
  end
  return (oldest + 60) * 1000 - now
end

reap(res, lease, now_ms)

-- Check everything before writing anything.
local used = {}
local refused_kind, refused_at, retry, budget_at, budget_left = 0, 0, 0, 0, 0
for i = 1, n do
  local a, k = 6 + (i - 1) * 4, 3 + (i - 1) * 3
  local rpm, tpm, budget = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local s = { 0, 0, nil, nil }
  if rpm >= 0 then
    s[1], s[3] = window(KEYS[k + 1], first_live)
    if s[1] + 1 > rpm then
      local wait = retry_ms(KEYS[k + 1], s[1], 1, rpm)
      if wait > retry then
        refused_kind, refused_at, retry = 1, i, wait
      end
    end
  end
  if tpm >= 0 then
    s[2], s[4] = window(KEYS[k + 2], first_live)
    if s[2] + tokens > tpm then
      local wait = retry_ms(KEYS[k + 2], s[2], tokens, tpm)
      if wait > retry then
        refused_kind, refused_at, retry = 2, i, wait
      end
    end
  end
  if budget >= 0 and budget_at == 0 then
    local spent = tonumber(redis.call('GET', KEYS[k + 3]) or '0')
    local reserved = tonumber(redis.call('HGET', res, 's:' .. ARGV[a + 1]) or '0')
    if spent + reserved + cost > budget then
      budget_at, budget_left = i, budget - spent - reserved
    end
  end
  used[i] = s
end

-- A spent budget wins over a rate limit: retrying later cannot help it, so the client should not.
if budget_at > 0 then
  refused_kind, refused_at, retry = 3, budget_at, budget_left
end
if refused_kind > 0 then
  local out = { 0, refused_kind, refused_at, retry }
  for i = 1, n do
    local s = used[i]
    out[#out + 1], out[#out + 2] = s[1], s[2]
    out[#out + 1], out[#out + 2] = reset_ms(s[3]), reset_ms(s[4])
  end
  return out
end

-- Admitted: record the request, its tokens and its reservation in every scope.
local id = ARGV[4]
local scopes = {}
for i = 1, n do
  scopes[i] = ARGV[6 + (i - 1) * 4 + 1]
end
local field, payload = 'r:' .. id, now_s .. ' ' .. ARGV[6] .. ' ' .. table.concat(scopes, ' ')
if redis.call('HSETNX', res, field, payload) == 0 then
  -- a reused request id: release the old reservation first, so it is not counted twice
  release(res, lease, id)
  redis.call('HSET', res, field, payload)
end
redis.call('ZADD', lease, ARGV[2], id)

local out = { 1, 0, 0, 0 }
for i = 1, n do
  local a, k = 6 + (i - 1) * 4, 3 + (i - 1) * 3
  local s = used[i]
  if cost > 0 then
    redis.call('HINCRBY', res, 's:' .. scopes[i], ARGV[6])
  end
  if tonumber(ARGV[a + 2]) >= 0 then
    window_add(KEYS[k + 1], now_s, 1, s[3])
    s[1], s[3] = s[1] + 1, math.min(s[3] or now_s, now_s)
  end
  if tonumber(ARGV[a + 3]) >= 0 then
    if tokens > 0 then
      window_add(KEYS[k + 2], now_s, tokens, s[4])
      s[4] = math.min(s[4] or now_s, now_s)
    end
    s[2] = s[2] + tokens
  end
  out[#out + 1], out[#out + 2] = s[1], s[2]
  out[#out + 1], out[#out + 2] = reset_ms(s[3]), reset_ms(s[4])
end

-- res and lease must outlive the longest live lease (ARGV[3] s from now). They are created and
-- emptied together, so the TTL of one tells for both; refresh with a minute to spare, so that this
-- happens about once a minute rather than on every admission, and never shorten it.
local ttl = tonumber(ARGV[3])
if redis.call('TTL', lease) < ttl then
  redis.call('EXPIRE', res, ttl + 60)
  redis.call('EXPIRE', lease, ttl + 60)
end
return out
