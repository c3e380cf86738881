#!lua name=emp_webhooks
--[[
Webhook delivery state: every change is one call here, so a crash never
leaves half a change and two service instances never send the same delivery
at once (a dispatcher holds a hook's lease while it sends).

Loaded with FUNCTION LOAD REPLACE by webapp.webhooks.library, which checks
emp_wh_version first so every process can load it idempotently.

Key layout (built by webapp/webhooks/keys.py; W = "emp:webhooks:{wh}:").
Every key shares the hash tag "{wh}". KEYS[1] of every function is W.."due";
W is derived from it. Keys of a hook or delivery that only the function can
know (the hook a claim picks, the deliveries a deleted hook still had) are
derived from W: they share the tag, so they live in the same slot.

  W.."hooks"               ZSET   hook id -> order number when created
  W.."version"             STRING bumped on every registration change
  W.."hook:"..id           HASH   registration: id, url, events, secret,
                                  filters, retry_config, active ('1'/'0'),
                                  created_at, updated_at; after a secret was
                                  replaced, previous_secret and
                                  previous_secret_until (ms) while it still
                                  signs (deleted at the overlap's end)
  W.."rotations"           ZSET   hook id -> previous_secret_until, hooks whose
                                  replaced secret still signs (release 3)
  W.."state:"..id          HASH   connected ('1'/'0'), consecutive_failures,
                                  disconnected_at, reconnect_at, lease,
                                  lease_until; counters queued, delivered,
                                  failed, refused, dropped, throttled,
                                  attempts; last_attempt_at, last_success_at,
                                  last_failure_at, last_error
  W.."queue:"..id          LIST   delivery ids waiting, oldest first; the
                                  head is the one being tried (one in flight)
  W.."log:"..id            ZSET   delivery id -> order number when filed (the
                                  hook's history)
  W.."delivery:"..did      HASH   id, webhook_id, event_id, event_type, job_id,
                                  body, status (queued, retrying, delivered,
                                  failed, refused), attempts, created_at,
                                  first_attempt_at (release 2), next_attempt_at,
                                  last_attempt_at,
                                  last_status_code, last_error, finished_at
  W.."attempts:"..did      LIST   attempt records (JSON), oldest first
  W.."recent"              ZSET   delivery id -> order number of its last change
  W.."order"               STRING the last order number handed out
  W.."due"                 ZSET   hook id -> ms its head may be tried; while a
                                  dispatcher holds the lease, the lease expiry
  W.."throttle:"..id..":"..job
                           STRING event ms of the last progress event passed
  W.."consumer"            STRING "<instance>:<run id>" of the one instance
                                  consuming the event log (expires)

A hook is in "due" exactly when its queue is not empty and it is active. A
finished delivery's record and attempts expire after the history time and
are deleted sooner when they fall out of the hook's history.

Times are Redis TIME in ms (one clock for every instance). The history
indexes ("log", "recent") and the hook list ("hooks") are scored by order
numbers instead: max(now ms,
last + 1). A ms holds many deliveries, and a tie in a ZSET falls back to the
member (a random-looking delivery id), which reordered them; order numbers
never tie, and stay close to the ms, so they sort after entries an earlier
version scored in plain ms.
]]

-- Raise with every release that changes this file; a release only adds (see
-- capability_router/libraries.py: no process loads over a higher number).
local VERSION = '3'

local FINISHED = {delivered = true, failed = true, refused = true}

local function int(n)
  return string.format('%d', n)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function prefix_of(due_key)
  return string.sub(due_key, 1, #due_key - #'due')
end

-- Drops the oldest entries of a hook's history beyond ``max``, deleting the
-- records of those already finished (queued ones still wait in the queue).
local function trim_log(W, log_key, max)
  local over = redis.call('ZCARD', log_key) - max
  if over <= 0 then
    return
  end
  local old = redis.call('ZPOPMIN', log_key, over)
  for i = 1, #old, 2 do
    local did = old[i]
    if FINISHED[redis.call('HGET', W .. 'delivery:' .. did, 'status')] then
      redis.call('DEL', W .. 'delivery:' .. did, W .. 'attempts:' .. did)
    end
  end
end

-- The next order number of the history indexes (see the header).
local function next_order(order_key, now)
  local n = math.max(now, tonumber(redis.call('GET', order_key) or '0') + 1)
  redis.call('SET', order_key, int(n))
  return n
end

local function trim_recent(recent_key, max)
  redis.call('ZREMRANGEBYRANK', recent_key, 0, -(tonumber(max) + 1))
end

-- The ms a hook's head may next be tried: now, or when a disconnected hook
-- is probed again.
local function next_try(state_key, now)
  local st = redis.call('HMGET', state_key, 'connected', 'reconnect_at')
  if st[1] == '0' and st[2] then
    return math.max(now, tonumber(st[2]))
  end
  return now
end

-- A replaced secret signs beside the new one until previous_secret_until (Redis'
-- clock); from then on it is deleted, not kept in the hash unused. Called
-- wherever a hook is used or written, and by the sweep of "rotations".
local function drop_ended_secret(hook_key, now)
  local old = redis.call('HMGET', hook_key, 'previous_secret', 'previous_secret_until')
  if not old[1] and not old[2] then
    return
  end
  local ends = tonumber(old[2])
  if old[1] and ends and ends > now then
    return
  end
  redis.call('HDEL', hook_key, 'previous_secret', 'previous_secret_until')
end

-- Files a hook whose secret was just written in "rotations" while its replaced
-- one still signs (so it is deleted at the end, used or not), else takes it out.
local function note_rotation(W, hook_key, hook_id, now)
  drop_ended_secret(hook_key, now)
  local ends = tonumber(redis.call('HGET', hook_key, 'previous_secret_until'))
  if ends then
    redis.call('ZADD', W .. 'rotations', int(ends), hook_id)
  else
    redis.call('ZREM', W .. 'rotations', hook_id)
  end
end

-- Deletes the replaced secrets whose overlap has ended (a few per call: every
-- claim sweeps, and idle dispatchers claim at least once a second).
local function sweep_rotations(W, now)
  local ended = redis.call('ZRANGEBYSCORE', W .. 'rotations', '-inf', int(now), 'LIMIT', 0, 16)
  for _, hook in ipairs(ended) do
    drop_ended_secret(W .. 'hook:' .. hook, now)
    redis.call('ZREM', W .. 'rotations', hook)
  end
end

-- Puts a hook in "due" (or takes it out) after its registration or
-- connection changed; a leased hook is left to its dispatcher.
-- keys: due, state, queue, hook
local function schedule(keys, hook_id, now)
  local leased = tonumber(redis.call('HGET', keys[2], 'lease_until') or '0') or 0
  if leased > now then
    return
  end
  if redis.call('HGET', keys[4], 'active') == '0' or redis.call('LLEN', keys[3]) == 0 then
    redis.call('ZREM', keys[1], hook_id)
    return
  end
  redis.call('ZADD', keys[1], int(next_try(keys[2], now)), hook_id)
end

--[[ emp_wh_version: KEYS none. Returns the library version string. ]]
local function emp_wh_version()
  return VERSION
end

--[[ emp_wh_enqueue
KEYS[1] due  KEYS[2] delivery  KEYS[3] queue  KEYS[4] log  KEYS[5] state
KEYS[6] recent  KEYS[7] throttle  KEYS[8] hook  KEYS[9] order
ARGV[1] delivery id  ARGV[2] hook id  ARGV[3] event id  ARGV[4] event type
ARGV[5] job id  ARGV[6] event ms  ARGV[7] body (JSON text)
ARGV[8] progress interval ms (0: not a throttled event)  ARGV[9] max backlog
ARGV[10] history per hook  ARGV[11] recent max
Idempotent: a delivery id already stored is not stored again.
Returns 'queued', 'duplicate', 'throttled', 'dropped' (backlog full),
'inactive' or 'gone' (hook deleted). ]]
local function emp_wh_enqueue(keys, args)
  if redis.call('EXISTS', keys[2]) == 1 then
    return 'duplicate'
  end
  local active = redis.call('HGET', keys[8], 'active')
  if not active then
    return 'gone'
  end
  if active == '0' then
    return 'inactive'
  end
  local did, hook = args[1], args[2]
  local interval = tonumber(args[8])
  if interval > 0 then
    local at = tonumber(args[6])
    local last = tonumber(redis.call('GET', keys[7]) or '')
    if last and at >= last and at - last < interval then
      redis.call('HINCRBY', keys[5], 'throttled', 1)
      return 'throttled'
    end
    redis.call('SET', keys[7], args[6], 'PX', int(math.max(60000, interval * 10)))
  end
  if redis.call('LLEN', keys[3]) >= tonumber(args[9]) then
    redis.call('HINCRBY', keys[5], 'dropped', 1)
    return 'dropped'
  end
  local now = now_ms()
  redis.call('HSET', keys[2], 'id', did, 'webhook_id', hook, 'event_id', args[3],
    'event_type', args[4], 'job_id', args[5], 'body', args[7], 'status', 'queued',
    'attempts', '0', 'created_at', int(now))
  redis.call('RPUSH', keys[3], did)
  local order = int(next_order(keys[9], now))
  redis.call('ZADD', keys[4], order, did)
  trim_log(prefix_of(keys[1]), keys[4], tonumber(args[10]))
  redis.call('ZADD', keys[6], order, did)
  trim_recent(keys[6], args[11])
  redis.call('ZADD', keys[1], 'NX', int(next_try(keys[5], now)), hook)
  redis.call('HINCRBY', keys[5], 'queued', 1)
  return 'queued'
end

--[[ emp_wh_claim
KEYS[1] due
ARGV[1] lease ms  ARGV[2] lease token (instance name, ':', random)
Takes the hook whose head delivery is due soonest (and due now), leases it
by moving its due score to the lease expiry, and returns
{1, hook id, delivery id, delivery HGETALL, hook HGETALL, now ms} (a replaced
secret whose overlap ended by now dropped from the hook first); or {0, ms
until the next hook is due (-1: none)}. Sweeps ended rotations first. ]]
local function emp_wh_claim(keys, args)
  local W = prefix_of(keys[1])
  local now = now_ms()
  sweep_rotations(W, now)
  for _ = 1, 16 do
    local hook = redis.call('ZRANGEBYSCORE', keys[1], '-inf', int(now), 'LIMIT', 0, 1)[1]
    if not hook then
      local nxt = redis.call('ZRANGE', keys[1], 0, 0, 'WITHSCORES')
      if nxt[2] then
        return {0, math.max(1, tonumber(nxt[2]) - now)}
      end
      return {0, -1}
    end
    local head = redis.call('LINDEX', W .. 'queue:' .. hook, 0)
    if head then
      local lease_until = now + tonumber(args[1])
      redis.call('ZADD', keys[1], int(lease_until), hook)
      redis.call('HSET', W .. 'state:' .. hook, 'lease', args[2],
        'lease_until', int(lease_until))
      drop_ended_secret(W .. 'hook:' .. hook, now)
      return {1, hook, head, redis.call('HGETALL', W .. 'delivery:' .. head),
        redis.call('HGETALL', W .. 'hook:' .. hook), int(now)}
    end
    redis.call('ZREM', keys[1], hook)
  end
  return {0, 0}
end

--[[ emp_wh_finish
KEYS[1] due  KEYS[2] queue  KEYS[3] state  KEYS[4] delivery  KEYS[5] attempts
KEYS[6] recent  KEYS[7] hook  KEYS[8] order
ARGV[1] hook id  ARGV[2] lease token  ARGV[3] delivery id
ARGV[4] outcome: delivered | retry | failed | refused | skip (record gone) |
        park (hook inactive)
ARGV[5] retry delay ms  ARGV[6] attempt record JSON  ARGV[7] disconnect after
ARGV[8] reconnect ms  ARGV[9] history ms  ARGV[10] recent max
ARGV[11] lease ms to keep the hook and hand back its next due delivery
         ('0': release)  ARGV[12] status code ('' none)  ARGV[13] error text
Records the attempt and moves the queue on (delivered, failed, refused) or
keeps the delivery at the head until the retry (retry). Every failure counts
against the hook: at ``disconnect after`` consecutive ones the hook is
disconnected and its next try waits ``reconnect ms``.
Returns {'next', delivery id, delivery HGETALL, hook HGETALL, now ms} (lease
kept; the hook as a claim returns it),
{'scheduled', ms}, {'idle'}, {'parked'}, {'stale'} (the lease was lost:
only the attempt is recorded) or {'gone'} (the hook was deleted). ]]
local function emp_wh_finish(keys, args)
  local W = prefix_of(keys[1])
  local hook, token, did, outcome = args[1], args[2], args[3], args[4]
  local now = now_ms()
  if redis.call('EXISTS', keys[7]) == 0 then
    for _, id in ipairs(redis.call('LRANGE', keys[2], 0, -1)) do
      redis.call('DEL', W .. 'delivery:' .. id, W .. 'attempts:' .. id)
    end
    redis.call('DEL', keys[2], keys[3])
    redis.call('ZREM', keys[1], hook)
    return {'gone'}
  end
  if redis.call('HGET', keys[3], 'lease') ~= token then
    if args[6] ~= '' and redis.call('EXISTS', keys[4]) == 1 then
      redis.call('RPUSH', keys[5], args[6])
    end
    return {'stale'}
  end
  redis.call('HDEL', keys[3], 'lease', 'lease_until')
  if outcome == 'park' then
    redis.call('ZREM', keys[1], hook)
    return {'parked'}
  end
  local is_head = redis.call('LINDEX', keys[2], 0) == did
  local next_at = now
  if outcome == 'skip' then
    if is_head then
      redis.call('LPOP', keys[2])
    end
  else
    local attempt = cjson.decode(args[6])
    local n = redis.call('HINCRBY', keys[4], 'attempts', 1)
    redis.call('HSETNX', keys[4], 'first_attempt_at', int(now))
    redis.call('HINCRBY', keys[3], 'attempts', 1)
    redis.call('HSET', keys[4], 'last_attempt_at', int(now), 'last_status_code', args[12],
      'last_error', args[13])
    redis.call('HSET', keys[3], 'last_attempt_at', int(now))
    local finished
    if outcome == 'delivered' then
      finished = 'delivered'
      redis.call('HSET', keys[3], 'connected', '1', 'consecutive_failures', '0',
        'last_success_at', int(now))
      redis.call('HDEL', keys[3], 'disconnected_at', 'reconnect_at')
      redis.call('HINCRBY', keys[3], 'delivered', 1)
    else
      local failures = redis.call('HINCRBY', keys[3], 'consecutive_failures', 1)
      redis.call('HSET', keys[3], 'last_failure_at', int(now), 'last_error', args[13])
      if outcome == 'retry' then
        next_at = now + tonumber(args[5])
      else
        finished = outcome == 'refused' and 'refused' or 'failed'
        redis.call('HINCRBY', keys[3], finished, 1)
      end
      if failures >= tonumber(args[7]) then
        if redis.call('HGET', keys[3], 'connected') ~= '0' then
          redis.call('HSET', keys[3], 'connected', '0', 'disconnected_at', int(now))
        end
        local probe = now + tonumber(args[8])
        redis.call('HSET', keys[3], 'reconnect_at', int(probe))
        next_at = math.max(next_at, probe)
      end
    end
    attempt.attempt_number = n
    if finished then
      redis.call('HSET', keys[4], 'status', finished, 'finished_at', int(now))
      redis.call('HDEL', keys[4], 'next_attempt_at')
      if is_head then
        redis.call('LPOP', keys[2])
      end
    else
      redis.call('HSET', keys[4], 'status', 'retrying', 'next_attempt_at', int(next_at))
      attempt.next_retry_at = next_at
    end
    redis.call('RPUSH', keys[5], cjson.encode(attempt))
    redis.call('LTRIM', keys[5], -50, -1)
    if finished then
      redis.call('PEXPIRE', keys[4], args[9])
      redis.call('PEXPIRE', keys[5], args[9])
    end
    redis.call('ZADD', keys[6], int(next_order(keys[8], now)), did)
    trim_recent(keys[6], args[10])
  end
  if redis.call('LLEN', keys[2]) == 0 then
    redis.call('ZREM', keys[1], hook)
    return {'idle'}
  end
  if args[11] ~= '0' and next_at <= now then
    local head = redis.call('LINDEX', keys[2], 0)
    local lease_until = now + tonumber(args[11])
    redis.call('HSET', keys[3], 'lease', token, 'lease_until', int(lease_until))
    redis.call('ZADD', keys[1], int(lease_until), hook)
    drop_ended_secret(keys[7], now)
    return {'next', head, redis.call('HGETALL', W .. 'delivery:' .. head),
      redis.call('HGETALL', keys[7]), int(now)}
  end
  redis.call('ZADD', keys[1], int(next_at), hook)
  return {'scheduled', next_at}
end

--[[ emp_wh_record
KEYS[1] due  KEYS[2] delivery  KEYS[3] attempts  KEYS[4] log  KEYS[5] recent
KEYS[6] order  KEYS[7] hook
ARGV[1] delivery id  ARGV[2] attempt record JSON  ARGV[3] history ms
ARGV[4] recent max  ARGV[5..] field, value pairs of the finished delivery
Keeps a delivery sent outside the queue (a test call) in the hook's history.
Returns 1, or 0 when the hook does not exist (nothing written). ]]
local function emp_wh_record(keys, args)
  if redis.call('EXISTS', keys[7]) == 0 then
    return 0
  end
  local now = now_ms()
  drop_ended_secret(keys[7], now)
  redis.call('HSET', keys[2], unpack(args, 5))
  redis.call('RPUSH', keys[3], args[2])
  redis.call('PEXPIRE', keys[2], args[3])
  redis.call('PEXPIRE', keys[3], args[3])
  local order = int(next_order(keys[6], now))
  redis.call('ZADD', keys[4], order, args[1])
  redis.call('ZADD', keys[5], order, args[1])
  trim_recent(keys[5], args[4])
  return 1
end

--[[ emp_wh_create
KEYS[1] due  KEYS[2] hook  KEYS[3] state  KEYS[4] hooks  KEYS[5] version  KEYS[6] order
ARGV[1] hook id  ARGV[2..] field, value pairs of the registration
Stores a new registration, connected, listed after every earlier one.
Returns its created_at (ms). ]]
local function emp_wh_create(keys, args)
  local now = now_ms()
  redis.call('HSET', keys[2], unpack(args, 2))
  redis.call('HSET', keys[2], 'id', args[1], 'created_at', int(now), 'updated_at', int(now))
  redis.call('HSET', keys[3], 'connected', '1', 'consecutive_failures', '0')
  redis.call('ZADD', keys[4], int(next_order(keys[6], now)), args[1])
  redis.call('INCR', keys[5])
  return int(now)
end

--[[ emp_wh_update
KEYS[1] due  KEYS[2] state  KEYS[3] queue  KEYS[4] hook  KEYS[5] version
ARGV[1] hook id  ARGV[2..] field, value pairs of the registration (a new
secret comes with previous_secret and previous_secret_until: see note_rotation)
Returns 1, or 0 when the hook does not exist (nothing written). ]]
local function emp_wh_update(keys, args)
  if redis.call('EXISTS', keys[4]) == 0 then
    return 0
  end
  if #args > 1 then
    redis.call('HSET', keys[4], unpack(args, 2))
  end
  local now = now_ms()
  note_rotation(prefix_of(keys[1]), keys[4], args[1], now)
  redis.call('INCR', keys[5])
  schedule(keys, args[1], now)
  return 1
end

--[[ emp_wh_reconnect
KEYS[1] due  KEYS[2] state  KEYS[3] queue  KEYS[4] hook
ARGV[1] hook id
Marks the hook connected with no failures and makes its head due at once.
Returns 1, or 0 when the hook does not exist. ]]
local function emp_wh_reconnect(keys, args)
  if redis.call('EXISTS', keys[4]) == 0 then
    return 0
  end
  local now = now_ms()
  drop_ended_secret(keys[4], now)
  redis.call('HSET', keys[2], 'connected', '1', 'consecutive_failures', '0')
  redis.call('HDEL', keys[2], 'disconnected_at', 'reconnect_at')
  schedule(keys, args[1], now)
  return 1
end

--[[ emp_wh_delete
KEYS[1] due  KEYS[2] hooks  KEYS[3] hook  KEYS[4] state  KEYS[5] queue
KEYS[6] log  KEYS[7] version
ARGV[1] hook id
Deletes the registration, its state, queue and history. Returns 1, or 0
when the hook does not exist. ]]
local function emp_wh_delete(keys, args)
  local W = prefix_of(keys[1])
  if redis.call('DEL', keys[3]) == 0 then
    return 0
  end
  local ids = redis.call('LRANGE', keys[5], 0, -1)
  for _, id in ipairs(redis.call('ZRANGE', keys[6], 0, -1)) do
    table.insert(ids, id)
  end
  for _, id in ipairs(ids) do
    redis.call('DEL', W .. 'delivery:' .. id, W .. 'attempts:' .. id)
  end
  redis.call('DEL', keys[4], keys[5], keys[6])
  redis.call('ZREM', keys[2], args[1])
  redis.call('ZREM', keys[1], args[1])
  redis.call('ZREM', W .. 'rotations', args[1])
  redis.call('INCR', keys[7])
  return 1
end

--[[ emp_wh_release
KEYS[1] due
ARGV[1] lease token prefix of this instance ("<instance>:")
An instance starting again releases the leases its previous run held (it
died mid-request), so their hooks are due at once instead of at lease
expiry. Returns how many were released. ]]
local function emp_wh_release(keys, args)
  local W = prefix_of(keys[1])
  local now = now_ms()
  local released = 0
  for _, hook in ipairs(redis.call('ZRANGEBYSCORE', keys[1], '(' .. int(now), '+inf')) do
    local state_key = W .. 'state:' .. hook
    local lease = redis.call('HGET', state_key, 'lease')
    if lease and string.sub(lease, 1, #args[1]) == args[1] then
      redis.call('HDEL', state_key, 'lease', 'lease_until')
      redis.call('ZADD', keys[1], int(now), hook)
      released = released + 1
    end
  end
  return released
end

--[[ emp_wh_lead
KEYS[1] due  KEYS[2] consumer
ARGV[1] token ("<instance>:<run id>")  ARGV[2] ttl ms  ARGV[3] "<instance>:"
One instance at a time consumes the event log, so deliveries are filed in
log order. Takes the right when it is free or held by an earlier run of
the same instance, keeps it while renewed. Returns 2 when newly taken, 1
when kept, 0 when another instance holds it. ]]
local function emp_wh_lead(keys, args)
  local holder = redis.call('GET', keys[2])
  if holder == args[1] then
    redis.call('PEXPIRE', keys[2], args[2])
    return 1
  end
  if holder and string.sub(holder, 1, #args[3]) ~= args[3] then
    return 0
  end
  redis.call('SET', keys[2], args[1], 'PX', args[2])
  return 2
end

--[[ emp_wh_unlead
KEYS[1] due  KEYS[2] consumer
ARGV[1] token
Gives the right to consume up (a clean stop), if this run holds it. Returns 1 or 0. ]]
local function emp_wh_unlead(keys, args)
  if redis.call('GET', keys[2]) == args[1] then
    return redis.call('DEL', keys[2])
  end
  return 0
end

redis.register_function{function_name = 'emp_wh_version', callback = emp_wh_version,
  flags = {'no-writes'}}
redis.register_function('emp_wh_enqueue', emp_wh_enqueue)
redis.register_function('emp_wh_claim', emp_wh_claim)
redis.register_function('emp_wh_finish', emp_wh_finish)
redis.register_function('emp_wh_record', emp_wh_record)
redis.register_function('emp_wh_create', emp_wh_create)
redis.register_function('emp_wh_update', emp_wh_update)
redis.register_function('emp_wh_reconnect', emp_wh_reconnect)
redis.register_function('emp_wh_delete', emp_wh_delete)
redis.register_function('emp_wh_release', emp_wh_release)
redis.register_function('emp_wh_lead', emp_wh_lead)
redis.register_function('emp_wh_unlead', emp_wh_unlead)
