"""Every matching rule of emp-behaviour.md, against the real function library.

Each case registers one worker profile, enqueues one job, and checks whether
the worker's claim gets it: one job that must match and one that must not.
"""

from __future__ import annotations

import json
import uuid

import pytest

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.profile import WorkerProfile


def claims(queue: QueueFunctions, profile: WorkerProfile, **job: object) -> bool:
    """True when ``profile`` claims the one job built from ``job``."""
    queue.client.flushall()
    queue.register_worker(profile)
    job_id = str(uuid.uuid4())
    queue.enqueue(job_id, JobSpec.from_fields(job), json.dumps({"id": job_id}))
    result = queue.claim(profile.signature, profile.worker_id, 30_000)
    return isinstance(result, Claimed) and result.job_id == job_id


def worker(**fields: object) -> WorkerProfile:
    return WorkerProfile.from_dict({"worker_id": "w", "services": ["comfyui"], **fields})


CASES = [
    # (rule, worker fields, job that matches, job that must not)
    ("service", {}, {"service_required": "comfyui"}, {"service_required": "a1111"}),
    ("service alias job_type", {}, {"job_type": "comfyui"}, {"type": "ollama"}),
    ("workflow-restricted worker", {"workflow_id": "wf-1"},
     {"service_required": "comfyui", "workflow_id": "wf-1"},
     {"service_required": "comfyui", "workflow_id": "wf-2"}),
    ("workflow-restricted worker refuses plain jobs", {"workflow_id": "wf-1"},
     {"service_required": "comfyui", "workflow_id": "wf-1"},
     {"service_required": "comfyui"}),
    ("gpu memory >=", {"hardware": {"gpu_memory_gb": 24}},
     {"service_required": "comfyui", "requirements": {"hardware": {"gpu_memory_gb": 24}}},
     {"service_required": "comfyui", "requirements": {"hardware": {"gpu_memory_gb": 25}}}),
    ("cpu cores >=", {"hardware": {"cpu_cores": 8}},
     {"service_required": "comfyui", "requirements": {"hardware": {"cpu_cores": 4}}},
     {"service_required": "comfyui", "requirements": {"hardware": {"cpu_cores": 16}}}),
    ("ram >=, 'all' means no check", {"hardware": {"ram_gb": 32}},
     {"service_required": "comfyui", "requirements": {"hardware": {"ram_gb": "all"}}},
     {"service_required": "comfyui", "requirements": {"hardware": {"ram_gb": 64}}}),
    ("missing hardware value", {},
     {"service_required": "comfyui", "requirements": {"hardware": {"gpu_memory_gb": "all"}}},
     {"service_required": "comfyui", "requirements": {"hardware": {"gpu_memory_gb": 1}}}),
    ("strict isolation: allowed customer", {"customer_access": {
        "isolation": "strict", "allowed_customers": ["acme"]}},
     {"service_required": "comfyui", "customer_id": "acme",
      "requirements": {"customer_isolation": "strict"}},
     {"service_required": "comfyui", "customer_id": "other",
      "requirements": {"customer_isolation": "strict"}}),
    ("strict isolation needs a strict worker", {"customer_access": {
        "isolation": "loose", "allowed_customers": ["acme"]}},
     {"service_required": "comfyui", "customer_id": "acme"},
     {"service_required": "comfyui", "customer_id": "acme",
      "requirements": {"customer_isolation": "strict"}}),
    ("denied customer", {"customer_access": {"denied_customers": ["evil"]}},
     {"service_required": "comfyui", "customer_id": "good"},
     {"service_required": "comfyui", "customer_id": "evil"}),
    ("models all present for the service", {"models": {"comfyui": ["sdxl", "flux"]}},
     {"service_required": "comfyui", "requirements": {"models": ["sdxl", "flux"]}},
     {"service_required": "comfyui", "requirements": {"models": ["sdxl", "sd3"]}}),
    ("models of another service do not count",
     {"services": ["comfyui", "a1111"], "models": {"a1111": ["sdxl"]}},
     {"service_required": "comfyui", "requirements": {"models": "all"}},
     {"service_required": "comfyui", "requirements": {"models": ["sdxl"]}}),
    ("custom scalar equality", {"region": "eu-west"},
     {"service_required": "comfyui", "requirements": {"region": "eu-west"}},
     {"service_required": "comfyui", "requirements": {"region": "us-east"}}),
    ("custom scalar in worker list", {"features": ["fp16", "xformers"]},
     {"service_required": "comfyui", "requirements": {"features": "fp16"}},
     {"service_required": "comfyui", "requirements": {"features": "int8"}}),
    ("custom list needs all items", {"features": ["fp16", "xformers"]},
     {"service_required": "comfyui", "requirements": {"features": ["fp16", "xformers"]}},
     {"service_required": "comfyui", "requirements": {"features": ["fp16", "int8"]}}),
    ("custom number >=", {"cost": {"tier": 3}},
     {"service_required": "comfyui", "requirements": {"cost": {"tier": 2}}},
     {"service_required": "comfyui", "requirements": {"cost": {
         "tier": 4}}}),
    ("custom missing value means no match", {},
     {"service_required": "comfyui", "requirements": {}},
     {"service_required": "comfyui", "requirements": {"region": "eu-west"}}),
    ("positive_requirements", {"region": "eu"},
     {"service_required": "comfyui", "requirements": {"positive_requirements": {"region": "eu"}}},
     {"service_required": "comfyui", "requirements": {"positive_requirements": {"region": "us"}}}),
    ("negative_requirements exclude", {"hardware": {"gpu_model": "T4"}},
     {"service_required": "comfyui",
      "requirements": {"negative_requirements": {"hardware": {"gpu_model": "K80"}}}},
     {"service_required": "comfyui",
      "requirements": {"negative_requirements": {"hardware": {"gpu_model": "T4"}}}}),
]


@pytest.mark.parametrize("rule,worker_fields,good,bad", CASES, ids=[c[0] for c in CASES])
def test_matching_rule(queue: QueueFunctions, rule: str, worker_fields: dict, good: dict,
                       bad: dict) -> None:
    profile = worker(**worker_fields)
    assert claims(queue, profile, **good), f"{rule}: the matching job was not claimed"
    assert not claims(queue, profile, **bad), f"{rule}: a job that must not match was claimed"


def test_profile_registered_after_jobs_sees_them(queue: QueueFunctions) -> None:
    """Compatibility is computed both when a class appears and when a profile does."""
    queue.enqueue("late", JobSpec(service="comfyui", requirements={"region": "eu"}), "{}")
    profile = worker(region="eu")
    assert queue.register_worker(profile) == 1
    claimed = queue.claim(profile.signature, "w", 30_000)
    assert isinstance(claimed, Claimed) and claimed.job_id == "late"
