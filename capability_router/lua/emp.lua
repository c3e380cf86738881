#!lua name=emp
--[[
EMP capability-matching job queue: every job state change is one call here.

Loaded with FUNCTION LOAD REPLACE by capability_router.functions, which checks
emp_version first so every process can load it idempotently.

Key layout (built by capability_router/keys.py; P = "emp:{<namespace>}:").
All keys of a namespace share the hash tag "{<namespace>}", so the library
runs on Redis Cluster. KEYS[1] of every function is the namespace's config
hash; P is derived from it. Keys named after a job, class, profile or worker
that only the function can know (the job a claim picks, the class a job is
filed under) are derived from P inside the function: they share the tag, so
they live in the same slot as the declared key.

  P.."config"              HASH   tunables: events_maxlen, job_events_maxlen,
                                  retention_ms, max_attempts, max_service_releases,
                                  service_release_delay_ms, duration_alpha,
                                  duration_keys_max; swept_at (ms of
                                  the last housekeeping by a claim);
                                  family_index ('1' once the pool's
                                  fam-pending index holds every pending job)
  P.."job:"..id            HASH   the job record; while its worker gets the
                                  job's models ready (a cold start) it has
                                  "preparing" (JSON, see emp_preparing); a job
                                  that ran out of GPU memory has
                                  "escalations" (JSON list, see emp_escalate);
                                  a job whose task replaced itself has
                                  "replaced" (JSON list, see emp_replace)
  P.."job:"..id..":events" STREAM that job's events (trimmed, expires)
  P.."events"              STREAM every event of the namespace (trimmed)
  P.."jobs"                ZSET   job id -> submit ms (listing, trimmed)
  P.."classes"             HASH   class signature -> class JSON (live classes)
  P.."live"                HASH   class signature -> its pending, delayed and
                                  leased jobs; at 0 the class is dropped
  P.."class-family"        HASH   class signature -> family signature
  P.."wf-classes:"..wf     SET    live classes of one workflow (for
                                  workflow-restricted workers)
  P.."families"            HASH   family signature -> family JSON: what
                                  matching reads of a class (no workflow, no
                                  customer unless strict)
  P.."family-classes"      HASH   family signature -> its live classes; at 0
                                  the family and its compat entries go
  P.."profiles"            HASH   profile signature -> profile JSON
  P.."restricted"          HASH   profile signature -> profile JSON, for
                                  profiles with a workflow or denied customers
  P.."service-profiles:"..s SET   profile signatures offering service s
  P.."profile-seen"        ZSET   profile signature -> ms of its last claim or
                                  registration; unseen for profile_retention_ms
                                  (config, default 1 h) it is dropped
  P.."compat:"..psig       SET    family signatures a profile can serve
  P.."compat-rev:"..fsig   SET    profile signatures that can serve a family
  P.."pending:"..csig      ZSET   pending job ids of one class -> order score
  P.."heads"               ZSET   class signature -> score of its best job
  P.."fam:"..fsig          ZSET   class signature -> score of its best job,
                                  the family's classes with pending jobs
  P.."fheads"              ZSET   family signature -> score of its best job
  P.."fam-pending:"..fsig  ZSET   pending job ids of one family -> effective
                                  time ms (the class signature stands for the
                                  family of a class filed without one), so
                                  emp_family_summary reads depth and oldest
                                  per family without walking its classes
  P.."unfamilied"          SET    classes filed without a family (before
                                  release 7) that have pending jobs: their
                                  fam-pending index is keyed by the class
  P.."delayed"             ZSET   job id -> ms when a retry becomes due
  P.."leases"              ZSET   job id -> ms when its lease expires
  P.."idle"                ZSET   "<profile signature>:<worker id>" of idle
                                  workers -> ms their idle mark expires
  P.."wake:"..worker_id    LIST   wake-up tokens an idle worker blocks on
  P.."status:"..status     ZSET   job id -> ms it entered that status (listing)
  P.."by:"..field..":"..v  ZSET   job id -> submit ms, for field service,
                                  customer and workflow (listing filters)
  P.."indexes"             SET    names of the "by:" keys (for the sweep)
  P.."metrics"             HASH   histogram counters, NOT cumulative: per
                                  bucket "<name>:<le>" (le: the bucket's upper
                                  bound in seconds, "+Inf" last), plus
                                  "<name>:sum_ms"/"sum_us" (the count is the
                                  buckets' total).
                                  "wait" (ms a claimed job spent pending) is
                                  written by emp_claim; "claim" (a worker's
                                  claim round trip) by the workers. Bounds:
                                  capability_router/metrics.py
  P.."durations"           HASH   duration key -> "<mean>,<n>": EWMA of the
                                  natural log of seconds per work unit of the
                                  namespace's completed jobs with that key, and
                                  how many it learnt from (emp_complete;
                                  capability_router/duration.py)
  P.."duration-seen"       ZSET   duration key -> ms it last learnt; past
                                  duration_keys_max (config, default 10000)
                                  the least recently learnt key is dropped
  P.."load"                HASH   unfinished_ms: predicted ms (record field
                                  predicted_ms) of the namespace's unfinished
                                  jobs, pending and running; unfinished: their
                                  count (what the router reads as queued work);
                                  both kept within [0, 2^53] (add_load)
  P.."models:"..worker_id  HASH   model -> tier ("gpu", "ram", "disk", "remote")
                                  of one worker (emp_residency)
  P.."warm:"..model        ZSET   worker id -> ms of its report, workers that
                                  hold the model in "gpu" (loaded in VRAM)
  P.."residents"           HASH   worker id -> its profile signature, for
                                  workers with a residency (cleared with it)
  P.."model-size"          HASH   model -> bytes, as reported (remote models)
  P.."family-models"       HASH   family signature -> its models joined by
                                  newlines ('' for none), filled by claims
  P.."busy"                ZSET   worker id -> ms its running job is
                                  expected to end (claims of residents with a
                                  predicted_ms on the job; warm-first delays)
  P.."obs:"..slot           HASH   pool observability, one minute per slot
                                  (slot = minute % 1500, a 25 h ring; field
                                  "m" names the minute): claims, waits, model
                                  hits, completions, run time, routing,
                                  busy/live worker-ms, gauges (see observe)
  P.."obs"                 HASH   the state the minute integrals go on from
  P.."desired"             STRING desired machines of the pool (the scaler's;
                                  read, never written, here)

Both streams carry each event under the same entry id, so a reader can
resume either from the id it last saw.

Order score: (100 - effective priority) * 1e13 + effective time in ms, lower
first, exact below 2^53. It is kept as a string: Lua's default number
formatting would round it.

Job states: pending, assigned, in_progress, completed, failed, cancelled.
]]

-- The release of this library. Raise it with every release that changes the file:
-- a process never loads its library over a higher number (rolling upgrades), so a
-- release only adds (new functions, arguments appended at the end), and an older
-- process keeps working with the newer library.
local VERSION = '29'

local ACTIVE = {assigned = true, in_progress = true}
-- Record fields with a listing index, and the index's name.
local BY_FIELD = {service_required = 'service', customer_id = 'customer',
  workflow_id = 'workflow'}
local TERMINAL = {completed = true, failed = true, cancelled = true}

-- helpers -----------------------------------------------------------------

local function prefix_of(config_key)
  return string.sub(config_key, 1, #config_key - #'config')
end

-- Milliseconds since the epoch as a string of digits: ``arg`` when given,
-- else Redis TIME. Kept as text, like every number handed back to Redis,
-- because Lua formats numbers with printf("%.14g"), a large share of a
-- function's cost; arithmetic still coerces it.
local function now_ms(arg)
  if arg and arg ~= '' and arg ~= '0' then
    return arg
  end
  local t = redis.call('TIME')
  local us = t[2]
  return t[1] .. string.sub(string.rep('0', 6 - #us) .. us, 1, 3)
end

-- An integer as text without printf("%.14g").
local function int(n)
  return string.format('%d', n)
end

local EVENTS_MAXLEN, JOB_EVENTS_MAXLEN, RETENTION_MS = '100000', '1000', '604800000'

local function config(P)
  local v = redis.call('HMGET', P .. 'config', 'events_maxlen',
    'job_events_maxlen', 'retention_ms', 'max_attempts', 'swept_at', 'profile_retention_ms',
    'fair_window', 'fair_age_ms', 'affinity', 'affinity_window', 'affinity_max_delay_ms',
    'load_ms_ram', 'load_ms_disk', 'load_ms_remote')
  return {
    events_maxlen = v[1] or EVENTS_MAXLEN,
    job_events_maxlen = v[2] or JOB_EVENTS_MAXLEN,
    retention_ms = v[3] or RETENTION_MS,
    max_attempts = tonumber(v[4]) or 10,
    swept_at = tonumber(v[5]) or 0,
    profile_retention_ms = tonumber(v[6]) or 3600000,
    fair_window = tonumber(v[7]) or 10,
    fair_age_ms = tonumber(v[8]) or 30000,
    -- Warm-first claims (emp_claim): on unless '0'; the priority window in
    -- which a warm job beats a better one; the cap of a delay; expected ms to
    -- load a model from each tier into the GPU (the delay's base).
    affinity = (v[9] or '1') ~= '0',
    affinity_window = tonumber(v[10]) or 10,
    affinity_max_delay_ms = tonumber(v[11]) or 10000,
    load_ms = {gpu = 0, ram = tonumber(v[12]) or 2000, disk = tonumber(v[13]) or 10000,
      remote = tonumber(v[14]) or 60000},
  }
end

-- The part of the config emit and end_job read: for the per-job functions that
-- need nothing else (start, progress, complete...), three fields instead of all.
local function event_config(P)
  local v = redis.call('HMGET', P .. 'config', 'events_maxlen', 'job_events_maxlen',
    'retention_ms')
  return {events_maxlen = v[1] or EVENTS_MAXLEN, job_events_maxlen = v[2] or JOB_EVENTS_MAXLEN,
    retention_ms = v[3] or RETENTION_MS}
end

-- Appends an event to the namespace stream and the job's stream. ``raw``
-- (optional) is JSON text spliced in as ``"<raw_key>": raw`` unparsed. The
-- job stream's expiry is set when asked (submit and terminal events): the
-- record and its stream expire together.
local function emit(P, cfg, id, event, data, now, expire, raw_key, raw)
  data.job_id = id
  local payload = string.sub(cjson.encode(data), 1, -2) .. ',"timestamp":' .. now
  if raw_key then
    payload = payload .. ',"' .. raw_key .. '":' .. raw
  end
  payload = payload .. '}'
  local eid = redis.call('XADD', P .. 'events', 'MAXLEN', '~', cfg.events_maxlen, '*',
    'event', event, 'job_id', id, 'data', payload)
  local jk = P .. 'job:' .. id .. ':events'
  -- Same id in the job's stream; '*' only if that stream is somehow ahead.
  local added = redis.pcall('XADD', jk, 'MAXLEN', '~', cfg.job_events_maxlen, eid,
    'event', event, 'job_id', id, 'data', payload)
  if type(added) == 'table' and added.err then
    redis.call('XADD', jk, 'MAXLEN', '~', cfg.job_events_maxlen, '*',
      'event', event, 'job_id', id, 'data', payload)
  end
  if expire then
    redis.call('PEXPIRE', jk, cfg.retention_ms)
  end
  return eid
end

-- Moves a job between the status listing indexes.
local function index_status(P, id, old, new, now)
  if old and old ~= new then
    redis.call('ZREM', P .. 'status:' .. old, id)
  end
  redis.call('ZADD', P .. 'status:' .. new, now, id)
end

-- Workflow milestones derived from a step's own event: the first step
-- submitted, the last step completed, any step failed for good.
local function emit_workflow(P, cfg, id, event, f, now)
  local wf, step, total = f[1], tonumber(f[2]), tonumber(f[3])
  if not wf or wf == '' then
    return
  end
  local name
  if event == 'job_submitted' and (step == nil or step == 1) then
    name = 'workflow_submitted'
  elseif event == 'complete_job' and step ~= nil and total ~= nil and step >= total then
    name = 'workflow_completed'
  elseif event == 'job_failed' then
    name = 'workflow_failed'
  end
  if name then
    -- HMGET gives false for a missing field: a job with no customer has no customer_id
    -- in its milestones (false would reach clients as a boolean).
    local customer = f[4]
    if not customer or customer == '' then
      customer = nil
    end
    emit(P, cfg, id, name, {workflow_id = wf, current_step = step, total_steps = total,
      customer_id = customer}, now)
  end
end

local function contains(list, value)
  if type(list) ~= 'table' then
    return false
  end
  for _, item in ipairs(list) do
    if item == value then
      return true
    end
  end
  return false
end

local function present(v)
  return v ~= nil and v ~= cjson.null
end

-- One requirement against one worker capability (emp-behaviour.md rules).
local function capability_ok(have, want)
  if not present(have) then
    return false
  end
  if type(want) == 'table' then
    if type(have) ~= 'table' then
      return #want == 1 and have == want[1]
    end
    for _, item in ipairs(want) do
      if not contains(have, item) then
        return false
      end
    end
    return true
  end
  if type(have) == 'table' then
    return contains(have, want)
  end
  if type(want) == 'number' and type(have) == 'number' then
    return have >= want
  end
  return have == want
end

-- A normalized worker profile against a normalized requirement class.
local function matches(profile, class)
  if not contains(profile.services, class.service) then
    return false
  end
  if present(profile.workflow_id) and profile.workflow_id ~= class.workflow_id then
    return false
  end
  if present(class.customer_id) then
    if contains(profile.denied, class.customer_id) then
      return false
    end
    if class.strict then
      if profile.isolation ~= 'strict' or not contains(profile.allowed, class.customer_id) then
        return false
      end
    end
  end
  local caps = profile.caps or {}
  for path, want in pairs(class.pos or {}) do
    if not capability_ok(caps[path], want) then
      return false
    end
  end
  for path, want in pairs(class.neg or {}) do
    if capability_ok(caps[path], want) then
      return false
    end
  end
  return true
end

-- Classes are grouped into families: what matching reads of a class (its
-- service, capabilities and strict customer; not its workflow, not a loose
-- customer). Compatibility is kept per family, so what a claim walks follows
-- the kinds of work a profile serves, never how many workflows or customers
-- wait. A profile's workflow restriction and denied customers are checked
-- per class, by the few profiles that have them ("restricted").
local function link(P, psig, fsig)
  redis.call('SADD', P .. 'compat:' .. psig, fsig)
  redis.call('SADD', P .. 'compat-rev:' .. fsig, psig)
end

-- A profile against a family, its workflow restriction left to the claim.
local function serves_family(profile, family)
  local wf = profile.workflow_id
  profile.workflow_id = nil
  local ok = matches(profile, family)
  profile.workflow_id = wf
  return ok
end

local function is_restricted(profile)
  return present(profile.workflow_id) or (type(profile.denied) == 'table'
    and #profile.denied > 0)
end

local function family_of(P, csig)
  local fsig = redis.call('HGET', P .. 'class-family', csig)
  return fsig or nil
end

-- The family of a live class whose P.."class-family" entry is missing (filed before
-- families existed, or the entry lost), worked out from its class JSON as
-- requirements.family_of does: without workflow_id, and without customer_id unless
-- strict. The JSON is canonical (sorted keys, no spaces) and those keys hold names
-- that need no escaping, so customer_id is its first pair and workflow_id its last:
-- cutting them gives the family's JSON, whose signature is the first 16 hex digits
-- of its SHA-1. Returned only when P.."families" holds exactly that JSON under that
-- signature, so a class this cannot work out (an older class shape, a hand edit)
-- is left as before (nil). Only the paths of such classes call it (cancel, drop).
local function lost_family(P, csig)
  local text = redis.call('HGET', P .. 'classes', csig)
  local ok, class = pcall(cjson.decode, text or '')
  if not ok or type(class) ~= 'table' then
    return nil
  end
  if type(class.workflow_id) == 'string' then
    local pair = ',"workflow_id":"' .. class.workflow_id .. '"}'
    if string.sub(text, -#pair) ~= pair then
      return nil
    end
    text = string.sub(text, 1, -#pair - 1) .. '}'
  end
  if class.strict ~= true and type(class.customer_id) == 'string' then
    local pair = '{"customer_id":"' .. class.customer_id .. '",'
    if string.sub(text, 1, #pair) ~= pair then
      return nil
    end
    text = '{' .. string.sub(text, #pair + 1)
  end
  local fsig = string.sub(redis.sha1hex(text), 1, 16)
  if redis.call('HGET', P .. 'families', fsig) ~= text then
    return nil
  end
  return fsig
end

-- Keeps P.."fheads" equal to the best class head of the family.
local function refresh_family(P, fsig)
  local head = redis.call('ZRANGE', P .. 'fam:' .. fsig, '0', '0', 'WITHSCORES')
  if head[1] then
    redis.call('ZADD', P .. 'fheads', head[2], fsig)
  else
    redis.call('ZREM', P .. 'fheads', fsig)
  end
end

-- Keeps P.."heads" and the family's index equal to the best score of each
-- non-empty class. ``others`` (optional, with ``fsig``): the best score among
-- the family's other classes (false: it has none), read by the caller, so the
-- family's head is known without reading the family again.
local function refresh_head(P, csig, fsig, others)
  fsig = fsig or family_of(P, csig)
  local head = redis.call('ZRANGE', P .. 'pending:' .. csig, '0', '0', 'WITHSCORES')
  if head[1] then
    redis.call('ZADD', P .. 'heads', head[2], csig)
    if fsig then
      redis.call('ZADD', P .. 'fam:' .. fsig, head[2], csig)
    end
  else
    redis.call('ZREM', P .. 'heads', csig)
    if fsig then
      redis.call('ZREM', P .. 'fam:' .. fsig, csig)
    end
  end
  if fsig and others ~= nil then
    local best = head[2]
    if others and (not best or tonumber(others) < tonumber(best)) then
      best = others
    end
    if best then
      redis.call('ZADD', P .. 'fheads', best, fsig)
    else
      redis.call('ZREM', P .. 'fheads', fsig)
    end
  elseif fsig then
    refresh_family(P, fsig)
  end
end

-- Model residency -----------------------------------------------------------
-- Where each worker holds each model (P.."models:"..worker) and, per model,
-- the workers that hold it loaded in the GPU (P.."warm:"..model). Every
-- change is O(1); a worker reports into every namespace it serves, so a claim
-- reads residency inside its own hash slot.

local TIERS = {gpu = true, ram = true, disk = true, remote = true}

-- An event of the namespace that concerns no job (model_loaded, model_evicted).
local function emit_ns(P, cfg, event, data, now)
  local payload = string.sub(cjson.encode(data), 1, -2) .. ',"timestamp":' .. now .. '}'
  return redis.call('XADD', P .. 'events', 'MAXLEN', '~', cfg.events_maxlen, '*',
    'event', event, 'job_id', '', 'data', payload)
end

-- One model of one worker moves to ``tier`` (nil: the worker no longer has
-- it). Returns 1 when it was loaded into the GPU, -1 when it left it, else 0.
local function set_residency(P, cfg, worker, model, tier, now)
  local mk = P .. 'models:' .. worker
  local old = redis.call('HGET', mk, model)
  if tier then
    redis.call('HSET', mk, model, tier)
  else
    redis.call('HDEL', mk, model)
  end
  if tier == 'gpu' then
    redis.call('ZADD', P .. 'warm:' .. model, now, worker)
    if old ~= 'gpu' then
      emit_ns(P, cfg, 'model_loaded', {worker_id = worker, model = model, tier = 'gpu'}, now)
      return 1
    end
  elseif old == 'gpu' then
    redis.call('ZREM', P .. 'warm:' .. model, worker)
    emit_ns(P, cfg, 'model_evicted', {worker_id = worker, model = model,
      tier = tier or 'none'}, now)
    return -1
  end
  return 0
end

-- A worker's whole residency, gone (it left, or was found dead). Returns how
-- many models it held; its GPU models are announced as evicted.
local function clear_residency(P, cfg, worker, now)
  local mk = P .. 'models:' .. worker
  local held = redis.call('HGETALL', mk)
  for i = 1, #held, 2 do
    if held[i + 1] == 'gpu' then
      redis.call('ZREM', P .. 'warm:' .. held[i], worker)
      emit_ns(P, cfg, 'model_evicted', {worker_id = worker, model = held[i], tier = 'none'},
        now)
    end
  end
  redis.call('DEL', mk)
  redis.call('HDEL', P .. 'residents', worker)
  redis.call('ZREM', P .. 'busy', worker)
  return #held / 2
end

-- The models a family needs (its pos["models.<service>"]), or nil.
local function family_models(family)
  local want = family and family.pos and family.pos['models.' .. tostring(family.service)]
  if type(want) == 'string' then
    return {want}
  end
  if type(want) == 'table' and #want > 0 then
    return want
  end
  return nil
end

-- The models of a family, from P.."family-models" (``listed``: its entry,
-- names joined by newlines, '' for none), filled from the family's JSON the
-- first time: a claim reads it for several families, cheaper than decoding.
local function models_of_family(P, fsig, listed)
  if not listed then
    local json = redis.call('HGET', P .. 'families', fsig)
    if not json then
      return nil
    end
    local models = family_models(cjson.decode(json))
    listed = models and table.concat(models, '\n') or ''
    redis.call('HSET', P .. 'family-models', fsig, listed)
  end
  if listed == '' then
    return nil
  end
  local models = {}
  for name in string.gmatch(listed, '[^\n]+') do
    models[#models + 1] = name
  end
  return models
end

-- True when ``worker`` holds every one of ``models`` in the GPU (the first is
-- known to be warm there: it was found in P.."warm:"..models[1]).
local function holds_all(P, worker, models)
  if #models > 1 then
    for _, t in ipairs(redis.call('HMGET', P .. 'models:' .. worker, unpack(models))) do
      if t ~= 'gpu' then
        return false
      end
    end
  end
  return true
end

-- Another worker holding all ``models`` in the GPU that will be free by
-- ``until_ms`` (its running job's expected end, when known, is no later), or
-- nil. Looks at the 4 latest reports of the first model.
local function warm_elsewhere(P, worker, models, until_ms, any_busy)
  local others = redis.call('ZRANGE', P .. 'warm:' .. models[1], '0', '3', 'REV')
  for _, other in ipairs(others) do
    if other ~= worker then
      if holds_all(P, other, models) then
        local busy = any_busy and tonumber(redis.call('ZSCORE', P .. 'busy', other))
        if not busy or busy <= until_ms then
          return other
        end
      end
    end
  end
  return nil
end

-- At submit: an idle worker that has the family's models warm is woken
-- first, so it, not a cold worker, comes for the job. True when one was.
local function wake_warm(P, fsig, now)
  -- (config ``affinity`` alone: the whole config is 14 fields)
  if redis.call('HLEN', P .. 'residents') == 0
      or redis.call('HGET', P .. 'config', 'affinity') == '0' then
    return false
  end
  local models = models_of_family(P, fsig, redis.call('HGET', P .. 'family-models', fsig))
  if not models then
    return false
  end
  for _, other in ipairs(redis.call('ZRANGE', P .. 'warm:' .. models[1], '0', '3', 'REV')) do
    local psig = redis.call('HGET', P .. 'residents', other)
    if psig and psig ~= '' then
      local member = psig .. ':' .. other
      local until_ms = tonumber(redis.call('ZSCORE', P .. 'idle', member))
      if until_ms and until_ms > tonumber(now)
          and redis.call('SISMEMBER', P .. 'compat-rev:' .. fsig, psig) == 1
          and redis.call('HEXISTS', P .. 'restricted', psig) == 0 then
        if holds_all(P, other, models) then
          redis.call('ZREM', P .. 'idle', member)
          local wk = P .. 'wake:' .. other
          redis.call('LPUSH', wk, '1')
          redis.call('PEXPIRE', wk, '60000')
          return other
        end
      end
    end
  end
  return false
end

-- Wakes one idle worker that can serve the class, most recently idle first.
-- Looks at the 128 most recent unexpired idle marks; expired ones are swept.
local function wake_one(P, csig, fsig, now)
  if not fsig then
    return false
  end
  local warm = wake_warm(P, fsig, now)
  if warm then
    return warm
  end
  local idle = redis.call('ZRANGE', P .. 'idle', '+inf', '(' .. now, 'BYSCORE', 'REV',
    'LIMIT', '0', '128')
  if #idle == 0 then
    return false
  end
  local psigs, workers = {}, {}
  for i, member in ipairs(idle) do
    local colon = string.find(member, ':', 1, true)
    psigs[i] = string.sub(member, 1, colon - 1)
    workers[i] = string.sub(member, colon + 1)
  end
  local can = redis.call('SMISMEMBER', P .. 'compat-rev:' .. fsig, unpack(psigs))
  local class = nil
  for i, yes in ipairs(can) do
    if yes == 1 then
      local restricted = redis.call('HGET', P .. 'restricted', psigs[i])
      local ok = true
      if restricted then
        class = class or cjson.decode(redis.call('HGET', P .. 'classes', csig) or '{}')
        ok = matches(cjson.decode(restricted), class)
      end
      if ok then
        redis.call('ZREM', P .. 'idle', idle[i])
        local wk = P .. 'wake:' .. workers[i]
        redis.call('LPUSH', wk, '1')
        redis.call('PEXPIRE', wk, '60000')
        return workers[i]
      end
    end
  end
  return false
end

-- Order scores of one priority band: (100 - priority) * 1e13 + ms.
local BAND = 1e13

-- The effective time (ms) of an order score: the score less its band.
local function effective_ms(score)
  local band = math.floor(score / BAND)
  if band * BAND > score then
    band = band - 1
  end
  return score - band * BAND
end

-- The per-family pending index (P.."fam-pending:"..fk, fk the family or,
-- for a class filed without one, the class) follows every job that enters
-- or leaves a class's pending set: one ZADD or ZREM. Readers find the
-- families in P.."families" (live ones, empty indexes skipped) and the rare
-- classes without one in P.."unfamilied".
local function index_pending(P, fsig, csig, id, score)
  redis.call('ZADD', P .. 'fam-pending:' .. (fsig or csig),
    string.format('%.0f', effective_ms(tonumber(score))), id)
  if not fsig then
    redis.call('SADD', P .. 'unfamilied', csig)
  end
end

-- ``csig`` (optional): the job's class, whose own index is tried when ``fk``'s
-- did not hold the job: a job of a known class filed while its class-family entry
-- was missing is indexed under the class, though a claim finds it through the
-- family (refresh_head put the class back in it); left there, the family summary
-- counted it pending while it ran. One call in the usual case, as before.
local function unindex_pending(P, fk, id, csig)
  if redis.call('ZREM', P .. 'fam-pending:' .. fk, id) == 0 and csig and csig ~= fk then
    redis.call('ZREM', P .. 'fam-pending:' .. csig, id)
  end
end

-- ``fsig`` (optional): the class's family as ensure_class returned it (false:
-- none), not read again.
local function file_pending(P, id, csig, score, now, fsig)
  redis.call('ZADD', P .. 'pending:' .. csig, score, id)
  redis.call('ZADD', P .. 'heads', 'LT', score, csig)
  if fsig == nil then
    fsig = family_of(P, csig)
  end
  fsig = fsig or nil
  if fsig then
    redis.call('ZADD', P .. 'fam:' .. fsig, 'LT', score, csig)
    redis.call('ZADD', P .. 'fheads', 'LT', score, fsig)
  end
  index_pending(P, fsig, csig, id, score)
  wake_one(P, csig, fsig, now)
end

-- A job of a class whose class-family entry is missing is indexed under the class
-- if it was filed without the entry, under the family if filed before the entry
-- went: both are tried, the family found by lost_family, which also keeps the
-- class's place in the family's claim index (fam:). Before release 28 the family's
-- were left alone: a cancelled job stayed in the family's index (counted pending by
-- the family summary) and the class in the family's claim index with no job, where
-- every claim that reached it raised.
local function unfile_pending(P, id, csig)
  if redis.call('ZREM', P .. 'pending:' .. csig, id) == 1 then
    local fsig = family_of(P, csig)
    if fsig then
      unindex_pending(P, fsig, id)
    else
      fsig = lost_family(P, csig)
      if redis.call('ZREM', P .. 'fam-pending:' .. csig, id) == 0 and fsig then
        redis.call('ZREM', P .. 'fam-pending:' .. fsig, id)
      end
    end
    refresh_head(P, csig, fsig)
    return true
  end
  return false
end

-- Files a class (and its family, linked to the live profiles offering its
-- service) unless known. Costs O(profiles of the service) for a new family,
-- O(1) otherwise. Returns the class's family as file_pending's ``fsig`` would
-- find it: its P.."class-family" entry, false for a class filed without one.
-- A class has that entry from its filing to its drop (both made and removed
-- together), so the known class of almost every submit costs one HGET, which
-- file_pending then need not repeat.
local function ensure_class(P, csig, class_json, fsig, family_json)
  local known = family_of(P, csig)
  if known then
    return known
  end
  if fsig == nil or fsig == '' then
    fsig, family_json = csig, class_json
  end
  if redis.call('HSETNX', P .. 'classes', csig, class_json) == 0 then
    return false
  end
  redis.call('HSET', P .. 'class-family', csig, fsig)
  local class = cjson.decode(class_json)
  if present(class.workflow_id) then
    redis.call('SADD', P .. 'wf-classes:' .. class.workflow_id, csig)
  end
  redis.call('HINCRBY', P .. 'family-classes', fsig, '1')
  if redis.call('HSETNX', P .. 'families', fsig, family_json) == 0 then
    return fsig
  end
  local family = cjson.decode(family_json)
  local psigs = redis.call('SMEMBERS', P .. 'service-profiles:' .. family.service)
  for first = 1, #psigs, 500 do
    local chunk = {unpack(psigs, first, math.min(first + 499, #psigs))}
    local profiles = redis.call('HMGET', P .. 'profiles', unpack(chunk))
    for j, json in ipairs(profiles) do
      if json and serves_family(cjson.decode(json), family) then
        link(P, chunk[j], fsig)
      end
    end
  end
  return fsig
end

-- A family with no live class: gone, with its compatibility entries.
local function drop_family(P, fsig)
  redis.call('HDEL', P .. 'family-classes', fsig)
  redis.call('HDEL', P .. 'families', fsig)
  redis.call('HDEL', P .. 'family-models', fsig)
  redis.call('ZREM', P .. 'fheads', fsig)
  redis.call('DEL', P .. 'fam:' .. fsig)
  redis.call('DEL', P .. 'fam-pending:' .. fsig)
  local rk = P .. 'compat-rev:' .. fsig
  for _, psig in ipairs(redis.call('SMEMBERS', rk)) do
    redis.call('SREM', P .. 'compat:' .. psig, fsig)
  end
  redis.call('DEL', rk)
end

-- Whether family ``fsig`` counts, in P.."family-classes", more classes than the
-- live classes whose class-family entry names it: a class that lost its entry is
-- still counted there (its filing counted it), one filed before families never was.
-- Reads every entry (O(live classes): 5-27 ms at 20,000 classes), so it is called
-- only when a class without an entry ends, once for each such class.
local function counts_unentered(P, fsig)
  local counted = tonumber(redis.call('HGET', P .. 'family-classes', fsig)) or 0
  if counted <= 0 then
    return false
  end
  local entered = 0
  for _, f in ipairs(redis.call('HVALS', P .. 'class-family')) do
    if f == fsig then
      entered = entered + 1
    end
  end
  return counted > entered
end

-- A class whose last pending, delayed or leased job ended. A class without a
-- class-family entry whose family lost_family finds leaves that family's claim
-- index and lowers its class count, once, when the family counts a class without
-- an entry (counts_unentered): before release 28 it lowered nothing, so the family,
-- its claim index and compatibility sets stayed for ever.
local function drop_class(P, csig)
  if redis.call('ZCARD', P .. 'pending:' .. csig) > 0 then
    return
  end
  local fsig = family_of(P, csig)
  local entered = fsig ~= nil
  if not entered then
    fsig = lost_family(P, csig)
  end
  local class_json = redis.call('HGET', P .. 'classes', csig)
  redis.call('HDEL', P .. 'classes', csig)
  redis.call('HDEL', P .. 'class-family', csig)
  redis.call('HDEL', P .. 'live', csig)
  redis.call('ZREM', P .. 'heads', csig)
  if class_json then
    local class = cjson.decode(class_json)
    if present(class.workflow_id) then
      redis.call('SREM', P .. 'wf-classes:' .. class.workflow_id, csig)
    end
  end
  if not entered then
    redis.call('SREM', P .. 'unfamilied', csig)
    if csig ~= fsig then
      redis.call('DEL', P .. 'fam-pending:' .. csig)
    end
  end
  if fsig then
    redis.call('ZREM', P .. 'fam:' .. fsig, csig)
    refresh_family(P, fsig)
    if (entered or counts_unentered(P, fsig))
        and redis.call('HINCRBY', P .. 'family-classes', fsig, '-1') <= 0 then
      drop_family(P, fsig)
    end
  end
end

-- One job of the class ended for good. A count that was never kept (a class
-- filed before version 7) is left alone rather than going negative.
local function class_job_ended(P, csig)
  if not csig then
    return
  end
  local left = redis.call('HINCRBY', P .. 'live', csig, '-1')
  if left == 0 then
    drop_class(P, csig)
  elseif left < 0 then
    redis.call('HDEL', P .. 'live', csig)
  end
end

-- A job filed again under another class (an escalation, a replace): counted in
-- the new class (made if new) and out of the old one.
local function move_to_class(P, old_csig, csig, class_json, fsig, family_json)
  if csig == old_csig then
    return
  end
  ensure_class(P, csig, class_json, fsig, family_json)
  redis.call('HINCRBY', P .. 'live', csig, '1')
  class_job_ended(P, old_csig)
end

-- A profile no worker has used for the retention: gone, with its entries.
local function drop_profile(P, psig)
  local json = redis.call('HGET', P .. 'profiles', psig)
  redis.call('HDEL', P .. 'profiles', psig)
  redis.call('HDEL', P .. 'restricted', psig)
  redis.call('ZREM', P .. 'profile-seen', psig)
  if json then
    for _, service in ipairs(cjson.decode(json).services or {}) do
      redis.call('SREM', P .. 'service-profiles:' .. service, psig)
    end
  end
  local ck = P .. 'compat:' .. psig
  for _, fsig in ipairs(redis.call('SMEMBERS', ck)) do
    redis.call('SREM', P .. 'compat-rev:' .. fsig, psig)
  end
  redis.call('DEL', ck)
end

local function attempt_is(f_attempts, attempt)
  return attempt == nil or attempt == '' or tostring(f_attempts) == tostring(attempt)
end

-- The record fields of an attempt that may still act (its job active, its
-- attempt current), or nil and the status that refuses it: fencing by attempt.
local function fence(jk, attempt, ...)
  local f = redis.call('HMGET', jk, 'status', 'attempts', ...)
  if not ACTIVE[f[1]] or not attempt_is(f[2], attempt) then
    return nil, f[1] and (ACTIVE[f[1]] and 'stale' or f[1]) or 'missing'
  end
  return f
end

-- Largest value of a load counter: 2^53, exact in a Lua number (about 285,000
-- years of predicted ms).
local LOAD_MAX = 9007199254740992

-- Adds delta to a load counter, kept within [0, LOAD_MAX]. HINCRBY alone, on a
-- counter far out of range (an older release's overflowed prediction, a hand
-- edit), failed with "increment or decrement would overflow" halfway through a
-- cancel or a completion whose other writes stayed (a function is not rolled
-- back): its error is caught, and a counter out of range or no integer is set
-- clamped (one command in the usual case). A value that is no number counts as 0.
local function add_clamped(key, field, delta)
  local after = redis.pcall('HINCRBY', key, field, string.format('%d', delta))
  local value
  if type(after) == 'number' then
    if after >= 0 and after <= LOAD_MAX then
      return
    end
    value = after - delta  -- out of range before: clamped, then counted from there
  else
    value = tonumber(redis.call('HGET', key, field)) or 0
  end
  if value ~= value then value = 0 end
  value = math.min(math.max(value, 0), LOAD_MAX)
  value = math.min(math.max(value + delta, 0), LOAD_MAX)
  redis.call('HSET', key, field, string.format('%d', value))
end

-- Counts a job's predicted work in (sign 1) or out of (-1) the namespace's
-- unfinished work, which the router divides by live workers for a wait.
local function add_load(P, predicted_ms, sign)
  local ms = tonumber(predicted_ms)
  if ms and ms == ms then
    ms = math.floor(math.min(math.max(ms, 0), LOAD_MAX))
    add_clamped(P .. 'load', 'unfinished_ms', sign * ms)
    add_clamped(P .. 'load', 'unfinished', sign)
  end
end

-- The duration model learns one completed run: an EWMA of ln(seconds per
-- work unit) per duration key (alpha 1/n for the first runs, then
-- duration_alpha from the config, default 0.2). A run without a key, a
-- start or work units teaches nothing.
local function learn_duration(P, key, units, started, now)
  units, started = tonumber(units), tonumber(started)
  if not key or key == '' or not units or units <= 0 or not started then
    return
  end
  local seconds = math.max(now - started, 1) / 1000
  local x = math.log(seconds / units)
  local dk = P .. 'durations'
  local c = redis.call('HMGET', P .. 'config', 'duration_alpha', 'duration_keys_max')
  local old = redis.call('HGET', dk, key)
  local mean, n = 0, 0
  if old then
    local comma = string.find(old, ',', 1, true)
    mean, n = tonumber(string.sub(old, 1, comma - 1)), tonumber(string.sub(old, comma + 1))
  end
  n = n + 1
  local alpha = math.max(1 / n, tonumber(c[1]) or 0.2)
  mean = mean + alpha * (x - mean)
  redis.call('HSET', dk, key, string.format('%.6f,%d', mean, n))
  local seen = P .. 'duration-seen'
  redis.call('ZADD', seen, now, key)
  if not old and redis.call('ZCARD', seen) > (tonumber(c[2]) or 10000) then
    local dropped = redis.call('ZPOPMIN', seen)[1]
    redis.call('HDEL', dk, dropped)
  end
end

-- The record fields end_job reads, in its order (a caller that reads the record
-- anyway, through fence, reads them with it: ``ended``).
local END_FIELDS = {'workflow_id', 'current_step', 'total_steps', 'customer_id', 'status',
  'class', 'predicted_ms'}

-- fence's fields (status, attempts, then ``extra``) and END_FIELDS in one read:
-- the fenced fields, and END_FIELDS' values for end_job (nil when refused).
local function fence_to_end(jk, attempt, ...)
  local names = {...}
  local skip = 2 + #names
  for _, name in ipairs(END_FIELDS) do
    names[#names + 1] = name
  end
  local f, refused = fence(jk, attempt, unpack(names))
  if not f then
    return nil, refused
  end
  local ended = {}
  for i = 1, #END_FIELDS do
    ended[i] = f[skip + i]
  end
  return f, ended
end

-- Ends a job: terminal status and its fields, lease released, the record and
-- its event stream set to expire after the retention, the event appended.
-- ``ended`` (optional): END_FIELDS as fence_to_end read them; ``drop``
-- (optional): the record fields to remove, when the caller read which are
-- there (none: no call), else ``preparing``.
local function end_job(P, jk, id, status, fields, event, data, now, raw_key, raw, ended, drop)
  local cfg = event_config(P)
  local f = ended or redis.call('HMGET', jk, unpack(END_FIELDS))
  redis.call('HSET', jk, 'status', status, unpack(fields))
  drop = drop or {'preparing'}
  if #drop > 0 then
    redis.call('HDEL', jk, unpack(drop))
  end
  index_status(P, id, f[5], status, now)
  if not TERMINAL[f[5]] then
    class_job_ended(P, f[6])
    add_load(P, f[7], -1)
  end
  redis.call('ZREM', P .. 'leases', id)
  redis.call('PEXPIRE', jk, cfg.retention_ms)
  emit(P, cfg, id, event, data, now, true, raw_key, raw)
  emit_workflow(P, cfg, id, event, f, now)
end

-- The family (or class) whose best job comes first among those the profile
-- can serve (``ck``: its compatibility set). Walks heads in order (membership
-- checked 64, then 256 at a time); when the profile serves few classes
-- compared with the heads that remain, looks up the head score of each
-- compatible class instead.
-- Cost: O(classes), never O(jobs). Also returns, when found on the first page,
-- the head's score and that page (names and scores, read with it: prefer_scarce
-- needs them), else nil.
local function pick_class(ck, heads_key)
  local page = redis.call('ZRANGE', heads_key, '0', '63', 'WITHSCORES')
  if #page == 0 then
    return nil
  end
  local heads = {}
  for i = 1, #page, 2 do
    heads[#heads + 1] = page[i]
  end
  local hit = redis.call('SMISMEMBER', ck, unpack(heads))
  for i, yes in ipairs(hit) do
    if yes == 1 then
      return heads[i], page[2 * i], page
    end
  end
  if #heads < 64 then
    return nil
  end
  local total = redis.call('ZCARD', heads_key)
  local compatible = redis.call('SCARD', ck)
  local scanned = #heads
  if compatible == 0 then
    return nil
  end
  -- Scanning on usually hits early when the profile serves many classes;
  -- looking each compatible class up costs the whole set, so only for few.
  if compatible * 4 < total - scanned then
    local members = redis.call('SMEMBERS', ck)
    local best, best_score = nil, nil
    for first = 1, #members, 1000 do
      local chunk = {unpack(members, first, math.min(first + 999, #members))}
      local scores = redis.call('ZMSCORE', heads_key, unpack(chunk))
      for j, s in ipairs(scores) do
        if s then
          local n = tonumber(s)
          if best_score == nil or n < best_score or (n == best_score and chunk[j] < best) then
            best, best_score = chunk[j], n
          end
        end
      end
    end
    return best
  end
  while scanned < total do
    heads = redis.call('ZRANGE', heads_key, scanned, scanned + 255)
    if #heads == 0 then
      break
    end
    hit = redis.call('SMISMEMBER', ck, unpack(heads))
    for i, yes in ipairs(hit) do
      if yes == 1 then
        return heads[i]
      end
    end
    scanned = scanned + #heads
  end
  return nil
end

-- Fairness for scarce workers. Among the families a profile can serve whose
-- best job is at most ``fair_window`` priority points (config, default 10)
-- below the best one, the profile takes the family the fewest profiles can
-- serve (ties: queue order), so a big worker does not spend itself on work
-- any small one could do while jobs only it can run wait. Ageing bounds what
-- this costs the others: once the best job has waited ``fair_age_ms``
-- (config, default 30 s) since its effective time, queue order wins.
-- Weighs 16 families the profile can serve at most, found among the first
-- 256 of the window in queue order (families of other services or needs
-- in between are skipped, not counted: 16 of them hid the scarce family).
local SCARCE_FAMILIES, SCARCE_PAGE, SCARCE_PAGES = 16, 64, 4

-- ``best_score`` and ``first`` (optional): best's score and pick_class's page of
-- P.."fheads" (names and scores from rank 0), so that neither is read again: the
-- window's first page is taken from ``first`` when ``first`` holds all of it.
local function prefer_scarce(P, ck, best, now, cfg, best_score, first)
  local head = tonumber(best_score or redis.call('ZSCORE', P .. 'fheads', best))
  if not head or cfg.fair_window <= 0 then
    return best
  end
  local band = math.floor(head / 1e13)
  if now - (head - band * 1e13) >= cfg.fair_age_ms then
    return best
  end
  local from = string.format('%.0f', head)
  local to = string.format('%.0f', (band + cfg.fair_window + 1) * 1e13 - 1)
  local chosen, fewest = best, nil
  local weighed = 0
  local top = tonumber(to)
  for page = 0, SCARCE_PAGES - 1 do
    local near
    if page == 0 and first then
      -- ``first`` is fheads from rank 0 in order: the window (scores head..to)
      -- is a run of it, whole when ``first`` is all of fheads or goes past ``to``.
      near = {}
      for i = 1, #first, 2 do
        local sc = tonumber(first[i + 1])
        if sc > top then
          break
        end
        if sc >= head and #near < SCARCE_PAGE then
          near[#near + 1] = first[i]
        end
      end
      local last = tonumber(first[#first])
      if #first >= 2 * SCARCE_PAGE and last <= top then
        near = nil  -- the window may go on past the page: read it
      end
    end
    near = near or redis.call('ZRANGE', P .. 'fheads', from, to, 'BYSCORE',
      'LIMIT', int(page * SCARCE_PAGE), int(SCARCE_PAGE))
    if #near == 0 or (page == 0 and #near == 1) then
      break  -- (one family in the window: nothing to weigh, no call made)
    end
    local can = redis.call('SMISMEMBER', ck, unpack(near))
    for i, yes in ipairs(can) do
      if yes == 1 then
        weighed = weighed + 1
        if near[i] ~= best then
          fewest = fewest or redis.call('SCARD', P .. 'compat-rev:' .. best)
          local n = redis.call('SCARD', P .. 'compat-rev:' .. near[i])
          if n < fewest then
            chosen, fewest = near[i], n
          end
        end
        if weighed >= SCARCE_FAMILIES then
          return chosen
        end
      end
    end
    if #near < SCARCE_PAGE then
      break
    end
  end
  return chosen
end

-- Warm-first with bounded delay (config ``affinity``, default on). From the
-- best family the profile can serve (``top``) on, the next
-- AFFINITY_CANDIDATES (8) families it can serve, in queue order:
-- * a family whose models are all in this worker's GPU, within
--   ``affinity_window`` priority points (default 10) of ``top``, is taken
--   first (the first such in queue order);
-- * otherwise a family whose models are warm on another worker that will be
--   free soon (idle, or its running job's expected end known and early
--   enough) is left to that worker for a delay: this worker's expected load
--   time (``load_ms_<tier>`` of its worst model's tier here, remote when
--   absent), capped at ``affinity_max_delay_ms``, from the family's best
--   job's effective time. After it, any compatible worker takes the job;
-- * the first family not left to another worker is taken (``preferred``,
--   prefer_scarce's choice, when it is one of them).
-- Returns the family, or nil and the ms until the first delay ends.
-- Families the profile can serve that a warm-first claim weighs, from the best
-- on, found among the next AFFINITY_SCAN in queue order (families of other
-- services or needs in between are skipped, not counted: 8 of them hid a
-- family warm on this worker).
local AFFINITY_CANDIDATES, AFFINITY_SCAN = 8, '64'

local function warm_first(P, ck, top, preferred, worker, now, cfg)
  local head = redis.call('ZSCORE', P .. 'fheads', top)
  if not head then
    return preferred, 0
  end
  local near = redis.call('ZRANGE', P .. 'fheads', string.format('%.0f', head), '+inf', 'BYSCORE',
    'LIMIT', '0', AFFINITY_SCAN, 'WITHSCORES')
  local names, scores = {}, {}
  for i = 1, #near, 2 do
    names[#names + 1] = near[i]
    scores[#scores + 1] = tonumber(near[i + 1])
  end
  local can = redis.call('SMISMEMBER', ck, unpack(names))
  local cands, cscores = {}, {}
  for i, yes in ipairs(can) do
    if yes == 1 then
      cands[#cands + 1] = names[i]
      cscores[#cscores + 1] = scores[i]
      if #cands == AFFINITY_CANDIDATES then
        break
      end
    end
  end
  if #cands == 0 then
    return preferred, 0
  end
  local listed = redis.call('HMGET', P .. 'family-models', unpack(cands))
  local mk = P .. 'models:' .. worker
  -- Per candidate: its models (false: none) and their tiers on this worker,
  -- all read with one HMGET.
  local needs, tiers, all = {}, {}, {}
  for i, fsig in ipairs(cands) do
    needs[i] = models_of_family(P, fsig, listed[i]) or false
    for _, m in ipairs(needs[i] or {}) do
      all[#all + 1] = m
    end
  end
  local mine = #all > 0 and redis.call('HMGET', mk, unpack(all)) or {}
  local at = 0
  for i = 1, #cands do
    if needs[i] then
      tiers[i] = {unpack(mine, at + 1, at + #needs[i])}
      at = at + #needs[i]
    end
  end
  local function info(i)
    return needs[i]
  end
  if #all > 0 then
    local last_band = math.floor(cscores[1] / 1e13) + cfg.affinity_window
    for i, fsig in ipairs(cands) do
      if math.floor(cscores[i] / 1e13) > last_band then
        break
      end
      if info(i) then
        local all_gpu = true
        for _, t in ipairs(tiers[i]) do
          if t ~= 'gpu' then
            all_gpu = false
            break
          end
        end
        if all_gpu then
          return fsig, 0
        end
      end
    end
  end
  local lefts = {}
  local any_busy = redis.call('EXISTS', P .. 'busy') == 1
  local function left_to_other(i)
    if lefts[i] then
      return lefts[i]
    end
    local models = info(i)
    lefts[i] = 0
    if not models then
      return 0
    end
    local delay = 0
    for _, t in ipairs(tiers[i]) do
      local ms = cfg.load_ms[t or 'remote'] or cfg.load_ms.remote
      if ms > delay then
        delay = ms
      end
    end
    delay = math.min(delay, cfg.affinity_max_delay_ms)
    local band = math.floor(cscores[i] / 1e13)
    local until_ms = cscores[i] - band * 1e13 + delay
    if delay > 0 and now < until_ms and warm_elsewhere(P, worker, models, until_ms, any_busy) then
      lefts[i] = until_ms - now
    end
    return lefts[i]
  end
  local wait = 0
  for i, fsig in ipairs(cands) do
    if fsig == preferred and left_to_other(i) == 0 then
      return fsig, 0
    end
  end
  for i, fsig in ipairs(cands) do
    local left = left_to_other(i)
    if left == 0 then
      return fsig, 0
    elseif wait == 0 or left < wait then
      wait = left
    end
  end
  return nil, math.max(1, wait)
end

-- The best class a restricted profile (a workflow, or denied customers) may
-- take, and its family; every candidate is checked in full (``matches``).
-- A workflow-restricted profile looks only at its workflow's live classes;
-- one with denied customers walks its families' classes in order, skipping
-- the denied, and stops at the first family that cannot beat its best.
local function pick_restricted(P, ck, profile)
  local best, best_score, best_family = nil, nil, nil
  local function consider(csig, score, fsig, json)
    local n = tonumber(score)
    if best_score ~= nil and (n > best_score or (n == best_score and csig > best)) then
      return false
    end
    if not json or not matches(profile, cjson.decode(json)) then
      return false
    end
    best, best_score, best_family = csig, n, fsig
    return true
  end
  if present(profile.workflow_id) then
    local classes = redis.call('SMEMBERS', P .. 'wf-classes:' .. profile.workflow_id)
    for first = 1, #classes, 500 do
      local chunk = {unpack(classes, first, math.min(first + 499, #classes))}
      local scores = redis.call('ZMSCORE', P .. 'heads', unpack(chunk))
      local families = redis.call('HMGET', P .. 'class-family', unpack(chunk))
      local defs = redis.call('HMGET', P .. 'classes', unpack(chunk))
      for j, score in ipairs(scores) do
        if score and families[j] and redis.call('SISMEMBER', ck, families[j]) == 1 then
          consider(chunk[j], score, families[j], defs[j])
        end
      end
    end
    return best, best_family
  end
  local families = redis.call('SMEMBERS', ck)
  local order = {}
  for first = 1, #families, 1000 do
    local chunk = {unpack(families, first, math.min(first + 999, #families))}
    local scores = redis.call('ZMSCORE', P .. 'fheads', unpack(chunk))
    for j, score in ipairs(scores) do
      if score then
        order[#order + 1] = {tonumber(score), chunk[j]}
      end
    end
  end
  table.sort(order, function(a, b)
    return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
  end)
  for _, entry in ipairs(order) do
    if best_score ~= nil and entry[1] > best_score then
      break
    end
    local fk = P .. 'fam:' .. entry[2]
    local from = 0
    local done = false
    while not done do
      local heads = redis.call('ZRANGE', fk, from, from + 63, 'WITHSCORES')
      if #heads == 0 then
        break
      end
      local names = {}
      for i = 1, #heads, 2 do
        names[#names + 1] = heads[i]
      end
      local defs = redis.call('HMGET', P .. 'classes', unpack(names))
      for i, csig in ipairs(names) do
        local score = heads[2 * i]
        if best_score ~= nil and tonumber(score) > best_score then
          done = true
          break
        end
        if consider(csig, score, entry[2], defs[i]) then
          done = true
          break
        end
      end
      from = from + 64
    end
  end
  return best, best_family
end

-- Ids of jobs the queue failed on its own kept for the workers to report, at most.
local GAVE_UP_KEPT = '9999'

-- What a job's run leaves in its record that goes with the run when the job goes back
-- to pending: its lease, its cold start and how far it got. A job waiting again showed
-- the last run's progress (60% of a run that died); the next run reports from 0.
local function forget_run(jk, ...)
  redis.call('HDEL', jk, 'lease_until', 'preparing', 'progress', 'progress_details', ...)
end

-- Wait histogram buckets: upper bound in ms, and the field's "le" text
-- (seconds). Must equal capability_router.metrics.WAIT_BOUNDS (a test checks).
local WAIT_BUCKETS = {
  {5, '0.005'}, {10, '0.01'}, {25, '0.025'}, {50, '0.05'}, {100, '0.1'},
  {250, '0.25'}, {500, '0.5'}, {1000, '1'}, {2500, '2.5'}, {5000, '5'},
  {10000, '10'}, {30000, '30'}, {60000, '60'}, {120000, '120'}, {300000, '300'},
  {600000, '600'}, {1800000, '1800'}, {3600000, '3600'},
}

-- Counts one claimed job's wait (ms) in P.."metrics": its bucket and the sum.
-- Buckets are not cumulative, so a claim increments only one; the count is
-- their total, so it is not written.
local function observe_wait(P, wait)
  local le = '+Inf'
  for _, b in ipairs(WAIT_BUCKETS) do
    if wait <= b[1] then
      le = b[2]
      break
    end
  end
  local mk = P .. 'metrics'
  redis.call('HINCRBY', mk, 'wait:' .. le, '1')
  redis.call('HINCRBY', mk, 'wait:sum_ms', int(wait))
end

-- Pool observability ------------------------------------------------------
-- Per namespace (pool), one HASH per minute in a ring of OBS_SLOTS slots,
-- P.."obs:"..(minute % OBS_SLOTS), whose field "m" names the minute (ms
-- since the epoch / 60000) it holds: a slot found holding an older minute is
-- emptied first, so a pool never has more than OBS_SLOTS minute hashes (25 h)
-- whatever clock the callers pass (the simulator's virtual time included);
-- each slot also expires OBS_TTL_MS after it was started, so an abandoned
-- pool leaves nothing. Written by emp_claim (a job claimed, or none: a tick),
-- emp_complete, and every function that fails a job (fail_job) with the time they
-- are given; read by
-- capability_router/pool_metrics.py (which repeats OBS_SLOTS; a test checks).
-- Fields of a minute (counters unless said):
--   claims, wait_ms (sum), "wait:<le>" (WAIT_BUCKETS, not cumulative)
--   hit:warm|disk|download|none|unreported   model residency a claim saw
--   done, run_ms (sum of started..completed), failed
--   routed, route_pool_ok, route_time_ok   completions with a routing decision
--   busy_ms, live_ms   integrals of running jobs and live workers over the minute
--   depth, busy, live, desired   gauges: the last sample of the minute (see observe)
-- P.."obs" HASH holds the state the integrals continue from: t (ms of the
-- last observation), m (its minute), busy, live, depth, desired, s (ms of the
-- last gauge sample), ab / al (busy / live worker-ms of minute m not yet
-- written to its slot: at most OBS_SAMPLE_MS worth).
local OBS_SLOTS = 1500
local OBS_TTL_MS = '90000000'
-- Minutes without any observation filled in at the next one, at most.
local OBS_CATCHUP = 60
-- Gauges (queue depth, running jobs, live workers, desired) are read from the
-- indexes at most this often (ms) within a minute.
local OBS_SAMPLE_MS = 1000

-- The key of ``minute``'s slot, emptied when it held an older minute; nil
-- when it already holds a newer one (an observation older than 25 h).
local function obs_slot(P, minute)
  local key = P .. 'obs:' .. int(minute % OBS_SLOTS)
  local held = tonumber(redis.call('HGET', key, 'm'))
  if held ~= minute then
    if held and held > minute then
      return nil
    end
    redis.call('DEL', key)
    redis.call('HSET', key, 'm', int(minute))
    redis.call('PEXPIRE', key, OBS_TTL_MS)
  end
  return key
end

-- The model residency a claim sees for the claimed job on ``worker``:
-- 'warm' (every model of the job in its GPU), 'disk' (every one on the
-- machine, in RAM or on disk, some not in the GPU), 'download' (some model
-- not on the machine, or "remote"), 'none' (the job names no model),
-- 'unreported' (the worker reports no residency at all).
local function model_hit(P, family, worker)
  local models = family and models_of_family(P, family,
    redis.call('HGET', P .. 'family-models', family))
  if not models then
    return 'none'
  end
  local tiers = redis.call('HMGET', P .. 'models:' .. worker, unpack(models))
  local hit, any = 'warm', false
  for i = 1, #models do
    local t = tiers[i]
    if t then
      any = true
    end
    if not t or t == 'remote' then
      hit = 'download'
    elseif t ~= 'gpu' and hit == 'warm' then
      hit = 'disk'
    end
  end
  if not any and redis.call('HEXISTS', P .. 'residents', worker) == 0 then
    return 'unreported'
  end
  return hit
end

-- One observation at ``now`` (ms text): the integrals since the last one
-- (busy jobs and live workers as they were then) go into the minutes they
-- cover, ``counts`` (field -> increment, or nil: a tick, which only moves
-- the integrals and gauges of a minute already started) into now's minute.
-- ``delta`` is what the event did to the pool's running jobs (+1 a claim, -1
-- a completion or failure). The gauges are sampled from the indexes (which
-- also corrects busy for jobs that left otherwise: expired leases, cancels)
-- at the first observation of a minute and at most every OBS_SAMPLE_MS in
-- between; the minute keeps the last sample. Between samples the current
-- minute's integrals build up in the state (ab, al) and are written with the
-- next sample. O(1): a fixed number of calls, plus at most OBS_CATCHUP
-- minutes filled after a gap (each minute once). An observation older than
-- the last is counted but moves no integral.
local function observe(P, now, counts, delta)
  local sk = P .. 'obs'
  local s = redis.call('HMGET', sk, 't', 'm', 'busy', 'live', 'depth', 'desired', 's', 'ab', 'al')
  local t, at, sm = tonumber(s[1]), tonumber(now), tonumber(s[2])
  local minute = math.floor(at / 60000)
  if not counts and sm ~= minute then
    -- A tick starts no minute: idle workers' claims create no key (the next
    -- job's observation fills the quiet minutes in, up to OBS_CATCHUP).
    return
  end
  local key
  if sm == minute then
    key = P .. 'obs:' .. int(minute % OBS_SLOTS)
  else
    key = obs_slot(P, minute)
    if not key then
      return
    end
  end
  if counts then
    for field, n in pairs(counts) do
      redis.call('HINCRBY', key, field, int(n))
    end
  end
  if t and at < t then
    return
  end
  local busy, live = tonumber(s[3]) or 0, tonumber(s[4]) or 0
  local ab, al = tonumber(s[8]) or 0, tonumber(s[9]) or 0
  if t and sm == minute then
    ab, al = ab + busy * (at - t), al + live * (at - t)
  elseif t then
    -- Minutes since the last observation's: each gets its share; the last
    -- observation's minute also gets what built up in the state.
    local depth = tonumber(s[5]) or 0
    local m = math.max(sm, minute - OBS_CATCHUP)
    while m < minute do
      local span = math.min(at, (m + 1) * 60000) - math.max(t, m * 60000)
      local b, l = busy * span, live * span
      if m == sm then
        b, l = b + ab, l + al
      end
      if b > 0 or l > 0 or depth > 0 then
        local mk = obs_slot(P, m)
        if mk then
          if m > sm then
            -- a minute without observations: it kept the last gauges
            redis.call('HSET', mk, 'depth', s[5] or '0', 'busy', s[3] or '0',
              'live', s[4] or '0', 'desired', s[6] or '')
          end
          if b > 0 then
            redis.call('HINCRBY', mk, 'busy_ms', int(b))
          end
          if l > 0 then
            redis.call('HINCRBY', mk, 'live_ms', int(l))
          end
        end
      end
      m = m + 1
    end
    local span = at - math.max(t, minute * 60000)
    ab, al = busy * span, live * span
  end
  local sampled = tonumber(s[7])
  if sampled and sm == minute and at >= sampled and at - sampled < OBS_SAMPLE_MS then
    redis.call('HSET', sk, 't', now, 'busy', int(math.max(0, busy + (delta or 0))),
      'ab', int(ab), 'al', int(al))
    return
  end
  if ab > 0 then
    redis.call('HINCRBY', key, 'busy_ms', int(ab))
  end
  if al > 0 then
    redis.call('HINCRBY', key, 'live_ms', int(al))
  end
  busy = redis.call('ZCARD', P .. 'status:assigned') +
    redis.call('ZCARD', P .. 'status:in_progress')
  live = redis.call('ZCOUNT', P .. 'workers', now, '+inf')
  local depth = redis.call('ZCARD', P .. 'status:pending')
  local desired = redis.pcall('GET', P .. 'desired')
  if type(desired) ~= 'string' or not tonumber(desired) then
    desired = ''
  end
  redis.call('HSET', key, 'depth', depth, 'busy', busy, 'live', live, 'desired', desired)
  redis.call('HSET', sk, 't', now, 'm', int(minute), 'busy', busy, 'live', live,
    'depth', depth, 'desired', desired, 's', now, 'ab', '0', 'al', '0')
end

-- The "wait:<le>" field counting ``wait`` ms.
local function wait_field(wait)
  for _, b in ipairs(WAIT_BUCKETS) do
    if wait <= b[1] then
      return 'wait:' .. b[2]
    end
  end
  return 'wait:+Inf'
end

-- A completion's counts: run time since started (else assigned), and, when
-- the job carries a routing decision, whether it ran in the pool the router
-- chose and within a factor 2 of the predicted run time.
local function completion_counts(P, now, started, assigned, routing, predicted)
  local counts = {done = 1}
  local from = tonumber(started) or tonumber(assigned)
  local run = from and math.max(0, now - from)
  if run then
    counts.run_ms = run
  end
  if routing and string.sub(routing, 1, 1) == '{' then
    counts.routed = 1
    local ns = string.gsub(string.sub(P, 6, -3), '%p', '%%%0')
    if string.find(routing, '"pool"%s*:%s*"' .. ns .. '"') then
      counts.route_pool_ok = 1
    end
    local want = tonumber(predicted)
    if run and want and want > 0 and run * 2 >= want and run <= want * 2 then
      counts.route_time_ok = 1
    end
  end
  return counts
end

-- Ends a job failed (end_job: ``err`` its last_error, ``data`` its job_failed event)
-- and counts one failure in the pool's minute. Every path that fails a job comes
-- here, so each counts once: a run's failure (emp_fail), an attempt acknowledged
-- without an outcome (ack_attempts; release 29, before which it was not counted and
-- emp_ack left the job busy in the pool's integrals until the next gauge sample),
-- attempts used up and an uncountable count (gave_up; release 28). ``delta`` is
-- what it did to the running jobs: -1 a leased job, 0 a pending one. No run time
-- or wait: the claim counted the wait, and run time is that of completions.
local function fail_job(P, jk, id, err, data, now, delta, ended, drop)
  end_job(P, jk, id, 'failed', {'failed_at', now, 'last_error', err}, 'job_failed', data,
    now, nil, nil, ended, drop)
  observe(P, now, {failed = 1}, delta)
end

-- A job the queue failed on its own (its attempts used up, or a count it cannot
-- increment: fail_uncountable). No run saw this end, so Celery's result backend
-- would never hear of it: a worker drains the list (emp_tasks.queue_outcomes) and
-- stores the FAILURE.
local function gave_up(P, jk, id, err, data, now, delta)
  fail_job(P, jk, id, err, data, now, delta)
  redis.call('LPUSH', P .. 'gave-up', id)
  redis.call('LTRIM', P .. 'gave-up', '0', GAVE_UP_KEPT)
end

-- An attempt that ended without an outcome (lease expired, worker lost,
-- message requeued): back to pending at its old place, or failed when the
-- job has used up its attempts.
local function return_to_pending(P, cfg, id, reason, now)
  local jk = P .. 'job:' .. id
  local f = redis.call('HMGET', jk, 'status', 'class', 'score', 'attempts', 'worker_id',
    'attempts_before', 'service_releases', 'retries', 'unreceived', 'replaces',
    'replaced_retries')
  if not ACTIVE[f[1]] then
    redis.call('ZREM', P .. 'leases', id)
    return false
  end
  local attempts = tonumber(f[4]) or 0
  -- Attempts of this run only: a resubmitted job keeps counting (fencing needs
  -- ever-new attempt numbers) but gets its full allowance again. Attempts its
  -- service refused (emp_release) spent nothing either, nor claims their worker
  -- never received (emp_unclaim), nor those that ended in a retry (an outcome:
  -- the task's max_retries bounds them, up to 100; those of a task since replaced
  -- are in replaced_retries) or a replace (emp_replace).
  if attempts - (tonumber(f[6]) or 0) - (tonumber(f[7]) or 0) - (tonumber(f[8]) or 0)
      - (tonumber(f[9]) or 0) - (tonumber(f[10]) or 0) - (tonumber(f[11]) or 0)
      >= cfg.max_attempts then
    local err = reason .. '; gave up after ' .. attempts .. ' attempts'
    gave_up(P, jk, id, err, {worker_id = f[5], error = err, attempt = attempts}, now, -1)
    return 'failed'
  end
  redis.call('HSET', jk, 'status', 'pending', 'worker_id', '', 'last_error', reason,
    'requeued_attempt', attempts)
  index_status(P, id, f[1], 'pending', now)
  forget_run(jk)
  redis.call('ZREM', P .. 'leases', id)
  emit(P, cfg, id, 'job_requeued', {worker_id = f[5], reason = reason, attempt = attempts}, now)
  file_pending(P, id, f[2], f[3], now)
  return 'pending'
end

-- Claims housekeep at most this often (ms) while they find work; a claim
-- that finds nothing always housekeeps before it gives up.
local HOUSEKEEP_EVERY_MS = 100

-- Due retries into pending, expired leases back to pending; bounded work.
local function housekeep(P, now, limit)
  local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'LIMIT', '0', limit)
  for _, id in ipairs(due) do
    redis.call('ZREM', P .. 'delayed', id)
    local f = redis.call('HMGET', P .. 'job:' .. id, 'status', 'class', 'score')
    if f[1] == 'pending' then
      file_pending(P, id, f[2], f[3], now)
    end
  end
  local expired = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now, 'LIMIT', '0', limit)
  if #expired > 0 then
    local cfg = config(P)
    for _, id in ipairs(expired) do
      return_to_pending(P, cfg, id, 'lease expired', now)
    end
  end
  return #due + #expired
end

-- Broker acknowledgements of attempts, ARGV pairs from ``first`` on. The
-- outcome was recorded by complete/fail/retry/cancel before; an attempt still
-- active here ended with no outcome (a hard time limit, say), which is
-- recorded as a failure rather than left running (fail_job: counted in the pool's
-- minute). Acks are batched: workers send them with their next claim, or within a
-- third of a lease.
local function ack_attempts(P, args, first, now)
  local failed = 0
  for i = first, #args, 2 do
    local id, attempt = args[i], args[i + 1]
    local jk = P .. 'job:' .. id
    local f = fence(jk, attempt, 'worker_id')
    if f then
      local err = 'task ended without recording an outcome (hard time limit or crash)'
      fail_job(P, jk, id, err, {worker_id = f[3], attempt = tonumber(f[2]), error = err},
        now, -1)
      failed = failed + 1
    end
  end
  return failed
end

-- functions ---------------------------------------------------------------

--[[ emp_version: KEYS none. Returns the library version string. ]]
local function emp_version()
  return VERSION
end

--[[ emp_register_worker
KEYS[1] config  KEYS[2] profiles  KEYS[3] classes
ARGV[1] profile signature  ARGV[2] normalized profile JSON
ARGV[3] now ms (optional)
Returns the number of live families the profile can serve. Costs O(live
families) for a new profile (dead classes and families are dropped), O(1)
for a known one. ]]
local function emp_register_worker(keys, args)
  local P = prefix_of(keys[1])
  local psig, json = args[1], args[2]
  redis.call('ZADD', P .. 'profile-seen', now_ms(args[3]), psig)
  if redis.call('HSETNX', keys[2], psig, json) == 0 then
    return redis.call('SCARD', P .. 'compat:' .. psig)
  end
  local profile = cjson.decode(json)
  for _, service in ipairs(profile.services or {}) do
    redis.call('SADD', P .. 'service-profiles:' .. service, psig)
  end
  if is_restricted(profile) then
    redis.call('HSET', P .. 'restricted', psig, json)
  end
  local families = redis.call('HGETALL', P .. 'families')
  local n = 0
  for i = 1, #families, 2 do
    if serves_family(profile, cjson.decode(families[i + 1])) then
      link(P, psig, families[i])
      n = n + 1
    end
  end
  return n
end

-- The value of field ``name`` among name, value pairs from args[first]; nil if absent.
local function field_of(args, first, name)
  for i = first, #args, 2 do
    if args[i] == name then
      return args[i + 1]
    end
  end
  return nil
end

--[[ emp_enqueue
KEYS[1] config  KEYS[2] job record  KEYS[3] classes  KEYS[4] profiles
KEYS[5] the id's fence (emp_fence_id; optional)
ARGV[1] job id  ARGV[2] class signature  ARGV[3] class JSON
ARGV[4] effective priority 0-100  ARGV[5] due ms (0: now)
ARGV[6] Celery message JSON  ARGV[7] now ms (0: server time)
ARGV[8] effective time ms ('': now)  ARGV[9] family signature
ARGV[10] family JSON  ARGV[11..] record field name, value pairs; a pair
named id_token (the token of the id's reservation) is checked against the fence
and not stored
Returns {'queued'|'delayed'}, {'duplicate', status}, or {'fenced'} when the id's
reservation this filing was made under was taken over by a submit to another
pool (capability_router.job_id_reservations): that submit owns the id now. ]]
local function emp_enqueue(keys, args)
  local P = prefix_of(keys[1])
  local id, csig, class_json = args[1], args[2], args[3]
  local due = tonumber(args[5]) or 0
  local now = now_ms(args[7])
  local at = tonumber(args[8]) or tonumber(now)
  local score = string.format('%.0f', (100 - tonumber(args[4])) * 1e13 + at)
  local jk = keys[2]
  local status = redis.call('HGET', jk, 'status')
  if status then
    return {'duplicate', status}
  end
  local token = keys[5] and field_of(args, 11, 'id_token')
  if token and redis.call('GET', keys[5]) == token then
    return {'fenced'}
  end
  local fsig = ensure_class(P, csig, class_json, args[9], args[10])
  redis.call('HINCRBY', P .. 'live', csig, '1')
  redis.call('HSET', jk, 'job_id', id, 'class', csig, 'score', score,
    'status', 'pending', 'attempts', '0', 'retries', '0', 'created_at', now,
    'message', args[6], unpack(args, 11))
  if token then
    redis.call('HDEL', jk, 'id_token')
  end
  redis.call('ZADD', P .. 'jobs', now, id)
  index_status(P, id, nil, 'pending', now)
  local data = {}
  local wf = {}
  local routing
  for i = 11, #args, 2 do
    local name, value = args[i], args[i + 1]
    if name == 'predicted_ms' then
      add_load(P, value, 1)
    elseif name == 'routing' and string.sub(value, 1, 1) == '{' then
      routing = value
    end
    local by = BY_FIELD[name]
    if by and value ~= '' then
      local ik = P .. 'by:' .. by .. ':' .. value
      redis.call('ZADD', ik, now, id)
      redis.call('SADD', P .. 'indexes', ik)
    end
    if name == 'service_required' then
      data.job_type = value
    elseif name == 'priority' then
      data.priority = tonumber(value)
    elseif name == 'customer_id' or name == 'workflow_id' then
      data[name] = value
    end
    if name == 'workflow_id' then
      wf[1] = value
    elseif name == 'current_step' then
      wf[2] = value
    elseif name == 'total_steps' then
      wf[3] = value
    elseif name == 'customer_id' then
      wf[4] = value
    end
  end
  local cfg = event_config(P)
  if due > tonumber(now) then
    redis.call('HSET', jk, 'retry_at', args[5])
    redis.call('ZADD', P .. 'delayed', args[5], id)
    data.run_at = due
  else
    file_pending(P, id, csig, score, now, fsig)
  end
  emit(P, cfg, id, 'job_submitted', data, now, true, routing and 'routing', routing)
  emit_workflow(P, cfg, id, 'job_submitted', wf, now)
  return {due > tonumber(now) and 'delayed' or 'queued'}
end

--[[ emp_fence_id
KEYS[1] job record  KEYS[2] the id's fence
ARGV[1] token of the reservation fenced out  ARGV[2] ms the fence lasts
A submit taking over a job id reserved for this pool, whose job it does not find
(capability_router.job_id_reservations): from now on the filing made under that
reservation is refused here ({'fenced'} from emp_enqueue), however late it comes.
Returns {'exists', status} when the job is filed (nothing written), else {'fenced'}. ]]
local function emp_fence_id(keys, args)
  local status = redis.call('HGET', keys[1], 'status')
  if status then
    return {'exists', status}
  end
  redis.call('SET', keys[2], args[1], 'PX', args[2])
  return {'fenced'}
end

--[[ emp_id_swap
KEYS[1] a job id's reservation (outside every pool's hash tag)
ARGV[1] the value it must hold  ARGV[2] its new value ('': delete it)
ARGV[3] seconds the new value lasts
Compare and set of one key: a reservation is replaced or released only by the
submit that read it. Returns 1 when done, 0 when it held something else. ]]
local function emp_id_swap(keys, args)
  if redis.call('GET', keys[1]) ~= args[1] then
    return 0
  end
  if args[2] == '' then
    redis.call('DEL', keys[1])
  else
    redis.call('SET', keys[1], args[2], 'EX', args[3])
  end
  return 1
end

-- The attempt number a claim gives a job, from the record's ``attempts`` (``stored``),
-- decided before the claim writes the record: counted here in the form HINCRBY
-- accepts ('0', or up to 9 digits without a leading 0 or '+'), to be written with the
-- assignment (second value true); any other value is left to HINCRBY, which refuses
-- what it always refused ('007', '-0', '1.5', past 2^63 - 1) and keeps a count past
-- 2^53 exact (a Lua number would round it). Under pcall: a refusal writes nothing and
-- returns nil and Redis's words, so the claim can fail the job instead of raising
-- after it took the job out of its pending index (a function is not rolled back).
local function next_attempt(jk, stored)
  stored = stored or '0'
  if stored == '0' or string.match(stored, '^%-?[1-9]%d?%d?%d?%d?%d?%d?%d?%d?$') then
    return tonumber(stored) + 1, true
  end
  local counted = redis.pcall('HINCRBY', jk, 'attempts', '1')
  if type(counted) ~= 'number' then
    return nil, tostring(counted.err or counted)
  end
  return counted, false
end

-- Fails a job a claim popped but cannot give an attempt number (its record's
-- ``attempts`` is no count Redis can increment: a hand edit, another writer). Failed
-- rather than raised: the claim had already taken it out of its class's pending set,
-- so raising left it pending in its record and in no index (claimable by nobody,
-- shown pending for ever), and raising before that would leave it at the head of its
-- class, where every worker's claim would stop on it. It ends as a job the queue
-- gave up on (return_to_pending): ``last_error`` naming the field, ``job_failed``
-- (webhooks), the gave-up list (Celery's FAILURE); the count is left as stored.
local function fail_uncountable(P, id, jk, stored, refusal, now)
  local shown = string.len(stored) > 64 and (string.sub(stored, 1, 64) .. '...') or stored
  local err = "cannot claim: the job record's attempts field holds '" .. shown ..
    "', which Redis cannot increment (" .. string.gsub(refusal, '^ERR ', '') .. ')'
  gave_up(P, jk, id, err, {error = err}, now, 0)
end

-- Jobs one claim fails as uncountable (fail_uncountable), and classes without a
-- pending job it takes out of their family's claim index, before it gives up for
-- now: bounds the claim's time; the reply then asks the worker back at once.
local UNCOUNTABLE_PER_CLAIM = 32

--[[ emp_claim
KEYS[1] config  KEYS[2] profiles  KEYS[3] heads  KEYS[4] idle
ARGV[1] profile signature  ARGV[2] worker id  ARGV[3] lease ms
ARGV[4] idle mark ms  ARGV[5] now ms (0: server time)
ARGV[6] '1' when this worker's last claim found nothing (it has an idle mark)
ARGV[7..] job id, attempt pairs this worker acknowledges first (emp_ack)
Returns {1, job id, attempt, message JSON} or {0, ms until the next retry
or lease expiry is due (0: none)}. Errors with NOPROFILE when the profile is
not registered (after a server restart without persistence). A claimed job's
wait is counted in the "wait" histogram of P.."metrics". A job whose record's
``attempts`` Redis cannot increment is failed, not claimed (fail_uncountable), and
the claim goes on to the next job; so it does past a class it finds in its family's
claim index without a pending job, which it takes out of it (up to
UNCOUNTABLE_PER_CLAIM of both a claim; past them the reply's ms is 1).
Pool observability (observe): a claimed job counts in its minute's claims,
wait and model hit; a job failed as uncountable, failed by housekeeping when
its attempts ran out, or failed by an ack the claim carries counts as failed
(fail_job); a claim that finds nothing is a tick (integrals and gauges of a
minute already started; it creates no key).
Warm-first (config ``affinity``, see warm_first; profiles without a workflow
restriction or denied customers, while some worker reports a residency): a
job warm on this worker is preferred within ``affinity_window``; a job warm on
another soon-free worker is left to it for at most its load time here, and
the reply's ms then counts until that delay ends. ]]
local function emp_claim(keys, args)
  local P = prefix_of(keys[1])
  local psig, worker = args[1], args[2]
  local now = now_ms(args[5])
  local member = psig .. ':' .. worker
  ack_attempts(P, args, 7, now)
  local cfg = config(P)
  local swept = now - cfg.swept_at >= HOUSEKEEP_EVERY_MS or tonumber(now) < cfg.swept_at
  if swept then
    housekeep(P, now, '50')
    redis.call('HSET', keys[1], 'swept_at', now)
  end
  -- A profile is marked seen by a claim that housekeeps (at most every 100 ms
  -- per pool) or finds nothing, not by every claim: no write per job, and a
  -- busy worker still housekeeps often within the retention (1 h). Dropped
  -- anyway, it finds nothing, gets NOPROFILE and registers again.
  if swept then
    redis.call('ZADD', P .. 'profile-seen', now, psig)
  end
  local compat = P .. 'compat:' .. psig
  local restricted = redis.call('HGET', P .. 'restricted', psig)
  restricted = restricted and cjson.decode(restricted)
  -- ms until a job left to a warm worker is this worker's (warm_first)
  local deferred = 0
  local affinity = cfg.affinity and redis.call('HLEN', P .. 'residents') > 0
  local function pick()
    if restricted then
      return pick_restricted(P, compat, restricted)
    end
    local fsig, head, page = pick_class(compat, P .. 'fheads')
    if fsig then
      local top = fsig
      fsig = prefer_scarce(P, compat, fsig, tonumber(now), cfg, head, page)
      if affinity then
        fsig, deferred = warm_first(P, compat, top, fsig, worker, tonumber(now), cfg)
        if not fsig then
          return nil
        end
      end
      -- The family's best class, and the score of the next (false: none), from
      -- which the family's head follows once the claim has popped a job.
      local two = redis.call('ZRANGE', P .. 'fam:' .. fsig, '0', '1', 'WITHSCORES')
      return two[1], fsig, two[4] or false
    end
    return nil
  end
  local best, family, next_head = pick()
  if not best and not swept then
    -- Picking again helps only when housekeeping filed jobs.
    local moved = housekeep(P, now, '50')
    redis.call('HSET', keys[1], 'swept_at', now)
    if moved > 0 then
      best, family, next_head = pick()
    end
  end
  -- The best job, its record and its attempt number; a job that can have none is
  -- failed (fail_uncountable) and the claim picks again.
  local id, jk, f, attempt, counted
  local skipped = 0
  while best do
    id = redis.call('ZPOPMIN', P .. 'pending:' .. best)[1]
    if id then
      unindex_pending(P, family or best, id, best)
      refresh_head(P, best, family, next_head)
      jk = P .. 'job:' .. id
      -- One read of the record for the attempt count and what the reply and the
      -- wait need; the count is written with the rest (next_attempt).
      f = redis.call('HMGET', jk, 'message', 'retry_at', 'created_at', 'predicted_ms',
        'attempts')
      attempt, counted = next_attempt(jk, f[5])
      if attempt then
        break
      end
      fail_uncountable(P, id, jk, f[5] or '', counted, now)
    else
      -- A class in its family's claim index without a pending job: what release 27's
      -- cancel of a job filed under the family left once the class's class-family
      -- entry was missing (unfile_pending). Every claim that reached it raised; it
      -- leaves the family's index (and the family fheads, if it was the last) and
      -- the claim picks again.
      refresh_head(P, best, family)
    end
    skipped = skipped + 1
    best, family, next_head = nil, nil, nil
    if skipped < UNCOUNTABLE_PER_CLAIM then
      best, family, next_head = pick()
    else
      deferred = 1
    end
  end
  if not best then
    if redis.call('HEXISTS', keys[2], psig) == 0 then
      return redis.error_reply('NOPROFILE profile ' .. psig .. ' is not registered')
    end
    redis.call('ZADD', P .. 'profile-seen', now, psig)
    redis.call('ZADD', keys[4], int(now + args[4]), member)
    local next_due = 0
    local d = redis.call('ZRANGE', P .. 'delayed', '0', '0', 'WITHSCORES')
    local l = redis.call('ZRANGE', P .. 'leases', '0', '0', 'WITHSCORES')
    for _, r in ipairs({d, l}) do
      if r[2] then
        local wait = math.max(1, tonumber(r[2]) - now)
        if next_due == 0 or wait < next_due then
          next_due = wait
        end
      end
    end
    if deferred > 0 and (next_due == 0 or deferred < next_due) then
      next_due = deferred
    end
    observe(P, now, nil, 0)
    return {0, math.floor(next_due)}
  end
  if args[6] == '1' then
    redis.call('ZREM', keys[4], member)
  end
  -- When the job entered pending (submit, retry, requeue); read before
  -- index_status moves it.
  local entered = redis.call('ZSCORE', P .. 'status:pending', id)
  local deadline = int(now + args[3])
  local set = {'status', 'assigned', 'worker_id', worker, 'assigned_at', now,
    'lease_until', deadline}
  if counted then
    set[#set + 1] = 'attempts'
    set[#set + 1] = int(attempt)
  end
  redis.call('HSET', jk, unpack(set))
  index_status(P, id, 'pending', 'assigned', now)
  redis.call('ZADD', P .. 'leases', deadline, id)
  emit(P, cfg, id, 'job_assigned', {worker_id = worker, attempt = attempt}, now)
  -- A resident's expected end of this job, for warm-first delays elsewhere.
  if affinity and redis.call('HEXISTS', P .. 'residents', worker) == 1 then
    if tonumber(f[4]) then
      redis.call('ZADD', P .. 'busy', int(now + tonumber(f[4])), worker)
    else
      redis.call('ZREM', P .. 'busy', worker)
    end
  end
  local counts = {['hit:' .. model_hit(P, family, worker)] = 1}
  -- Wait: since the job could first be claimed, i.e. entered pending or,
  -- when it waited in the delayed set (eta, retry backoff), came due.
  entered = tonumber(entered or f[3])
  if entered then
    local due = tonumber(f[2])
    if due and due > entered then
      entered = due
    end
    local wait = math.max(0, now - entered)
    observe_wait(P, wait)
    counts.claims, counts.wait_ms, counts[wait_field(wait)] = 1, wait, 1
  end
  observe(P, now, counts, 1)
  return {1, id, attempt, f[1]}
end

--[[ emp_models_held
KEYS[1] config
ARGV[1] now ms ('' or 0: server time)  ARGV[2] the job's service
ARGV[3..] model names
Read-only. Returns the models among ARGV[3..] that the namespace has while
some worker of it is live (P.."workers" scored past now): one a live worker
reports in any tier (gpu, ram, disk, remote: P.."residents",
P.."models:"..worker), or one a registered profile offers for the service
(caps "models.<service>" in P.."profiles": a worker started with
WORKER_MODELS reports no residency). A submit warns of the others that the
catalog does not list. O(residents x models + profiles). ]]
local function emp_models_held(keys, args)
  local P = prefix_of(keys[1])
  local now = now_ms(args[1])
  local wanted, index = {}, {}
  for i = 3, #args do
    wanted[#wanted + 1] = args[i]
    index[args[i]] = true
  end
  local held, found = {}, {}
  local function hold(model)
    if index[model] and not found[model] then
      found[model] = true
      held[#held + 1] = model
    end
  end
  if #wanted == 0 or redis.call('ZCOUNT', P .. 'workers', now, '+inf') == 0 then
    return held
  end
  for _, worker in ipairs(redis.call('HKEYS', P .. 'residents')) do
    local until_ms = redis.call('ZSCORE', P .. 'workers', worker)
    if until_ms and tonumber(until_ms) >= tonumber(now) then
      local tiers = redis.call('HMGET', P .. 'models:' .. worker, unpack(wanted))
      for i, tier in ipairs(tiers) do
        if tier then
          hold(wanted[i])
        end
      end
    end
  end
  if #held < #wanted then
    local profiles = redis.call('HVALS', P .. 'profiles')
    for _, text in ipairs(profiles) do
      local ok, profile = pcall(cjson.decode, text)
      local offered = ok and type(profile) == 'table' and type(profile.caps) == 'table'
        and profile.caps['models.' .. args[2]]
      if type(offered) == 'table' then
        for _, model in ipairs(offered) do
          hold(model)
        end
      elseif type(offered) == 'string' then
        hold(offered)
      end
    end
  end
  return held
end

--[[ emp_residency
KEYS[1] config
ARGV[1] worker id  ARGV[2] now ms ('' or 0: server time)
ARGV[3] the worker's profile signature ('': keep the one recorded)
ARGV[4] mode: 'update' (the triples are changes), 'replace' (they are the
worker's whole residency: models not named are dropped) or 'clear' (drop
all of the worker's residency: it left or was found dead)
ARGV[5..] model, tier, size triples: tier "gpu", "ram", "disk", "remote" or
'' (the worker no longer has the model); size in bytes or '' (unknown)
Each change is O(1): the worker's P.."models:"..worker, the model's
P.."warm:"..model when it enters or leaves "gpu" (with a model_loaded or
model_evicted event on the namespace stream, data {worker_id, model, tier}),
P.."model-size". Bad input is refused before any change ("ERR ...").
Returns {models loaded into the GPU, models evicted from it, models held}. ]]
local function emp_residency(keys, args)
  local P = prefix_of(keys[1])
  local worker, psig, mode = args[1], args[3] or '', args[4] or 'update'
  if not worker or worker == '' then
    return redis.error_reply('ERR emp_residency: a worker id is required')
  end
  if mode ~= 'update' and mode ~= 'replace' and mode ~= 'clear' then
    return redis.error_reply("ERR emp_residency: mode must be update, replace or clear, not '"
      .. tostring(mode) .. "'")
  end
  if (#args - 4) % 3 ~= 0 then
    return redis.error_reply('ERR emp_residency: changes come as model, tier, size triples')
  end
  for i = 5, #args, 3 do
    if args[i] == '' then
      return redis.error_reply('ERR emp_residency: empty model name')
    end
    if args[i + 1] ~= '' and not TIERS[args[i + 1]] then
      return redis.error_reply("ERR emp_residency: unknown tier '" .. args[i + 1]
        .. "' of model '" .. args[i] .. "' (gpu, ram, disk, remote or '')")
    end
    if args[i + 2] ~= '' and not tonumber(args[i + 2]) then
      return redis.error_reply("ERR emp_residency: size of model '" .. args[i]
        .. "' is not a number of bytes")
    end
  end
  local now = now_ms(args[2])
  local cfg = config(P)
  local mk = P .. 'models:' .. worker
  local loaded, evicted = 0, 0
  if mode == 'clear' then
    for _, held in ipairs(redis.call('HVALS', mk)) do
      if held == 'gpu' then
        evicted = evicted + 1
      end
    end
    clear_residency(P, cfg, worker, now)
    return {0, evicted, 0}
  end
  if mode == 'replace' then
    local named = {}
    for i = 5, #args, 3 do
      named[args[i]] = true
    end
    for _, model in ipairs(redis.call('HKEYS', mk)) do
      if not named[model] and set_residency(P, cfg, worker, model, nil, now) < 0 then
        evicted = evicted + 1
      end
    end
  end
  for i = 5, #args, 3 do
    local tier = args[i + 1] ~= '' and args[i + 1] or nil
    local moved = set_residency(P, cfg, worker, args[i], tier, now)
    if moved > 0 then
      loaded = loaded + 1
    elseif moved < 0 then
      evicted = evicted + 1
    end
    if args[i + 2] ~= '' then
      redis.call('HSET', P .. 'model-size', args[i], args[i + 2])
    end
  end
  local held = redis.call('HLEN', mk)
  if held == 0 then
    redis.call('HDEL', P .. 'residents', worker)
    redis.call('ZREM', P .. 'busy', worker)
  elseif psig ~= '' or redis.call('HEXISTS', P .. 'residents', worker) == 0 then
    redis.call('HSET', P .. 'residents', worker, psig)
  end
  return {loaded, evicted, held}
end

--[[ emp_start
KEYS[1] config  KEYS[2] job record
ARGV[1] job id  ARGV[2] attempt  ARGV[3] Celery hostname running it
ARGV[4] now (optional)  ARGV[5] machine id (optional)
Returns 'ok', or the job's status when this attempt may not run. ]]
local function emp_start(keys, args)
  local P = prefix_of(keys[1])
  local id, attempt = args[1], args[2]
  local f, refused = fence(keys[2], attempt, 'worker_id', 'preparing')
  if not f then
    return refused
  end
  if f[1] == 'assigned' then
    local now = now_ms(args[4])
    local machine = args[5] or ''
    redis.call('HSET', keys[2], 'status', 'in_progress', 'started_at', now, 'hostname', args[3],
      'machine_id', machine)
    if f[4] then
      redis.call('HDEL', keys[2], 'preparing')
    end
    index_status(P, id, 'assigned', 'in_progress', now)
    -- A worker outside a machine has no machine id: left out of the event, not ''.
    emit(P, event_config(P), id, 'job_started', {worker_id = f[3], attempt = tonumber(f[2]),
      machine_id = machine ~= '' and machine or nil}, now)
  end
  return 'ok'
end

--[[ emp_preparing
KEYS[1] config  KEYS[2] job record
ARGV[1] job id  ARGV[2] attempt  ARGV[3] details JSON object {model, tier,
bytes_done, bytes_total, eta_seconds}  ARGV[4] now (optional)
The attempt's worker is getting the job's models ready before it runs (a
cold start, the job still assigned): the details become the record's
``preparing`` field (emp_start and every end of the attempt remove it) and a
``job_preparing`` event. Returns 'ok', or the status that refused it (fencing;
'cancelled' once the job was cancelled). ]]
local function emp_preparing(keys, args)
  local P = prefix_of(keys[1])
  local id, attempt = args[1], args[2]
  local f, refused = fence(keys[2], attempt, 'worker_id')
  if not f then
    return refused
  end
  local now = now_ms(args[4])
  local data = cjson.decode(args[3])
  data.worker_id = f[3]
  data.attempt = tonumber(f[2])
  redis.call('HSET', keys[2], 'preparing', args[3], 'updated_at', now)
  emit(P, event_config(P), id, 'job_preparing', data, now)
  return 'ok'
end

--[[ emp_progress
KEYS[1] config  KEYS[2] job record
ARGV[1] job id  ARGV[2] attempt  ARGV[3] progress 0-100
ARGV[4] details JSON object  ARGV[5] now (optional)
Returns 'ok', 'cancelled', or the status that refused the update. ]]
local function emp_progress(keys, args)
  local P = prefix_of(keys[1])
  local id, attempt = args[1], args[2]
  local now = now_ms(args[5])
  local f, refused = fence(keys[2], attempt, 'worker_id')
  if not f then
    return refused
  end
  local data = cjson.decode(args[4])
  data.progress = tonumber(args[3])
  data.worker_id = f[3]
  redis.call('HSET', keys[2], 'status', 'in_progress', 'progress', args[3],
    'progress_details', args[4], 'updated_at', now)
  if f[1] ~= 'in_progress' then
    index_status(P, id, f[1], 'in_progress', now)
  end
  emit(P, event_config(P), id, 'update_job_progress', data, now)
  return 'ok'
end

--[[ emp_complete
KEYS[1] config  KEYS[2] job record
ARGV[1] job id  ARGV[2] attempt  ARGV[3] result JSON  ARGV[4] now (optional)
ARGV[5] ms of the run spent loading models (optional): left out of what the
duration model learns, so a cold run does not teach warm runs its load time
Removes ``last_error`` left by earlier attempts (their errors stay in the
job's events). Counted in the pool's minute (observe): done, run time,
routing accuracy. Returns 'ok', or the status that refused the completion
(fencing). ]]
local function emp_complete(keys, args)
  local P = prefix_of(keys[1])
  local id, attempt = args[1], args[2]
  local f, ended = fence_to_end(keys[2], attempt, 'worker_id', 'duration_key', 'work_units',
    'started_at', 'assigned_at', 'routing', 'predicted_ms', 'preparing', 'last_error')
  if not f then
    return ended
  end
  local now = now_ms(args[4])
  learn_duration(P, f[4], f[5], f[6], tonumber(now) - math.max(0, tonumber(args[5]) or 0))
  -- An earlier attempt's error would contradict 'completed'; the job's events keep
  -- it. It and ``preparing`` are removed (by end_job) when there.
  local drop = {}
  if f[10] then
    drop[#drop + 1] = 'preparing'
  end
  if f[11] then
    drop[#drop + 1] = 'last_error'
  end
  end_job(P, keys[2], id, 'completed', {'completed_at', now, 'result', args[3], 'progress', '100'},
    'complete_job', {worker_id = f[3], attempt = tonumber(f[2])}, now,
    'result', '{"status":"success","data":' .. args[3] .. '}', ended, drop)
  observe(P, now, completion_counts(P, tonumber(now), f[6], f[7], f[8], f[9]), -1)
  return 'ok'
end

--[[ emp_fail
KEYS[1] config  KEYS[2] job record
ARGV[1] job id  ARGV[2] attempt  ARGV[3] error text  ARGV[4] now (optional)
Returns 'ok', or the status that refused the failure (fencing). ]]
local function emp_fail(keys, args)
  local P = prefix_of(keys[1])
  local id, attempt = args[1], args[2]
  local f, ended = fence_to_end(keys[2], attempt, 'worker_id', 'preparing')
  if not f then
    return ended
  end
  local now = now_ms(args[4])
  fail_job(P, keys[2], id, args[3], {worker_id = f[3], attempt = tonumber(f[2]),
    error = args[3]}, now, -1, ended, f[4] and {'preparing'} or {})
  return 'ok'
end

--[[ emp_retry
KEYS[1] config  KEYS[2] job record  KEYS[3] delayed
ARGV[1] job id  ARGV[2] attempt ('' accepts any)  ARGV[3] due ms
ARGV[4] new Celery message JSON  ARGV[5] error text  ARGV[6] now (optional)
ARGV[7] the retry's max_retries (optional: the call named one, so the record says
what Celery allows)
The job keeps its order score, so it does not fall behind newer work.
Returns 'delayed' or 'queued', or the status that refused the retry. ]]
local function emp_retry(keys, args)
  local P = prefix_of(keys[1])
  local id, attempt = args[1], args[2]
  local due = tonumber(args[3]) or 0
  local now = now_ms(args[6])
  local f, refused = fence(keys[2], attempt, 'worker_id', 'class', 'score')
  if not f then
    return refused
  end
  local cfg = config(P)
  local retries = redis.call('HINCRBY', keys[2], 'retries', '1')
  redis.call('HSET', keys[2], 'status', 'pending', 'worker_id', '', 'message', args[4],
    'last_error', args[5], 'retry_at', args[3])
  if args[7] and args[7] ~= '' then
    redis.call('HSET', keys[2], 'max_retries', args[7])
  end
  index_status(P, id, f[1], 'pending', now)
  forget_run(keys[2])
  redis.call('ZREM', P .. 'leases', id)
  emit(P, cfg, id, 'job_retrying', {worker_id = f[3], attempt = tonumber(f[2]),
    retries = retries, retry_at = due, error = args[5]}, now)
  if due > tonumber(now) then
    redis.call('ZADD', keys[3], args[3], id)
    return 'delayed'
  end
  file_pending(P, id, f[4], f[5], now)
  return 'queued'
end

--[[ emp_replace
KEYS[1] config  KEYS[2] job record  KEYS[3] delayed
ARGV[1] job id  ARGV[2] attempt  ARGV[3] due ms (0: now)
ARGV[4] the replacement's Celery message JSON  ARGV[5] class signature
ARGV[6] class JSON  ARGV[7] family signature  ARGV[8] family JSON (the class
the replacement's requirements make)  ARGV[9] the step, JSON object
(from_task, to_task)  ARGV[10] now (optional)
ARGV[11..] record field name, value pairs of the replacement; only the fields
of REPLACED_FIELDS are taken, the others stay as the job has them
The attempt's task replaced itself (Celery's ``Task.replace``): the same job
goes back to pending running the replacement's message, filed under its class,
at its old place. The replaced fields are cleared first (a routing estimate of
the old task must not stay), the step (with from_service, to_service, attempt,
retries and at) is appended to the record's ``replaced`` JSON list and sent as a
``job_replaced`` event. Neither a retry nor an attempt of the crash allowance
is spent (``replaces`` counts them). The record's ``retries`` starts again at 0,
as the replacement's Celery message does (its ``request.retries``): the replaced
task's count goes to the step's ``retries`` and to ``replaced_retries``, so the
attempts that ended in those retries still spend no crash allowance. Returns
'delayed' or 'queued', or the status that refused it (fencing); a refusal
changes nothing. ]]
-- The record fields a replacement brings (the rest stay the job's), as a list and a set.
local REPLACED_LIST = {'service_required', 'payload', 'requirements', 'max_retries',
  'routing', 'duration_key', 'work_units', 'predicted_ms'}
local REPLACED_FIELDS = {service_required = true, payload = true, requirements = true,
  max_retries = true, routing = true, duration_key = true, work_units = true,
  predicted_ms = true}

local function emp_replace(keys, args)
  local P = prefix_of(keys[1])
  local id, attempt, jk = args[1], args[2], keys[2]
  local due = tonumber(args[3]) or 0
  local now = now_ms(args[10])
  local f, refused = fence(jk, attempt, 'worker_id', 'class', 'score', 'replaced',
    'service_required', 'predicted_ms', 'created_at', 'retries')
  if not f then
    return refused
  end
  local fields = {}
  local service
  for i = 11, #args, 2 do
    if REPLACED_FIELDS[args[i]] then
      fields[#fields + 1] = args[i]
      fields[#fields + 1] = args[i + 1]
      if args[i] == 'service_required' then
        service = args[i + 1]
      end
    end
  end
  local csig = args[5]
  move_to_class(P, f[4], csig, args[6], args[7], args[8])
  add_load(P, f[8], -1)
  redis.call('HDEL', jk, unpack(REPLACED_LIST))
  local steps = f[6] and cjson.decode(f[6]) or {}
  local step = cjson.decode(args[9])
  step.from_service = f[7]
  step.to_service = service or f[7]
  step.attempt = tonumber(f[2])
  step.retries = tonumber(f[10]) or 0
  step.at = tonumber(now)
  steps[#steps + 1] = step
  redis.call('HSET', jk, 'status', 'pending', 'worker_id', '', 'class', csig,
    'message', args[4], 'replaced', cjson.encode(steps), 'replaced_at', now,
    'service_required', step.to_service, unpack(fields))
  redis.call('HINCRBY', jk, 'replaces', '1')
  if step.retries > 0 then
    redis.call('HINCRBY', jk, 'replaced_retries', string.format('%d', step.retries))
  end
  redis.call('HSET', jk, 'retries', '0')
  add_load(P, redis.call('HGET', jk, 'predicted_ms'), 1)
  if service and service ~= f[7] then
    if f[7] then
      redis.call('ZREM', P .. 'by:service:' .. f[7], id)
    end
    local ik = P .. 'by:service:' .. service
    redis.call('ZADD', ik, f[9] or now, id)
    redis.call('SADD', P .. 'indexes', ik)
  end
  index_status(P, id, f[1], 'pending', now)
  forget_run(jk, 'retry_at', 'last_error')
  redis.call('ZREM', P .. 'leases', id)
  local data = {worker_id = f[3], attempt = step.attempt, from_task = step.from_task,
    to_task = step.to_task, from_service = step.from_service, job_type = step.to_service}
  if due > tonumber(now) then
    redis.call('HSET', jk, 'retry_at', args[3])
    redis.call('ZADD', keys[3], args[3], id)
    data.run_at = due
  end
  emit(P, config(P), id, 'job_replaced', data, now)
  if due > tonumber(now) then
    return 'delayed'
  end
  file_pending(P, id, csig, f[5], now)
  return 'queued'
end

--[[ emp_escalate
KEYS[1] config  KEYS[2] job record
ARGV[1] job id  ARGV[2] attempt  ARGV[3] the step, JSON object (from_gb, to_gb,
worker_id, error, ...)  ARGV[4] most steps a job may take
ARGV[5] the raised requirements JSON  ARGV[6] class signature  ARGV[7] class
JSON  ARGV[8] family signature  ARGV[9] family JSON (the class they make)
ARGV[10] now (optional)
The attempt ran out of GPU memory: the job goes back to pending at its old
place, filed under the class of the raised requirements, so only a worker
with more memory takes it. The step (with attempt, at and its number) is
appended to the record's ``escalations`` JSON list and sent as a
``job_escalated`` event. No retry is spent; the step count bounds it.
Returns 'queued', 'exhausted' (the job took its most steps: nothing
changed), or the status that refused it (fencing). ]]
local function emp_escalate(keys, args)
  local P = prefix_of(keys[1])
  local id, attempt = args[1], args[2]
  local f, refused = fence(keys[2], attempt, 'worker_id', 'class', 'score', 'escalations')
  if not f then
    return refused
  end
  local steps = f[6] and cjson.decode(f[6]) or {}
  if #steps >= (tonumber(args[4]) or 0) then
    return 'exhausted'
  end
  local now = now_ms(args[10])
  local step = cjson.decode(args[3])
  step.attempt = tonumber(f[2])
  step.at = tonumber(now)
  step.step = #steps + 1
  steps[#steps + 1] = step
  local csig = args[6]
  move_to_class(P, f[4], csig, args[7], args[8], args[9])
  redis.call('HSET', keys[2], 'status', 'pending', 'worker_id', '', 'class', csig,
    'requirements', args[5], 'escalations', cjson.encode(steps),
    'last_error', step.error or '', 'escalated_at', now)
  index_status(P, id, f[1], 'pending', now)
  forget_run(keys[2])
  redis.call('ZREM', P .. 'leases', id)
  emit(P, config(P), id, 'job_escalated', step, now)
  file_pending(P, id, csig, f[5], now)
  return 'queued'
end

--[[ emp_cancel
KEYS[1] config  KEYS[2] job record  KEYS[3] delayed
ARGV[1] job id  ARGV[2] reason  ARGV[3] now (optional)
ARGV[4] attempt (optional): cancel only while that attempt holds the job (a
worker's stop of one run must not cancel the job's next run)
Returns {'cancelled', previous status, worker id} or {status} when the job is
already terminal, {'stale', status} when the attempt no longer holds it, or
{'missing'}. ]]
local function emp_cancel(keys, args)
  local P = prefix_of(keys[1])
  local id = args[1]
  local now = now_ms(args[3])
  local f = redis.call('HMGET', keys[2], 'status', 'class', 'worker_id', 'attempts')
  if not f[1] then
    return {'missing'}
  end
  if TERMINAL[f[1]] then
    return {f[1]}
  end
  if args[4] and args[4] ~= '' and not (ACTIVE[f[1]] and attempt_is(f[4], args[4])) then
    return {'stale', f[1]}
  end
  if f[1] == 'pending' then
    unfile_pending(P, id, f[2])
    redis.call('ZREM', keys[3], id)
  end
  -- A job that never ran (or went back to pending) has no worker: the field is left
  -- out, as job_submitted leaves out what a job lacks, not sent as ''.
  local worker = f[3] ~= '' and f[3] or nil
  end_job(P, keys[2], id, 'cancelled', {'cancelled_at', now, 'last_error', args[2]},
    'job_cancelled', {worker_id = worker, reason = args[2]}, now)
  return {'cancelled', f[1], f[3] or ''}
end

--[[ emp_ack
KEYS[1] config
ARGV[1] now ms (0: server time)  ARGV[2..] job id, attempt pairs
Broker acknowledgements of attempts (see ack_attempts). Returns how many
attempts ended without an outcome and were failed (each counted as failed in the
pool's minute since release 29). ]]
local function emp_ack(keys, args)
  local P = prefix_of(keys[1])
  return ack_attempts(P, args, 2, now_ms(args[1]))
end

--[[ emp_requeue
KEYS[1] config  KEYS[2] job record
ARGV[1] job id  ARGV[2] attempt  ARGV[3] reason  ARGV[4] now (optional)
Returns 'pending', 'failed' (attempts used up) or the refusing status. ]]
local function emp_requeue(keys, args)
  local P = prefix_of(keys[1])
  local id, attempt = args[1], args[2]
  local now = now_ms(args[4])
  local f, refused = fence(keys[2], attempt)
  if not f then
    return refused
  end
  return return_to_pending(P, config(P), id, args[3], now)
end

--[[ emp_release
KEYS[1] config  KEYS[2] job record  KEYS[3] delayed
ARGV[1] job id  ARGV[2] attempt  ARGV[3] reason  ARGV[4] now (optional)
The attempt's service refused the job before accepting it (connection
refused: down or restarting), so nothing ran: the job goes back to pending at
its old place without spending its budget (its retries, and its attempts in
the max_attempts count). It waits service_release_delay_ms (config, default
1000) in the delayed set first, so a worker whose health check has not seen
the outage yet cannot take it back at once, again and again. At most
max_service_releases (config, default 5) times per run; after that it
changes nothing and returns 'exhausted', and the failure counts as usual.
Returns 'delayed' or 'queued', 'exhausted', or the refusing status. ]]
local function emp_release(keys, args)
  local P = prefix_of(keys[1])
  local id, attempt = args[1], args[2]
  local f, refused = fence(keys[2], attempt, 'worker_id', 'class', 'score', 'service_releases')
  if not f then
    return refused
  end
  local limits = redis.call('HMGET', keys[1], 'max_service_releases', 'service_release_delay_ms')
  local most = tonumber(limits[1]) or 5
  local releases = tonumber(f[6]) or 0
  if releases >= most then
    return 'exhausted'
  end
  local now = now_ms(args[4])
  local due = int(now + (tonumber(limits[2]) or 1000))
  releases = redis.call('HINCRBY', keys[2], 'service_releases', '1')
  redis.call('HSET', keys[2], 'status', 'pending', 'worker_id', '', 'last_error', args[3],
    'released_at', now)
  index_status(P, id, f[1], 'pending', now)
  forget_run(keys[2])
  redis.call('ZREM', P .. 'leases', id)
  emit(P, config(P), id, 'job_released', {worker_id = f[3], attempt = tonumber(f[2]),
    reason = args[3], service_releases = releases, max_service_releases = most,
    retry_at = tonumber(due)}, now)
  if tonumber(due) > tonumber(now) then
    redis.call('HSET', keys[2], 'retry_at', due)
    redis.call('ZADD', keys[3], due, id)
    return 'delayed'
  end
  file_pending(P, id, f[4], f[5], now)
  return 'queued'
end

--[[ emp_unclaim
KEYS[1] config
ARGV[1] worker id  ARGV[2] now (0: server time)  ARGV[3..] ids of the jobs the
worker holds (delivered to it, not yet acknowledged)
The worker's connection was cut after Redis ran one of its claims, before the
reply: the job is assigned to a worker that never received it, and would wait
for its lease to expire and then count the attempt. Every job still assigned
(claimed, not started) to ``worker`` that it does not hold goes back to
pending at its old place now, with a job_released event; the attempt does not
count against max_attempts (the record's ``unreceived``), as nothing ran.
Looks at the first 1000 assigned jobs of the pool (assigned is the short
state between a claim and its start). Returns the ids given back. ]]
local function emp_unclaim(keys, args)
  local P = prefix_of(keys[1])
  local worker = args[1]
  local now = now_ms(args[2])
  local held = {}
  for i = 3, #args do
    held[args[i]] = true
  end
  local given = {}
  local cfg
  for _, id in ipairs(redis.call('ZRANGE', P .. 'status:assigned', '0', '999')) do
    local jk = P .. 'job:' .. id
    local f = redis.call('HMGET', jk, 'status', 'worker_id', 'attempts', 'class', 'score')
    if f[1] == 'assigned' and f[2] == worker and not held[id] then
      cfg = cfg or config(P)
      local reason = 'the worker never received its claim (reply lost)'
      redis.call('HINCRBY', jk, 'unreceived', '1')
      redis.call('HSET', jk, 'status', 'pending', 'worker_id', '', 'released_at', now)
      index_status(P, id, 'assigned', 'pending', now)
      forget_run(jk)
      redis.call('ZREM', P .. 'leases', id)
      emit(P, cfg, id, 'job_released', {worker_id = worker, attempt = tonumber(f[3]),
        reason = reason}, now)
      file_pending(P, id, f[4], f[5], now)
      given[#given + 1] = id
    end
  end
  return given
end

--[[ emp_renew
KEYS[1] config  KEYS[2] leases
ARGV[1] worker id  ARGV[2] lease ms  ARGV[3] now (0: server time)
ARGV[4..] job id, attempt pairs
Returns the job ids this worker lost while running them: taken by another
attempt, or requeued. An attempt that already ended (completed, failed,
cancelled, retrying) is not lost; its late ack is simply on its way. ]]
local function emp_renew(keys, args)
  local P = prefix_of(keys[1])
  local worker = args[1]
  local now = now_ms(args[3])
  local deadline = int(now + args[2])
  local lost = {}
  for i = 4, #args, 2 do
    local id, attempt = args[i], args[i + 1]
    local jk = P .. 'job:' .. id
    local f = redis.call('HMGET', jk, 'status', 'attempts', 'worker_id', 'requeued_attempt')
    if ACTIVE[f[1]] and attempt_is(f[2], attempt) and f[3] == worker then
      redis.call('HSET', jk, 'lease_until', deadline)
      redis.call('ZADD', keys[2], 'XX', deadline, id)
    elseif ACTIVE[f[1]] or not f[1] or (f[1] == 'pending' and f[4] == tostring(attempt)) then
      lost[#lost + 1] = id
    end
  end
  return lost
end

--[[ emp_sweep
KEYS[1] config
ARGV[1] limit  ARGV[2] now (optional)
Promotes due retries, requeues expired leases, drops expired idle marks and
listing entries older than the retention, and up to 100 profiles no worker used
for profile_retention_ms, with the model residency of their workers. Returns
how many jobs moved. ]]
local function emp_sweep(keys, args)
  local P = prefix_of(keys[1])
  local now = now_ms(args[2])
  local moved = housekeep(P, now, tonumber(args[1]) or 100)
  redis.call('ZREMRANGEBYSCORE', P .. 'idle', '-inf', now)
  local cfg = config(P)
  local cutoff = int(now - cfg.retention_ms)
  redis.call('ZREMRANGEBYSCORE', P .. 'jobs', '-inf', cutoff)
  for status in pairs(TERMINAL) do
    redis.call('ZREMRANGEBYSCORE', P .. 'status:' .. status, '-inf', cutoff)
  end
  for _, ik in ipairs(redis.call('SMEMBERS', P .. 'indexes')) do
    redis.call('ZREMRANGEBYSCORE', ik, '-inf', cutoff)
    if redis.call('EXISTS', ik) == 0 then
      redis.call('SREM', P .. 'indexes', ik)
    end
  end
  local unseen = redis.call('ZRANGE', P .. 'profile-seen', '-inf',
    int(now - cfg.profile_retention_ms), 'BYSCORE', 'LIMIT', '0', '100')
  for _, psig in ipairs(unseen) do
    drop_profile(P, psig)
  end
  -- Workers of a dropped profile have not claimed for the retention: their
  -- residency goes with it (a live one reports again after its next job).
  if #unseen > 0 then
    local gone = {}
    for _, psig in ipairs(unseen) do
      gone[psig] = true
    end
    local residents = redis.call('HGETALL', P .. 'residents')
    for i = 1, #residents, 2 do
      if gone[residents[i + 1]] then
        clear_residency(P, cfg, residents[i], now)
      end
    end
  end
  return moved
end

--[[ emp_resubmit
KEYS[1] config  KEYS[2] job record
ARGV[1] job id  ARGV[2] reason  ARGV[3] now (optional)
ARGV[4] class signature  ARGV[5] class JSON  ARGV[6] family signature
ARGV[7] family JSON (the job's class as filed now: it may have been dropped)
A failed or cancelled job runs again: back to pending at its old place, its
record kept. Attempt numbers go on increasing, so a late word from the old
run is still refused (fencing); ``attempts_before`` marks where the new run's
allowance starts. Returns 'pending', or the status
that refuses it ('missing' when there is no such job). ]]
local function emp_resubmit(keys, args)
  local P = prefix_of(keys[1])
  local id = args[1]
  local now = now_ms(args[3])
  local f = redis.call('HMGET', keys[2], 'status', 'class', 'score', 'service_required',
    'priority', 'customer_id', 'workflow_id')
  if not f[1] then
    return 'missing'
  end
  if f[1] ~= 'failed' and f[1] ~= 'cancelled' then
    return f[1]
  end
  add_load(P, redis.call('HGET', keys[2], 'predicted_ms'), 1)
  redis.call('HSET', keys[2], 'status', 'pending', 'attempts_before',
    redis.call('HGET', keys[2], 'attempts') or '0', 'retries', '0', 'service_releases', '0',
    'unreceived', '0', 'replaces', '0', 'replaced_retries', '0', 'worker_id', '',
    'resubmitted_at', now)
  forget_run(keys[2], 'failed_at', 'cancelled_at', 'retry_at')
  redis.call('PERSIST', keys[2])
  if args[4] and args[4] ~= '' then
    f[2] = args[4]
    redis.call('HSET', keys[2], 'class', f[2])
    ensure_class(P, f[2], args[5], args[6], args[7])
  end
  redis.call('HINCRBY', P .. 'live', f[2], '1')
  index_status(P, id, f[1], 'pending', now)
  -- HMGET gives false for a missing field: left out, not sent as a boolean (a job
  -- with no customer or workflow has none in its job_submitted either).
  emit(P, config(P), id, 'job_resubmitted', {previous_status = f[1], reason = args[2],
    job_type = f[4], priority = tonumber(f[5]), customer_id = f[6] or nil,
    workflow_id = f[7] or nil}, now, true)
  file_pending(P, id, f[2], f[3], now)
  return 'pending'
end

--[[ emp_queue_summary (read-only)
KEYS[1] config  KEYS[2] heads  KEYS[3] delayed
ARGV[1] first class to report, 0-based, in head order  ARGV[2] how many
Returns {delayed count, number of classes with pending jobs, {class
signature, pending count, head score, oldest effective ms}, ...} for the
classes in that range. Scores and ms are text (see the order score above).
The oldest job is the lowest score of some priority band, so it takes one
ZRANGE per band present (at most 101): O(classes x bands x log n), never
O(jobs). Callers page through the classes in separate calls so that no
single call holds the server for long (a few ms per 100 classes). ]]
local function emp_queue_summary(keys, args)
  local P = prefix_of(keys[1])
  local first = tonumber(args[1]) or 0
  local count = tonumber(args[2]) or 100
  local out = {redis.call('ZCARD', keys[3]), redis.call('ZCARD', keys[2])}
  local heads = redis.call('ZRANGE', keys[2], int(first), int(first + count - 1))
  for _, csig in ipairs(heads) do
    local pk = P .. 'pending:' .. csig
    local n = redis.call('ZCARD', pk)
    local head = redis.call('ZRANGE', pk, '0', '0', 'WITHSCORES')
    local score = tonumber(head[2])
    local oldest = nil
    while score do
      local band = math.floor(score / BAND)
      if band * BAND > score then
        band = band - 1
      end
      local at = effective_ms(score)
      if oldest == nil or at < oldest then
        oldest = at
      end
      local from = string.format('%.0f', (band + 1) * BAND)
      local nxt = redis.call('ZRANGE', pk, from, '+inf', 'BYSCORE', 'LIMIT', '0', '1',
        'WITHSCORES')
      score = tonumber(nxt[2])
    end
    if oldest then
      out[#out + 1] = {csig, n, head[2], string.format('%.0f', oldest)}
    end
  end
  return out
end

--[[ emp_family_summary (read-only)
KEYS[1] config
Returns {indexed, {family signature, pending count, oldest effective ms},
...} for every family with pending jobs (the class signature for a class
filed without a family), from the per-family pending index: O(live families),
whatever the number of classes, workflows or jobs. ``indexed`` is 1 once
emp_index_families has filed the jobs left pending by a release before 19;
until then the index may miss some of them and the caller reads classes. ]]
local function emp_family_summary(keys, args)
  local P = prefix_of(keys[1])
  local out = {redis.call('HGET', keys[1], 'family_index') == '1' and 1 or 0}
  local fks = redis.call('HKEYS', P .. 'families')
  for _, csig in ipairs(redis.call('SMEMBERS', P .. 'unfamilied')) do
    fks[#fks + 1] = csig
  end
  for _, fk in ipairs(fks) do
    local key = P .. 'fam-pending:' .. fk
    local oldest = redis.call('ZRANGE', key, '0', '0', 'WITHSCORES')
    if oldest[1] then
      out[#out + 1] = {fk, redis.call('ZCARD', key), oldest[2]}
    end
  end
  return out
end

--[[ emp_index_families
KEYS[1] config  ARGV[1] '1' on the last call  ARGV[2..] class signatures
Files the pending jobs of the given classes in the per-family pending index
(idempotent), for jobs a release before 19 left pending; the last call marks
the pool indexed. A caller lists the classes with pending jobs (P.."heads")
after this library is loaded: jobs filed since go through file_pending. ]]
local function emp_index_families(keys, args)
  local P = prefix_of(keys[1])
  for i = 2, #args do
    local csig = args[i]
    local fsig = family_of(P, csig)
    local jobs = redis.call('ZRANGE', P .. 'pending:' .. csig, '0', '-1', 'WITHSCORES')
    for j = 1, #jobs, 2 do
      index_pending(P, fsig, csig, jobs[j], jobs[j + 1])
    end
  end
  if args[1] == '1' then
    redis.call('HSET', keys[1], 'family_index', '1')
  end
  return #args - 1
end

redis.register_function{function_name = 'emp_version', callback = emp_version,
  flags = {'no-writes'}}
redis.register_function{function_name = 'emp_queue_summary', callback = emp_queue_summary,
  flags = {'no-writes'}}
redis.register_function{function_name = 'emp_family_summary', callback = emp_family_summary,
  flags = {'no-writes'}}
redis.register_function('emp_index_families', emp_index_families)
redis.register_function('emp_register_worker', emp_register_worker)
redis.register_function('emp_enqueue', emp_enqueue)
redis.register_function('emp_fence_id', emp_fence_id)
redis.register_function('emp_id_swap', emp_id_swap)
redis.register_function('emp_claim', emp_claim)
redis.register_function('emp_start', emp_start)
redis.register_function('emp_progress', emp_progress)
redis.register_function('emp_preparing', emp_preparing)
redis.register_function('emp_complete', emp_complete)
redis.register_function('emp_fail', emp_fail)
redis.register_function('emp_retry', emp_retry)
redis.register_function('emp_replace', emp_replace)
redis.register_function('emp_cancel', emp_cancel)
redis.register_function('emp_escalate', emp_escalate)
redis.register_function('emp_ack', emp_ack)
redis.register_function('emp_requeue', emp_requeue)
redis.register_function('emp_release', emp_release)
redis.register_function('emp_unclaim', emp_unclaim)
redis.register_function('emp_renew', emp_renew)
redis.register_function('emp_sweep', emp_sweep)
redis.register_function('emp_resubmit', emp_resubmit)
redis.register_function('emp_residency', emp_residency)
redis.register_function{function_name = 'emp_models_held', callback = emp_models_held,
  flags = {'no-writes'}}
