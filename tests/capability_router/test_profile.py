"""Worker profiles from the original's environment variables."""

from __future__ import annotations

import pytest

from capability_router.errors import InvalidProfile
from capability_router.profile import WorkerProfile


def test_profile_from_original_environment_variables() -> None:
    profile = WorkerProfile.from_env({
        "WORKER_ID": "gpu-0", "WORKER_SERVICES": "comfyui, simulation",
        "WORKER_GPU_MEMORY_GB": "24", "WORKER_RAM_GB": "64", "WORKER_MODELS": "comfyui:sdxl,flux",
        "WORKER_CUSTOMER_ISOLATION": "strict", "ALLOWED_CUSTOMERS": "acme,globex",
        "DENIED_CUSTOMERS": "evil", "WORKER_WORKFLOW_ID": "wf-9", "WORKER_REGION": "eu-west",
        "WORKER_PROFILE_JSON": '{"features": ["fp16"], "cost": {"tier": 2}}',
    })
    normalized = profile.normalized()
    assert profile.worker_id == "gpu-0"
    assert normalized["services"] == ["comfyui", "simulation"]
    assert normalized["caps"]["hardware.gpu_memory_gb"] == 24
    assert normalized["caps"]["models.comfyui"] == ["flux", "sdxl"]  # bare names: every service
    assert normalized["caps"]["models.simulation"] == ["flux"]
    assert normalized["isolation"] == "strict"
    assert normalized["allowed"] == ["acme", "globex"] and normalized["denied"] == ["evil"]
    assert normalized["workflow_id"] == "wf-9"
    assert normalized["caps"]["region"] == "eu-west"
    assert normalized["caps"]["features"] == ["fp16"] and normalized["caps"]["cost.tier"] == 2


def test_equal_capabilities_share_a_signature() -> None:
    a = WorkerProfile(worker_id="a", services=["x"], hardware={"gpu_memory_gb": 8})
    b = WorkerProfile(worker_id="b", services=["x"], hardware={"gpu_memory_gb": 8})
    c = WorkerProfile(worker_id="c", services=["x"], hardware={"gpu_memory_gb": 16})
    assert a.signature == b.signature != c.signature


@pytest.mark.parametrize("env,message", [
    ({"WORKER_GPU_MEMORY_GB": "big"}, "WORKER_GPU_MEMORY_GB must be a number"),
    ({"WORKER_CUSTOMER_ISOLATION": "paranoid"}, "customer isolation must be"),
    ({"WORKER_MODELS": "{broken"}, "WORKER_MODELS is not valid JSON"),
    # a model (or service) named "": no job can require it, so it was a typo served
    ({"WORKER_MODELS": "comfyui:,comfyui:sdxl"},
     "WORKER_MODELS item 'comfyui:' needs service:model, both named"),
    ({"WORKER_MODELS": ":sdxl"}, "WORKER_MODELS item ':sdxl' needs service:model"),
    ({"WORKER_MODELS": '{"comfyui": ["sdxl", ""]}'}, "WORKER_MODELS names an empty"),
    ({"WORKER_MODELS": '{"": ["sdxl"]}'}, "WORKER_MODELS names an empty"),
    ({"WORKER_PROFILE_JSON": "[1"}, "WORKER_PROFILE_JSON is not valid JSON"),
    # a name given twice was taken silently, the last one winning: an 8 GB worker said 80
    ({"WORKER_PROFILE_JSON": '{"hardware": {"gpu_memory_gb": 8, "gpu_memory_gb": 80}}'},
     'WORKER_PROFILE_JSON is not valid JSON: name "gpu_memory_gb" appears twice'),
    ({"WORKER_MODELS": '{"comfyui": ["sdxl"], "comfyui": ["flux"]}'},
     'WORKER_MODELS is not valid JSON: name "comfyui" appears twice'),
    # Python's json takes NaN and Infinity, and "inf" reads as a number: each profile was
    # registered with a bare Infinity or NaN, which no strict JSON reader takes
    ({"WORKER_PROFILE_JSON": '{"hardware": {"gpu_memory_gb": Infinity}}'},
     "hardware.gpu_memory_gb must be a finite number, got inf"),
    ({"WORKER_PROFILE_JSON": '{"region": NaN}'}, "region must be a finite number, got nan"),
    ({"WORKER_PROFILE_JSON": '{"speeds": [1, -Infinity]}'}, "speeds must be a finite number"),
    ({"WORKER_SPEED": "inf"}, "speed must be a finite number, got inf"),
    # A wrong kind was taken as it came: "echo" served the services c, e, h and o, and a
    # model named as text its letters; the others were tracebacks or matched no job
    ({"WORKER_PROFILE_JSON": '{"services": "echo"}'},
     'WORKER_PROFILE_JSON services must be a list of service names, got "echo"'),
    ({"WORKER_PROFILE_JSON": '{"models": {"comfyui": "sdxl"}}'},
     "WORKER_PROFILE_JSON models must map service names to lists of models"),
    ({"WORKER_PROFILE_JSON": '{"hardware": [24]}'},
     "WORKER_PROFILE_JSON hardware must be a JSON object, got \\[24\\]"),
    ({"WORKER_PROFILE_JSON": '{"customer_access": "strict"}'},
     "WORKER_PROFILE_JSON customer_access must be a JSON object"),
    ({"WORKER_PROFILE_JSON": '{"workflow_id": 5}'},
     "WORKER_PROFILE_JSON workflow_id must be a string, got 5"),
    ({"WORKER_PROFILE_JSON": "[1, 2]"}, "WORKER_PROFILE_JSON must be a JSON object, got list"),
    # a name no job's customer_id can be: the worker matched no customer by it
    ({"ALLOWED_CUSTOMERS": "acme,big corp"},
     "allowed_customers must be customer ids .*, got 'big corp'"),
    ({"DENIED_CUSTOMERS": "evil/inc"}, "denied_customers must be customer ids"),
])
def test_bad_worker_environment_is_refused_with_the_variable_named(env, message) -> None:
    with pytest.raises(InvalidProfile, match=message):
        WorkerProfile.from_env({"WORKER_ID": "w", **env})



@pytest.mark.parametrize(("env", "services"), [
    ({}, ["echo", "simulation", "text"]),
    ({"WORKER_SERVICES": "echo"}, ["echo"]),
    ({"WORKER_PROFILE_JSON": '{"services": ["echo"], "region": "eu"}'}, ["echo"]),
    ({"WORKER_PROFILE_JSON": '{"region": "eu"}'}, ["echo", "simulation", "text"]),
    # a typo: the worker waited for jobs no job type files, or failed what it claimed
    ({"WORKER_SERVICES": "echo,simulaton"}, "no job type of this app runs 'simulaton' "
                                            "\\(known: comfyui, echo, simulation, text"),
])
def test_a_worker_serves_the_services_its_environment_names_else_every_job_type(
        app, monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
        services: list[str] | str) -> None:
    """Tried: WORKER_PROFILE_JSON naming ``"services": ["echo"]``. Before, `emp worker`
    replaced them with every job type (WORKER_SERVICES unset), so a worker meant for
    echo alone also took simulation and text jobs; now the profile's services hold. And
    ``WORKER_SERVICES=echo,simulaton`` (a typo) started a worker that waited for good for
    jobs no job type files; now the start stops naming it and the known services."""
    from emp_tasks.worker import build_profile

    for name in ("WORKER_SERVICES", "WORKER_PROFILE_JSON", "EMP_CONNECTOR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if isinstance(services, str):
        with pytest.raises(InvalidProfile, match=services):
            build_profile(app)
    else:
        assert build_profile(app).services == services
