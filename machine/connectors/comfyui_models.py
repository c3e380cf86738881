"""Which models a ComfyUI server has, read from its loader nodes' input options.

Requirement matching is exact string membership, so every model is reported
under the name ComfyUI uses in workflows (``sdxl/base.safetensors``) and,
as aliases, without its file extension (``sdxl/base``) and with ``/`` for
a Windows server's ``\\`` separators. Names are never shortened to their
last path part: two folders may hold files of the same name.
"""

from __future__ import annotations

from typing import Any

#: Loader nodes and the input whose options are model files.
MODEL_LOADERS: tuple[tuple[str, str], ...] = (
    ("CheckpointLoaderSimple", "ckpt_name"),
    ("LoraLoader", "lora_name"),
    ("VAELoader", "vae_name"),
    ("UNETLoader", "unet_name"),
    ("CLIPLoader", "clip_name"),
    ("ControlNetLoader", "control_net_name"),
    ("UpscaleModelLoader", "model_name"),
)

#: Built-in loader options that are no model file (VAELoader's "decode nothing").
NOT_MODEL_FILES = frozenset({"pixel_space"})

#: Extensions dropped for the extension-less alias.
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")


def combo_options(node_info: dict[str, Any] | None, input_name: str) -> list[str]:
    """Options of a combo input in ``/object_info`` (old ``[[...], {}]`` and new COMBO forms)."""
    if not node_info:
        return []
    inputs = node_info.get("input") or {}
    spec = (inputs.get("required") or {}).get(input_name) or (
        inputs.get("optional") or {}).get(input_name)
    if not isinstance(spec, list) or not spec:
        return []
    if isinstance(spec[0], list):
        options = spec[0]
    elif spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options") or []
    else:
        return []
    return [option for option in options if isinstance(option, str)]


def model_aliases(name: str) -> set[str]:
    """``name`` plus its ``/``-separated and extension-less forms."""
    names = {name, name.replace("\\", "/")}
    for item in list(names):
        for extension in MODEL_EXTENSIONS:
            if item.lower().endswith(extension) and len(item) > len(extension):
                names.add(item[: -len(extension)])
    return names
