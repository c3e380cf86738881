#!lua name=emp_limits
--[[
Per-customer limits of the API: each check-and-take is one call, so every
API process shares the counts and two requests never both take the last
place. Loaded with FUNCTION LOAD REPLACE by webapp.api.limits, which checks
emp_limits_version first.

Key layout (built by webapp/api/limits.py; C = "emp:limits:{<customer>}:",
so one customer's keys share a slot on Redis Cluster):

  C.."bucket"    HASH  tokens (float), at (ms of the last refill): the
                       submission token bucket; expires once full again
  C.."open"      ZSET  "<pool>|<job id>|<class signature>" -> ms admitted: jobs
                       admitted and not yet seen finished (the API prunes
                       finished ones with emp_limit_release)
  C.."classes"   HASH  class signature -> how many of C.."open" are in it
  C.."sockets"   ZSET  connection id -> ms its lease ends: open sockets

A limit of 0 means no limit. Times come from Redis TIME (one clock).
]]

-- Raise with every release that changes this file; a release only adds (see
-- capability_router/libraries.py: no process loads over a higher number).
local VERSION = '1'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The bucket's tokens now, without writing: (tokens, now).
local function refill(bucket, rate, burst)
  local now = now_ms()
  local state = redis.call('HMGET', bucket, 'tokens', 'at')
  local tokens = burst
  if state[1] then
    tokens = math.min(burst, tonumber(state[1]) + (now - tonumber(state[2])) * rate / 1000)
  end
  return tokens, now
end

-- Take ``member`` out of the open set; its class loses one job. 1 if it was there.
local function drop(open, classes, member)
  if redis.call('ZREM', open, member) == 0 then
    return 0
  end
  local class = string.match(member, '[^|]*$')
  if redis.call('HINCRBY', classes, class, -1) <= 0 then
    redis.call('HDEL', classes, class)
  end
  return 1
end

--[[ emp_limit_admit: take a submission token, a pending place and (for a class the
customer has no job in yet) a class place for one job.
KEYS[1] C.."bucket"   KEYS[2] C.."open"   KEYS[3] C.."classes"
ARGV[1] rate (tokens/s)  ARGV[2] burst  ARGV[3] most open jobs
ARGV[4] member "<pool>|<job id>|<class>"  ARGV[5] ms the open set is kept after its
last admission  ARGV[6] most classes  ARGV[7] the job's class signature
Returns {1} when admitted, else {0, limit ('rate'|'pending'|'classes'), retry after
ms}; a refusal writes nothing. ]]
local function admit(keys, args)
  local rate, burst, most = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local most_classes, class = tonumber(args[6]), args[7]
  local tokens, now = burst, now_ms()
  if rate > 0 then
    tokens, now = refill(keys[1], rate, burst)
    if tokens < 1 then
      return {0, 'rate', math.ceil((1 - tokens) * 1000 / rate)}
    end
  end
  if most > 0 and redis.call('ZCARD', keys[2]) >= most then
    return {0, 'pending', 1000}
  end
  if most_classes > 0 and redis.call('HEXISTS', keys[3], class) == 0
      and redis.call('HLEN', keys[3]) >= most_classes then
    return {0, 'classes', 1000}
  end
  if rate > 0 then
    redis.call('HSET', keys[1], 'tokens', tostring(tokens - 1), 'at', now)
    redis.call('PEXPIRE', keys[1], math.ceil(burst * 1000 / rate) + 1000)
  end
  if most > 0 or most_classes > 0 then
    redis.call('ZADD', keys[2], now, args[4])
    redis.call('HINCRBY', keys[3], class, 1)
    redis.call('PEXPIRE', keys[2], tonumber(args[5]))
    redis.call('PEXPIRE', keys[3], tonumber(args[5]))
  end
  return {1}
end

--[[ emp_limit_forget: undo an admission whose submit was refused after it.
KEYS[1] C.."bucket"   KEYS[2] C.."open"   KEYS[3] C.."classes"
ARGV[1] rate  ARGV[2] burst  ARGV[3] member
Returns 1. ]]
local function forget(keys, args)
  local rate, burst = tonumber(args[1]), tonumber(args[2])
  drop(keys[2], keys[3], args[3])
  if rate > 0 then
    local tokens, now = refill(keys[1], rate, burst)
    redis.call('HSET', keys[1], 'tokens', tostring(math.min(burst, tokens + 1)), 'at', now)
  end
  return 1
end

--[[ emp_limit_release: finished jobs leave the open set (and their classes).
KEYS[1] C.."open"   KEYS[2] C.."classes"   ARGV members
Returns how many were still there. ]]
local function release(keys, args)
  local dropped = 0
  for _, member in ipairs(args) do
    dropped = dropped + drop(keys[1], keys[2], member)
  end
  return dropped
end

--[[ emp_limit_open_socket: take (or renew) a socket place.
KEYS[1] C.."sockets"
ARGV[1] most sockets  ARGV[2] connection id  ARGV[3] lease ms
Returns {1} when taken (a known id is renewed even when full), else
{0, 'sockets', retry after ms}, writing nothing but expired places' removal. ]]
local function open_socket(keys, args)
  local most, ttl = tonumber(args[1]), tonumber(args[3])
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now)
  local known = redis.call('ZSCORE', keys[1], args[2])
  if not known and most > 0 and redis.call('ZCARD', keys[1]) >= most then
    return {0, 'sockets', 5000}
  end
  redis.call('ZADD', keys[1], now + ttl, args[2])
  redis.call('PEXPIRE', keys[1], ttl)
  return {1}
end

--[[ emp_limit_close_socket: give a socket place back.
KEYS[1] C.."sockets"   ARGV[1] connection id.  Returns 1. ]]
local function close_socket(keys, args)
  redis.call('ZREM', keys[1], args[1])
  return 1
end

redis.register_function{function_name = 'emp_limits_version',
                        callback = function() return VERSION end, flags = {'no-writes'}}
redis.register_function('emp_limit_admit', admit)
redis.register_function('emp_limit_forget', forget)
redis.register_function('emp_limit_release', release)
redis.register_function('emp_limit_open_socket', open_socket)
redis.register_function('emp_limit_close_socket', close_socket)
