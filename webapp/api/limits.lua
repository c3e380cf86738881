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
  C.."open"      ZSET  "<pool>|<job id>" -> ms admitted: jobs admitted and not
                       yet seen finished (the API prunes finished ones)
  C.."sockets"   ZSET  connection id -> ms its lease ends: open sockets

A limit of 0 means no limit. Times come from Redis TIME (one clock).
]]

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

--[[ emp_limit_admit: take a submission token and a pending place for one job.
KEYS[1] C.."bucket"   KEYS[2] C.."open"
ARGV[1] rate (tokens/s)  ARGV[2] burst  ARGV[3] most open jobs  ARGV[4] member
ARGV[5] ms the open set is kept after its last admission
Returns {1} when admitted, else {0, limit ('rate'|'pending'), retry after ms};
a refusal writes nothing. ]]
local function admit(keys, args)
  local rate, burst, most = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
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
  if rate > 0 then
    redis.call('HSET', keys[1], 'tokens', tostring(tokens - 1), 'at', now)
    redis.call('PEXPIRE', keys[1], math.ceil(burst * 1000 / rate) + 1000)
  end
  if most > 0 then
    redis.call('ZADD', keys[2], now, args[4])
    redis.call('PEXPIRE', keys[2], tonumber(args[5]))
  end
  return {1}
end

--[[ emp_limit_forget: undo an admission whose submit was refused after it.
KEYS[1] C.."bucket"   KEYS[2] C.."open"
ARGV[1] rate  ARGV[2] burst  ARGV[3] member
Returns 1. ]]
local function forget(keys, args)
  local rate, burst = tonumber(args[1]), tonumber(args[2])
  if redis.call('ZREM', keys[2], args[3]) == 1 and rate > 0 then
    local tokens, now = refill(keys[1], rate, burst)
    redis.call('HSET', keys[1], 'tokens', tostring(math.min(burst, tokens + 1)), 'at', now)
  end
  return 1
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
redis.register_function('emp_limit_open_socket', open_socket)
redis.register_function('emp_limit_close_socket', close_socket)
