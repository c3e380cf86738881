"""Error classification: one table for real and simulated failures."""

from __future__ import annotations

import pytest

from machine.connectors import ConnectorError, ErrorType
from machine.connectors.errors import classify_error


@pytest.mark.parametrize(("message", "exception_type", "expected"), [
    ("CUDA out of memory. Tried to allocate 2.00 GiB", "", ErrorType.MEMORY),
    ("Allocation on device 0 would exceed allowed memory. (out of memory)",
     "torch.OutOfMemoryError", ErrorType.MEMORY),
    ("", "torch.cuda.OutOfMemoryError", ErrorType.MEMORY),
    ("out of memory while loading model sdxl.safetensors", "", ErrorType.MEMORY),
    # torch's CPU allocator (ComfyUI --cpu), as on Linux and on Windows; Python's own.
    ("[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't allocate "
     "memory: you tried to allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)\n",
     "RuntimeError", ErrorType.MEMORY),
    ("[enforce fail at alloc_cpu.cpp:72] data. DefaultCPUAllocator: not enough memory: "
     "you tried to allocate 1073741824 bytes.", "RuntimeError", ErrorType.MEMORY),
    ("", "MemoryError", ErrorType.MEMORY),
    ("std::bad_alloc", "RuntimeError", ErrorType.MEMORY),
    ("Value not in list: ckpt_name: 'x.safetensors' not in ['a']", "", ErrorType.MODEL),
    ("[Errno 2] No such file or directory: '/models/checkpoints/x.safetensors'",
     "FileNotFoundError", ErrorType.MODEL),
    ("Value not in list: sampler_name: 'foo' not in ['euler']", "", ErrorType.VALIDATION),
    ("Read timed out", "", ErrorType.TIMEOUT),
    ("Connection refused", "", ErrorType.NETWORK),
    ("mat1 and mat2 shapes cannot be multiplied", "RuntimeError", ErrorType.SERVICE),
])
def test_classification(message: str, exception_type: str, expected: ErrorType) -> None:
    assert classify_error(message, exception_type) == expected


def test_connector_error_survives_a_celery_style_round_trip() -> None:
    error = ConnectorError("CUDA out of memory", ErrorType.MEMORY, {"node": "3"})
    rebuilt = ConnectorError(*error.args)  # Celery rebuilds exceptions from args
    assert rebuilt.error_type == ErrorType.MEMORY and rebuilt.retryable
    assert str(rebuilt) == "[memory] CUDA out of memory"
    assert not ConnectorError("bad", "validation").retryable
