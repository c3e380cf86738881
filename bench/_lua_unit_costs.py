"""What the Lua around a queue function's Redis commands costs, one operation at a time.

``redis_cost_per_job`` finds most of a function's time outside its commands ("Lua").
This measures, in the same server, the operations that time is made of: a function
call with an enqueue's arguments and nothing run, one ``redis.call`` beyond the
command it runs, and the string and number work the functions do on every job
(key names built by concatenation, ``string.format('%.0f')`` of a score,
``tonumber`` of a stored number, ``cjson.encode`` of an event's data). Each loop
body runs 100 times in one FCALL; its cost is the FCALL's time (``commandstats``)
less that of the same function with an empty loop, over 100.
"""

from __future__ import annotations

from typing import Any

import redis

LIBRARY = "emp_bench_units"
LOOPS = 100

#: name -> (Lua loop body run LOOPS times, what it stands for).
BODIES: dict[str, tuple[str, str]] = {
    "empty": ("", "the loop alone (the baseline)"),
    "concat": ("x = a[1] .. 'pending:' .. a[2]", "a key name built from two strings"),
    "format": ("x = string.format('%.0f', 5e14 + i)", "string.format('%.0f') of a score"),
    "tonumber": ("x = tonumber(a[3])", "tonumber of a 13-digit ms time"),
    "cjson": ("x = cjson.encode({worker_id = a[2], attempt = 1, job_id = a[1]})",
              "cjson.encode of an event's data"),
    "call": ("redis.call('HINCRBY', k[1], 'f', '1')", "redis.call of HINCRBY"),
    "garbage": ("x = a[4] .. i", "a new 100-byte string, garbage at once"),
}


#: The shape of the ARGV of ``throughput_vs_celery``'s noop enqueue (20 arguments, 1,298
#: bytes): job id, class, class JSON, priority, due, the Celery message (1,057 bytes),
#: now, at, family, family JSON, then five field name/value pairs.
ENQUEUE_ARGS: list[str] = [
    "j" * 36, "c" * 16, "{" + "c" * 50 + "}", "50", "0", "m" * 1057, "0", "", "c" * 16,
    "{" + "c" * 50 + "}", "service_required", "noop", "priority", "50", "requirements",
    "{}", "max_retries", "3", "pool", "default"]


def _source() -> str:
    lines = [f"#!lua name={LIBRARY}"]
    for name, (body, _) in BODIES.items():
        lines.append(f"redis.register_function('u_{name}', function(k, a) local x "
                     f"for i = 1, {LOOPS} do {body} end return 1 end)")
    lines.append("redis.register_function('u_args', function(k, a) return 1 end)")
    return "\n".join(lines) + "\n"


def _fcall_us(client: redis.Redis, function: str, args: list[Any], calls: int) -> float:
    """Best of three: the server's time inside one FCALL of ``function`` (µs)."""
    best = float("inf")
    for _ in range(3):
        client.config_resetstat()
        for _ in range(calls):
            client.fcall(function, 1, "bench:units", *args)
        stats = client.info("commandstats")
        best = min(best, stats["cmdstat_fcall"]["usec"] / calls)
    return best


def lua_unit_costs(client: redis.Redis, calls: int = 1000,
                   queue_library: str = "emp") -> dict[str, Any]:
    """ns per operation (``per_op_ns``) and µs per FCALL (``call_us``), measured on
    ``client``'s server; then ``garbage`` again once ``queue_library`` is deleted
    (``garbage_without_queue_library_ns``): what the Lua collector's share of a new
    string owes to the queue's library in the same Lua state. Deletes that library:
    for a bench's own server, at its end."""
    client.function_load(_source(), replace=True)
    try:
        args = ["job-1234", "worker-1", "1733400000000", "g" * 100]
        loops = {name: _fcall_us(client, f"u_{name}", args, calls)
                 for name in BODIES if name != "call"}
        loops["call"] = _fcall_us(client, "u_call", args, calls)
        # read now: the stats of u_call's last round, its HINCRBYs' own time
        hincrby = client.info("commandstats").get("cmdstat_hincrby", {"usec_per_call": 0.0})
        bare = _fcall_us(client, "u_args", [], calls)
        with_args = _fcall_us(client, "u_args", ENQUEUE_ARGS, calls)
        lua_kb = client.info("memory").get("used_memory_vm_functions", 0) / 1024
        client.function_delete(queue_library)
        garbage_alone = _fcall_us(client, "u_garbage", args, calls)
        empty_alone = _fcall_us(client, "u_empty", args, calls)
    finally:
        client.function_delete(LIBRARY)
        client.delete("bench:units")
    per_op = {name: round((us - loops["empty"]) * 1000 / LOOPS, 1)
              for name, us in loops.items() if name != "empty"}
    per_op["call_beyond_command"] = round(
        per_op["call"] - float(hincrby["usec_per_call"]) * 1000, 1)
    return {
        "per_op_ns": per_op,
        "call_us": {"no_arguments": round(bare, 2), "enqueue_arguments": round(with_args, 2)},
        "garbage_without_queue_library_ns": round(
            (garbage_alone - empty_alone) * 1000 / LOOPS, 1),
        "functions_vm_kb_with_queue_library": round(lua_kb),
        "what": {name: what for name, (_, what) in BODIES.items() if name != "empty"},
    }
