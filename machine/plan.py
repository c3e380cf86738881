"""The worker plan: which programs a machine runs, from ``WORKERS`` and its GPUs.

``WORKERS`` is the original's syntax: comma-separated ``<kind>:<count>`` items,
``<count>`` a positive integer or ``auto`` (one per detected GPU); a bare
``<kind>`` means one. A machine runs at most ``MAX_WORKERS`` (256) workers.
Kinds are connector kinds: ``comfyui``, ``comfyui-remote``, ``simulation``.
Example: ``comfyui:auto,simulation:2``.

- GPU-bound kinds (``comfyui``, ``simulation``, which stands in for a GPU
  service) get one GPU per worker: worker ``n`` owns GPU ``n mod <GPUs>``
  (``auto`` gives each GPU exactly one worker; a larger count shares GPUs
  round-robin). The worker and its service see only that GPU
  (``CUDA_VISIBLE_DEVICES``, with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so CUDA
  numbers GPUs like NVML and nvidia-smi do), and the worker's profile gets the
  GPU's memory and model. Without GPUs, ``auto`` is an error and a count runs
  workers without GPU fields.
- ``comfyui-remote`` uses no local GPU; ``auto`` is an error for it.
- Worker ``n`` of a kind is supervisor program ``<kind>-<n>`` with worker id
  ``<machine_id>-<kind>-<n>`` and connector id ``<kind>-<n>``.
- Local ComfyUI worker ``n`` talks to ``http://127.0.0.1:<COMFYUI_BASE_PORT + n>``;
  when ``COMFYUI_COMMAND`` is set the machine also runs that ComfyUI instance as
  program ``comfyui-server-<n>``, started before the workers.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from machine.connectors.factory import KINDS, service_of_kind
from machine.errors import PlanError, UnknownProgram
from machine.gpus import Gpu, GpuInventory

#: Connector kinds whose workers each own a local GPU.
GPU_KINDS = frozenset({"comfyui", "simulation"})
#: Kinds whose service this machine may run itself (see ``COMFYUI_COMMAND``).
LOCAL_SERVICE_KINDS = frozenset({"comfyui"})
#: Port of ComfyUI instance 0; instance N listens on this + N (``COMFYUI_BASE_PORT``).
COMFYUI_BASE_PORT = 8188
#: Most workers one machine runs: a typo such as ``simulation:100000000`` is refused
#: in one line instead of building (and starting) that many programs.
MAX_WORKERS = 256
#: Supervisor program roles.
WORKER, SERVICE = "worker", "service"

_ITEM_RE = re.compile(r"^(?P<kind>[a-z][a-z0-9\-]*)(?::(?P<count>[^:]+))?$")
#: A positive count in ASCII digits, short enough for int() (it refuses over 4300 digits).
_COUNT_RE = re.compile(r"^0*[1-9][0-9]{0,8}$")


@dataclass(frozen=True)
class PlanItem:
    """One ``WORKERS`` item: a connector kind and a count (None = ``auto``)."""

    kind: str
    count: int | None


@dataclass
class ProgramSpec:
    """One supervised program: a worker or a service (ComfyUI instance)."""

    name: str
    role: str
    kind: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    gpu: Gpu | None = None
    directory: str | None = None
    #: Worker id (workers only).
    worker_id: str | None = None
    #: ComfyUI port: the one a service listens on, the one a worker connects to.
    port: int | None = None

    @property
    def service(self) -> str:
        """The job service a worker serves (its connector's service)."""
        return service_of_kind(self.kind)

    def summary(self) -> dict[str, object]:
        return {"name": self.name, "role": self.role, "kind": self.kind,
                "worker_id": self.worker_id, "gpu": self.gpu.index if self.gpu else None,
                "port": self.port}


@dataclass
class MachinePlan:
    """Everything a machine supervises."""

    machine_id: str
    inventory: GpuInventory
    programs: list[ProgramSpec]

    @property
    def workers(self) -> list[ProgramSpec]:
        return [p for p in self.programs if p.role == WORKER]

    @property
    def services(self) -> list[ProgramSpec]:
        return [p for p in self.programs if p.role == SERVICE]

    def program(self, name: str) -> ProgramSpec:
        """The program called ``name`` (a worker id works too); raises UnknownProgram."""
        for program in self.programs:
            if name in (program.name, program.worker_id):
                return program
        raise UnknownProgram(name)


def parse_workers(text: str) -> list[PlanItem]:
    """Parse ``WORKERS``; PlanError names the bad item."""
    items: list[PlanItem] = []
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        match = _ITEM_RE.match(item)
        if not match:
            raise PlanError(f"WORKERS item {item!r} is not <kind>:<count|auto>")
        kind, count_text = match["kind"], (match["count"] or "1").strip()
        if kind not in KINDS:
            raise PlanError(f"WORKERS item {item!r}: unknown kind {kind!r} "
                            f"(one of: {', '.join(sorted(KINDS))})")
        if any(seen.kind == kind for seen in items):
            raise PlanError(f"WORKERS item {item!r}: {kind} is listed twice")
        if count_text == "auto":
            count = None
        elif _COUNT_RE.match(count_text):  # not isdigit(): it takes '²', which int() refuses
            count = int(count_text)
        else:
            raise PlanError(f"WORKERS item {item!r}: count must be a positive integer or auto")
        items.append(PlanItem(kind, count))
    if not items:
        raise PlanError("WORKERS is empty: name at least one <kind>:<count|auto>")
    return items


def build_plan(machine_id: str, workers: str | Iterable[PlanItem], inventory: GpuInventory,
               loglevel: str = "info", comfyui_command: str | None = None,
               comfyui_dir: str | None = None,
               comfyui_base_port: int = COMFYUI_BASE_PORT) -> MachinePlan:
    """The programs of a machine with ``inventory`` running ``workers``."""
    items = parse_workers(workers) if isinstance(workers, str) else list(workers)
    gpus = inventory.gpus
    services: list[ProgramSpec] = []
    worker_programs: list[ProgramSpec] = []
    counts = [_count(item, inventory) for item in items]
    if sum(counts) > MAX_WORKERS:
        raise PlanError(f"WORKERS asks for {sum(counts)} workers: a machine runs at most "
                        f"{MAX_WORKERS} workers")
    for item, count in zip(items, counts, strict=True):
        for n in range(count):
            gpu = gpus[n % len(gpus)] if item.kind in GPU_KINDS and gpus else None
            name = f"{item.kind}-{n}"
            worker = ProgramSpec(
                name=name, role=WORKER, kind=item.kind, gpu=gpu,
                worker_id=f"{machine_id}-{name}",
                command=[sys.executable, "-m", "emp_tasks.cli", "worker", "-l", loglevel])
            worker.env = {
                "MACHINE_ID": machine_id, "WORKER_ID": worker.worker_id or "",
                "WORKER_SERVICES": worker.service, "EMP_CONNECTOR": item.kind,
                "EMP_CONNECTOR_ID": name, **_gpu_env(gpu),
            }
            if item.kind in LOCAL_SERVICE_KINDS:
                worker.port = comfyui_base_port + n
                if worker.port > 65535:
                    raise PlanError(f"{name} would use port {worker.port}: COMFYUI_BASE_PORT "
                                    f"{comfyui_base_port} + {n} is past 65535")
                worker.env["COMFYUI_URL"] = f"http://127.0.0.1:{worker.port}"
                if comfyui_command:
                    services.append(_comfyui_server(n, gpu, worker.port, comfyui_command,
                                                    comfyui_dir))
            worker_programs.append(worker)
    return MachinePlan(machine_id, inventory, services + worker_programs)


def _count(item: PlanItem, inventory: GpuInventory) -> int:
    if item.count is not None:
        return item.count
    if item.kind not in GPU_KINDS:
        raise PlanError(f"WORKERS item {item.kind}:auto: {item.kind} uses no local GPU, "
                        "so auto means nothing; give a count")
    if not inventory.gpus:
        how = ("EMP_MOCK_GPUS is 0" if inventory.source == "mock"
               else "none detected by NVML or nvidia-smi")
        raise PlanError(f"WORKERS item {item.kind}:auto: no GPUs ({how}); give a count, or "
                        "set EMP_MOCK_GPUS on a machine without GPUs")
    return len(inventory.gpus)


def _gpu_env(gpu: Gpu | None) -> dict[str, str]:
    if gpu is None:
        return {}
    return {"CUDA_VISIBLE_DEVICES": str(gpu.index), "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "WORKER_GPU_MEMORY_GB": f"{gpu.memory_gb:g}", "WORKER_GPU_MODEL": gpu.name}


def _comfyui_server(n: int, gpu: Gpu | None, port: int, command: str,
                    directory: str | None) -> ProgramSpec:
    if "{gpu}" in command and gpu is None:
        raise PlanError(f"COMFYUI_COMMAND uses {{gpu}} but comfyui-{n} has no GPU")
    text = command.replace("{port}", str(port)).replace("{gpu}", str(gpu.index) if gpu else "")
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise PlanError(f"COMFYUI_COMMAND cannot be split into arguments: {exc}") from None
    if not argv:
        raise PlanError("COMFYUI_COMMAND is empty")
    env = {k: v for k, v in _gpu_env(gpu).items() if k.startswith("CUDA_")}
    return ProgramSpec(name=f"comfyui-server-{n}", role=SERVICE, kind="comfyui", command=argv,
                       env=env, gpu=gpu, directory=directory, port=port)
