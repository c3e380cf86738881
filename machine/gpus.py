"""Which GPUs this machine has: NVML, else ``nvidia-smi``, else none; or mock ones.

Detection order:

1. ``EMP_MOCK_GPUS=<count>`` (0 to 64): that many mock GPUs of
   ``EMP_MOCK_GPU_MEMORY_GB`` [24] GB named ``EMP_MOCK_GPU_MODEL`` [``Mock GPU``],
   for machines without one (development, CI, simulation fleets).
2. NVML through ``nvidia-ml-py`` (module ``pynvml``) when it imports and the
   driver answers.
3. ``nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader,nounits``.
4. None.

Memory is reported in whole GB (GiB, rounded): a 24 GB card shows 23.99 GiB
and must still match a job asking for 24.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from machine.errors import MachineError

logger = logging.getLogger(__name__)

#: Mock GPU defaults.
MOCK_MEMORY_GB = 24
MOCK_MODEL = "Mock GPU"
#: Most mock GPUs: a typo such as 100000000 is refused instead of building them for minutes.
MAX_MOCK_GPUS = 64
#: Seconds nvidia-smi may take before it counts as absent.
NVIDIA_SMI_TIMEOUT = 10.0

_GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    """One GPU: its index (what ``CUDA_VISIBLE_DEVICES`` takes), model and memory."""

    index: int
    name: str
    memory_gb: float
    uuid: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GpuInventory:
    """The GPUs found and how (``mock``, ``nvml``, ``nvidia-smi`` or ``none``)."""

    source: str
    gpus: list[Gpu] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "gpus": [gpu.as_dict() for gpu in self.gpus]}


def detect_gpus(environ: Mapping[str, str] | None = None) -> GpuInventory:
    """This machine's GPUs, by the first method that works (see the module docstring)."""
    env = os.environ if environ is None else environ
    if env.get("EMP_MOCK_GPUS", "").strip():
        return mock_gpus(env)
    for source, probe in (("nvml", _nvml_gpus), ("nvidia-smi", _nvidia_smi_gpus)):
        try:
            found = probe()
        except Exception as exc:  # a missing driver or tool shows up in many forms
            logger.debug("GPU detection by %s failed: %s", source, exc)
            continue
        if found is not None:
            return GpuInventory(source, found)
    return GpuInventory("none")


def mock_gpus(env: Mapping[str, str]) -> GpuInventory:
    """Mock GPUs from ``EMP_MOCK_GPUS`` / ``EMP_MOCK_GPU_MEMORY_GB`` / ``EMP_MOCK_GPU_MODEL``."""
    raw_count, raw_memory = env["EMP_MOCK_GPUS"], env.get("EMP_MOCK_GPU_MEMORY_GB")
    # One message per setting: the one that is wrong, with only its own value.
    try:
        count = int(raw_count)
    except ValueError:
        count = -1
    if not 0 <= count <= MAX_MOCK_GPUS:
        raise MachineError(f"EMP_MOCK_GPUS must be a whole number from 0 to {MAX_MOCK_GPUS}, "
                           f"got {raw_count!r}")
    try:
        memory = float(raw_memory or MOCK_MEMORY_GB)
    except ValueError:
        memory = float("nan")
    if not 0 < memory < float("inf"):  # NaN, inf: a GPU that serves any job
        raise MachineError(f"EMP_MOCK_GPU_MEMORY_GB must be a finite number > 0 (GB per mock "
                           f"GPU), got {raw_memory!r}")
    model = env.get("EMP_MOCK_GPU_MODEL") or MOCK_MODEL
    memory_gb = int(memory) if memory.is_integer() else memory
    return GpuInventory("mock", [Gpu(i, model, memory_gb, f"MOCK-GPU-{i}") for i in range(count)])


def _nvml_gpus() -> list[Gpu] | None:
    """GPUs through NVML; None when pynvml is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    pynvml.nvmlInit()
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(Gpu(index, _text(pynvml.nvmlDeviceGetName(handle)),
                            round(memory / _GIB), _text(pynvml.nvmlDeviceGetUUID(handle))))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _nvidia_smi_gpus() -> list[Gpu] | None:
    """GPUs from ``nvidia-smi``; None when it is not on PATH."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    output = subprocess.run(
        [tool, "--query-gpu=index,name,memory.total,uuid", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT, check=True).stdout
    return parse_nvidia_smi(output)


def parse_nvidia_smi(output: str) -> list[Gpu]:
    """Parse ``index, name, memory.total [MiB], uuid`` lines; ValueError on anything else."""
    gpus = []
    for line in output.splitlines():
        if not line.strip():
            continue
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 4:
            raise ValueError(f"unexpected nvidia-smi line {line!r}")
        index, name, memory_mib, uuid = parts
        gpus.append(Gpu(int(index), name, round(float(memory_mib) / 1024), uuid))
    return gpus


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
