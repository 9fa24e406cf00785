-- Run-time API keys (admin path). KEYS: records (sha256 -> JSON), ids (key id -> sha256), version.
-- ARGV: 'put', sha256, key id, record JSON  |  'delete', key id
-- Every change bumps version, so replicas poll one small counter instead of the whole hash.
local records, ids, version = KEYS[1], KEYS[2], KEYS[3]

if ARGV[1] == 'put' then
  local sha, id = ARGV[2], ARGV[3]
  -- re-issuing a key id replaces its old secret
  local old_sha = redis.call('HGET', ids, id)
  if old_sha and old_sha ~= sha then
    redis.call('HDEL', records, old_sha)
  end
  -- a hash already held by another id moves to this one
  local previous = redis.call('HGET', records, sha)
  if previous then
    local old_id = cjson.decode(previous)['id']
    if old_id and old_id ~= id then
      redis.call('HDEL', ids, old_id)
    end
  end
  redis.call('HSET', records, sha, ARGV[4])
  redis.call('HSET', ids, id, sha)
  return redis.call('INCR', version)
end

local sha = redis.call('HGET', ids, ARGV[2])
if not sha then
  return 0
end
redis.call('HDEL', records, sha)
redis.call('HDEL', ids, ARGV[2])
redis.call('INCR', version)
return 1
