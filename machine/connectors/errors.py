"""Classify a service's error message into an ErrorType, which decides retries.

One table for every connector, so a simulated failure is classified exactly
like a real one. Order matters: an out-of-memory message that names a model
is a memory failure (it may fit on a bigger GPU), not a missing model.
"""

from __future__ import annotations

import re

from machine.connectors.base import ErrorType

#: Inputs of ComfyUI loader nodes whose values are model files.
MODEL_INPUTS = ("ckpt_name", "lora_name", "vae_name", "unet_name", "clip_name",
                "control_net_name", "model_name", "style_model_name", "gligen_name",
                "clip_vision_name", "upscale_model_name")

_MODEL_FILE = r"\.(safetensors|ckpt|pt|pth|bin|gguf|sft)\b"

_RULES: tuple[tuple[ErrorType, re.Pattern[str]], ...] = (
    (ErrorType.MEMORY, re.compile(
        r"out[ _]?of[ _]?memory|\boom\b|allocation on device|not enough memory"
        r"|cudnn_status_alloc_failed|cublas_status_alloc_failed"
        # torch's CPU allocator on Linux (ComfyUI --cpu sends it as a plain
        # RuntimeError), ENOMEM, C++'s and Python's own allocation failures:
        r"|can'?t allocate memory|cannot allocate memory|bad_alloc|\bMemoryError\b", re.I)),
    (ErrorType.MODEL, re.compile(
        rf"\b({'|'.join(MODEL_INPUTS)})\b.*not in|model (file )?not found|missing model"
        rf"|no such model|could not (find|load) (the )?(model|checkpoint)|checkpoint not found"
        rf"|(no such file|not found|does not exist).*{_MODEL_FILE}"
        # A model file that is there but unreadable (empty, truncated, corrupt):
        r"|safetensorerror|error while deserializing header|headertoolarge"
        r"|metadataincompletebuffer|pytorchstreamreader failed|invalid load key", re.I)),
    (ErrorType.TIMEOUT, re.compile(r"timed? ?out|timeout|deadline exceeded", re.I)),
    (ErrorType.NETWORK, re.compile(
        r"connection (refused|reset|aborted|error|closed)|network is unreachable|broken pipe"
        r"|name or service not known|temporary failure in name resolution"
        r"|remote end closed|max retries exceeded", re.I)),
    (ErrorType.VALIDATION, re.compile(
        r"value not in list|failed validation|invalid prompt|required input is missing"
        r"|prompt has no outputs|invalid (input|workflow|payload)|does not exist", re.I)),
)


def classify_error(message: str, exception_type: str = "") -> ErrorType:
    """The failure class of an error message (and exception type name); SERVICE if unknown."""
    text = f"{exception_type}: {message}" if exception_type else message
    for error_type, pattern in _RULES:
        if pattern.search(text):
            return error_type
    return ErrorType.SERVICE
