-- One scope's spent (current period) and live reserved, after reaping expired leases.
-- KEYS: res, lease, spent   ARGV: now_ms, scope
reap(KEYS[1], KEYS[2], ARGV[1])
return { redis.call('GET', KEYS[3]) or '0', redis.call('HGET', KEYS[1], 's:' .. ARGV[2]) or '0' }
