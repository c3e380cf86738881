"""A ComfyUI-protocol server for tests: stock ComfyUI's endpoints and socket messages.

It "executes" a workflow the way ComfyUI does: only nodes an output node
needs, in dependency order, unchanged nodes reported as cached,
``executing``/``progress``/``progress_state`` per node and sampler step (with
binary preview frames in between), ``executed`` with the UI outputs of SaveImage
(a real PNG in its output directory, served by ``/view``), PreviewImage (in its
temp directory, ``type: temp``, named ``ComfyUI_temp_<5 letters>_NNNNN_.png``),
PreviewAny ("Preview as Text", comfy_extras/nodes_preview_any.py: ``{"text":
["<its source as text>"]}``, no file; a ``PrimitiveString`` gives it a string) and
Preview3D (``{"result": [model_file, null, null]}``: no file, no text), then
``execution_success``, the history entry, ``status`` and ``executing {node: null}``.

What a real stock ComfyUI 0.8 was seen to do (/work/shared/reference/real-comfyui.md)
and this server does too:

- ``/ws`` sends ``status`` first; a second socket with the same clientId
  replaces the first and, while that client's prompt runs, receives
  ``executing {node: <last>}`` without a ``prompt_id``. As in ComfyUI's
  server.py, the replaced socket is not closed, it just gets nothing more, and
  when it closes later it unregisters the client id, new socket included;
- ``progress_state {prompt_id, nodes}`` besides ``progress {value, max, prompt_id, node}``;
- an identical workflow is served from cache, output nodes included:
  ``execution_cached`` lists every node and ``executed`` repeats the earlier
  output, earlier filename included (so does ``/history``), but only right
  after itself: by default ComfyUI keeps the outputs of the last prompt's nodes
  only (``cache_lru``/``cache_none`` as its ``--cache-lru``/``--cache-none``;
  see comfyui_cache.py);
- ``/interrupt`` takes effect between nodes: a node runs to its end first
  (a sampler also stops at its next step, as ComfyUI's progress hook checks it);
- ``/system_stats`` with ``cpu=True`` (``--cpu``) reports one ``cpu`` device
  whose ``vram_total`` is the system RAM;
- ``VAELoader`` lists ``pixel_space``, which is not a model file;
- ``POST /prompt`` takes the prompt id the client chose (``prompt_id`` in the
  body) and answers with it; without one it picks a uuid4.

Failure paths as a real server has them:

- ``POST /prompt`` errors (400): ``no_prompt``, an unknown node ("Cannot execute
  because node X does not exist."), ``prompt_no_outputs``, and
  ``prompt_outputs_failed_validation`` with node errors ``required_input_missing``,
  ``invalid_input_type`` (INT inputs) and ``value_not_in_list`` (with
  ``extra_info.input_config``; a checkpoint not in the list), checked on the nodes
  an output needs; ``/history/<unknown id>`` is ``{}``;
- a checkpoint in ``broken_checkpoints``: ``execution_error`` FileNotFoundError;
- a checkpoint in ``corrupt_checkpoints`` (an empty or truncated file):
  ``execution_error`` SafetensorError "Error while deserializing header: header too small";
- a latent over ``max_pixels``: ``execution_error`` torch.OutOfMemoryError, or with
  ``cpu`` the RuntimeError of torch's CPU allocator ("DefaultCPUAllocator: can't
  allocate memory: ... Error code 12 (Cannot allocate memory)", as on Linux);
- ``POST /interrupt`` mid-run: ``execution_interrupted`` after the running node.

Optional basic auth or bearer token (checked on HTTP and the WebSocket) and
TLS. Run alone: ``python tests/machine/comfyui_server.py --port 8188``.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import random
import string
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from comfyui_cache import OutputCache
from flask import Flask, Response, abort, jsonify, request, send_file
from flask_sock import Sock
from werkzeug.serving import make_server

OUTPUT_NODES = ("SaveImage", "PreviewImage", "PreviewAny", "Preview3D")


def txt2img(ckpt: str = "sd15.safetensors", steps: int = 4, width: int = 512,
            height: int = 512, prefix: str = "emp", batch: int = 1) -> dict[str, Any]:
    """ComfyUI's default text-to-image workflow, API format."""
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 1, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": width, "height": height, "batch_size": batch}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }


def png_bytes(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    """A small valid PNG."""
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


class NodeError(Exception):
    def __init__(self, node_id: str, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.node_id, self.exception_type, self.message = node_id, exception_type, message


class Interrupted(Exception):
    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id


class ComfyUITestServer:
    """One fake ComfyUI on a free port.

    :param root: directory for output/temp files.
    :param checkpoints: names ``CheckpointLoaderSimple.ckpt_name`` offers.
    :param loras: names ``LoraLoader.lora_name`` offers.
    :param step_seconds: time per sampler step.
    :param node_seconds: time per other node.
    :param slow_nodes: time of these node classes instead (a model load, say); like ComfyUI,
        an interrupt waits for the node's end.
    :param max_pixels: a bigger latent (width*height*batch) fails with out of memory
        (CUDA's, or with ``cpu`` the CPU allocator's).
    :param broken_checkpoints: listed but fail to load (file missing).
    :param corrupt_checkpoints: listed but fail to load (SafetensorError: header too small).
    :param vaes: names ``VAELoader.vae_name`` offers (``pixel_space`` is always added).
    :param cpu: run "with --cpu": one ``cpu`` device reporting system RAM as its VRAM.
    :param username/password: require basic auth; ``token``: require a bearer token.
    :param tls: (certfile, keyfile) to serve https/wss.
    :param combo_format: describe combos as newer ComfyUI does (``["COMBO", {options}]``).
    :param prompt_delay_seconds: ``POST /prompt`` waits this long before it queues the
        prompt and answers (a ComfyUI too busy to answer in time still queues it later).
    :param cache_lru: run "with --cache-lru N": keep up to N node outputs across prompts
        (default: only the last prompt's, as ComfyUI's classic cache).
    :param cache_none: run "with --cache-none": cache nothing.
    """

    def __init__(self, root: Path, checkpoints: Iterable[str] = ("sd15.safetensors",),
                 loras: Iterable[str] = (), step_seconds: float = 0.02,
                 node_seconds: float = 0.005, slow_nodes: dict[str, float] | None = None,
                 max_pixels: int = 1024 * 1024,
                 broken_checkpoints: Iterable[str] = (),
                 corrupt_checkpoints: Iterable[str] = (), vaes: Iterable[str] = (),
                 cpu: bool = False, username: str | None = None,
                 password: str | None = None, token: str | None = None,
                 tls: tuple[str, str] | None = None, combo_format: bool = False,
                 prompt_delay_seconds: float = 0.0, cache_lru: int = 0,
                 cache_none: bool = False) -> None:
        cache = OutputCache(lru=cache_lru, none=cache_none)  # bad options: refused first
        self.root = Path(root)
        self.dirs = {kind: self.root / kind for kind in ("output", "temp", "input")}
        for directory in self.dirs.values():
            directory.mkdir(parents=True, exist_ok=True)
        self.checkpoints, self.loras = list(checkpoints), list(loras)
        self.broken_checkpoints = set(broken_checkpoints)
        self.corrupt_checkpoints = set(corrupt_checkpoints)
        self.vaes, self.cpu = [*vaes, "pixel_space"], cpu
        self.step_seconds, self.node_seconds = step_seconds, node_seconds
        self.slow_nodes = dict(slow_nodes or {})
        self.max_pixels = max_pixels
        self.username, self.password, self.token = username, password, token
        self.tls, self.combo_format = tls, combo_format
        self.prompt_delay_seconds = prompt_delay_seconds
        self.pending: list[dict[str, Any]] = []
        self.running: dict[str, Any] | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.interrupts: list[str | None] = []
        self.requests: list[str] = []
        #: Prompt ids POSTed while another prompt was executing.
        self.queued_while_busy: list[str] = []
        self._interrupt = threading.Event()
        #: Node signature -> its UI output (None for nodes without one).
        self._cache = cache
        self._sockets: dict[str, Any] = {}
        self._last_node: str | None = None
        self._send_locks: dict[int, threading.Lock] = {}
        self._cond = threading.Condition()
        self._numbers = itertools.count()
        self._files = itertools.count(1)
        self._stopped = threading.Event()
        self.app = self._create_app()
        self._server: Any = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------

    def start(self, port: int = 0) -> ComfyUITestServer:
        """Serve on ``port`` (0: a free one) and start executing prompts."""
        ssl_context = self.tls if self.tls else None
        self._server = make_server("127.0.0.1", port, self.app, threaded=True,
                                   ssl_context=ssl_context)
        self.port = self._server.server_port
        serve = lambda: self._server.serve_forever(poll_interval=0.05)  # noqa: E731
        for target in (serve, self._execute_forever):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()
        self.drop_sockets()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> ComfyUITestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def drop_sockets(self) -> None:
        """Close every client socket (a proxy or network blip)."""
        for ws in list(self._sockets.values()):
            try:
                ws.close()
            except Exception:
                pass

    # -- HTTP and WebSocket -------------------------------------------------------

    def _create_app(self) -> Flask:
        app = Flask("comfyui-test-server")
        sock = Sock(app)

        @app.before_request
        def check_auth() -> Any:
            self.requests.append(f"{request.method} {request.path}")
            if not self._authorized():
                return Response("unauthorized", 401, {"WWW-Authenticate": 'Basic realm="x"'})
            return None

        @app.post("/prompt")
        def prompt() -> Any:
            body = request.get_json(silent=True) or {}
            if "prompt" not in body:
                return jsonify({"error": {"type": "no_prompt", "message": "No prompt provided",
                                          "details": "No prompt provided", "extra_info": {}},
                                "node_errors": {}}), 400
            time.sleep(self.prompt_delay_seconds)
            workflow, client_id = body.get("prompt"), body.get("client_id")
            error = self._validate(workflow)
            if error is not None:
                return jsonify(error), 400
            extra_data = dict(body.get("extra_data") or {})
            if "client_id" in body:
                extra_data["client_id"] = client_id
            extra_data["create_time"] = int(time.time() * 1000)  # as ComfyUI 0.8 adds it
            # As ComfyUI's server.py: the client may choose the id.
            prompt_id = str(body.get("prompt_id") or uuid.uuid4())
            item = {"number": next(self._numbers), "prompt_id": prompt_id,
                    "prompt": workflow, "client_id": client_id, "extra_data": extra_data}
            with self._cond:
                if self.running is not None:
                    self.queued_while_busy.append(item["prompt_id"])
                self.pending.append(item)
                self._cond.notify_all()
            self._broadcast_status()
            return jsonify({"prompt_id": item["prompt_id"], "number": item["number"],
                            "node_errors": {}})

        @app.get("/queue")
        def queue() -> Any:
            def row(item: dict[str, Any]) -> list[Any]:
                return [item["number"], item["prompt_id"], item["prompt"],
                        item["extra_data"], self._outputs_of(item["prompt"])]
            with self._cond:
                running = [row(self.running)] if self.running else []
                return jsonify({"queue_running": running,
                                "queue_pending": [row(i) for i in self.pending]})

        @app.post("/queue")
        def edit_queue() -> Any:
            body = request.get_json(silent=True) or {}
            with self._cond:
                if body.get("clear"):
                    self.pending.clear()
                drop = set(body.get("delete") or [])
                self.pending[:] = [i for i in self.pending if i["prompt_id"] not in drop]
            self._broadcast_status()  # as ComfyUI's queue_updated
            return Response(status=200)

        @app.post("/interrupt")
        def interrupt() -> Any:
            body = request.get_json(silent=True) or {}
            wanted = body.get("prompt_id")
            self.interrupts.append(wanted)
            with self._cond:
                running = self.running["prompt_id"] if self.running else None
            if running and (wanted is None or wanted == running):
                self._interrupt.set()
            return Response(status=200)

        @app.get("/history")
        def all_history() -> Any:
            return jsonify(self.history)

        @app.get("/history/<prompt_id>")
        def history(prompt_id: str) -> Any:
            entry = self.history.get(prompt_id)
            return jsonify({prompt_id: entry} if entry else {})

        @app.get("/view")
        def view() -> Any:
            base = self.dirs.get(request.args.get("type", "output"))
            if base is None:
                abort(400)
            path = (base / request.args.get("subfolder", "") / request.args["filename"]).resolve()
            if not path.is_relative_to(base.resolve()):
                abort(400)  # as ComfyUI 0.8 answers ``filename=../x``
            if not path.is_file():
                abort(404)
            return send_file(path, mimetype="image/png")

        @app.get("/system_stats")
        def system_stats() -> Any:
            gib = 1024 ** 3
            ram_total, ram_free = 64 * gib, 32 * gib
            if self.cpu:  # what ComfyUI --cpu reports: the system RAM as the device's VRAM
                device = {"name": "cpu", "type": "cpu", "index": None,
                          "vram_total": ram_total, "vram_free": ram_free,
                          "torch_vram_total": ram_total, "torch_vram_free": ram_free}
            else:
                device = {"name": "cuda:0 Test GPU", "type": "cuda", "index": 0,
                          "vram_total": 24 * gib, "vram_free": 20 * gib,
                          "torch_vram_total": 24 * gib, "torch_vram_free": 20 * gib}
            argv = ["main.py", *(["--cpu"] if self.cpu else []),
                    *(["--cache-lru", str(self._cache.lru)] if self._cache.lru else []),
                    *(["--cache-none"] if self._cache.none else [])]
            return jsonify({
                "system": {"os": "linux", "ram_total": ram_total, "ram_free": ram_free,
                           "comfyui_version": "0.8.0", "python_version": "3.11",
                           "pytorch_version": "2.x", "embedded_python": False, "argv": argv},
                "devices": [device]})

        @app.get("/object_info")
        def object_info() -> Any:
            return jsonify({name: self._node_info(name) for name in self._node_classes()})

        @app.get("/object_info/<node_class>")
        def object_info_one(node_class: str) -> Any:
            if node_class not in self._node_classes():
                return jsonify({})
            return jsonify({node_class: self._node_info(node_class)})

        @app.get("/models/<folder>")
        def models(folder: str) -> Any:
            return jsonify({"checkpoints": self.checkpoints, "loras": self.loras}.get(folder, []))

        @sock.route("/ws")
        def websocket(ws: Any) -> None:
            client_id = request.args.get("clientId") or uuid.uuid4().hex
            self._send_locks[id(ws)] = threading.Lock()
            self._sockets[client_id] = ws  # one socket per client id; a replaced one stays open
            try:
                self._send(ws, "status", {"status": {"exec_info": {
                    "queue_remaining": self._queue_remaining()}}, "sid": client_id})
                with self._cond:
                    running = self.running
                    last = self._last_node
                if running and running["client_id"] == client_id and last is not None:
                    self._send(ws, "executing", {"node": last})  # no prompt_id, as ComfyUI
                while not self._stopped.is_set():
                    ws.receive(timeout=1)
            finally:
                self._sockets.pop(client_id, None)  # ComfyUI's too: even a newer socket's
                self._send_locks.pop(id(ws), None)

        return app

    def _authorized(self) -> bool:
        header = request.headers.get("Authorization", "")
        if self.token is not None:
            return header == f"Bearer {self.token}"
        if self.username is not None:
            expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return header == f"Basic {expected}"
        return True

    def _node_classes(self) -> dict[str, dict[str, Any]]:
        return {
            "CheckpointLoaderSimple": {"ckpt_name": self._combo(self.checkpoints)},
            "VAELoader": {"vae_name": self._combo(self.vaes)},
            "LoraLoader": {"model": ["MODEL"], "clip": ["CLIP"],
                           "lora_name": self._combo(self.loras)},
            "CLIPTextEncode": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]},
            "EmptyLatentImage": {"width": ["INT", {"default": 512}],
                                 "height": ["INT", {"default": 512}],
                                 "batch_size": ["INT", {"default": 1}]},
            "KSampler": {"model": ["MODEL"], "steps": ["INT", {"default": 20}],
                         "latent_image": ["LATENT"]},
            "VAEDecode": {"samples": ["LATENT"], "vae": ["VAE"]},
            "SaveImage": {"images": ["IMAGE"], "filename_prefix": ["STRING"]},
            "PreviewImage": {"images": ["IMAGE"]},
            "PrimitiveString": {"value": ["STRING", {"multiline": False}]},
            "PreviewAny": {"source": ["*", {}]},
            "Preview3D": {"model_file": ["STRING", {"default": "", "multiline": False}]},
        }

    def _combo(self, options: list[str]) -> list[Any]:
        return ["COMBO", {"options": options}] if self.combo_format else [options, {}]

    def _node_info(self, name: str) -> dict[str, Any]:
        return {"input": {"required": self._node_classes()[name]}, "name": name,
                "display_name": name, "category": "test", "output_node": name in OUTPUT_NODES}

    def _validate(self, workflow: Any) -> dict[str, Any] | None:
        """ComfyUI's /prompt validation, the parts tests need."""
        if not isinstance(workflow, dict):
            return {"error": {"type": "invalid_prompt", "message": "Invalid prompt",
                              "details": "prompt is not an object", "extra_info": {}},
                    "node_errors": {}}
        classes = self._node_classes()
        for node_id, node in workflow.items():
            if not isinstance(node, dict) or node.get("class_type") not in classes:
                name = node.get("class_type") if isinstance(node, dict) else None
                return {"error": {"type": "invalid_prompt", "message":
                                  f"Cannot execute because node {name} does not exist.",
                                  "details": f"Node ID '#{node_id}'", "extra_info": {}},
                        "node_errors": {}}
        if not self._outputs_of(workflow):
            return {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs",
                              "details": "", "extra_info": {}}, "node_errors": {}}
        node_errors: dict[str, Any] = {}
        for output in self._outputs_of(workflow):
            for node_id in self._order(workflow, [output]):
                errors = self._input_errors(workflow[node_id], classes)
                if errors:
                    entry = node_errors.setdefault(node_id, {
                        "errors": errors, "dependent_outputs": [],
                        "class_type": workflow[node_id]["class_type"]})
                    entry["dependent_outputs"].append(output)
        if node_errors:
            return {"error": {"type": "prompt_outputs_failed_validation",
                              "message": "Prompt outputs failed validation", "details": "",
                              "extra_info": {}}, "node_errors": node_errors}
        return None

    def _input_errors(self, node: dict[str, Any],
                      classes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """One node's input errors, worded as ComfyUI's ``validate_inputs``."""
        errors = []
        inputs = node.get("inputs") or {}
        for name, spec in classes[node["class_type"]].items():
            if name not in inputs:
                errors.append({"type": "required_input_missing",
                               "message": "Required input is missing", "details": name,
                               "extra_info": {"input_name": name}})
                continue
            value = inputs[name]
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                continue  # a link to another node's output
            kind = spec[0]
            options = (spec[1].get("options") if kind == "COMBO" else
                       kind if isinstance(kind, list) else None)
            if kind == "INT":
                try:
                    int(value)
                except (TypeError, ValueError) as exc:
                    errors.append({
                        "type": "invalid_input_type",
                        "message": "Failed to convert an input value to a INT value",
                        "details": f"{name}, {value}, {exc}",
                        "extra_info": {"input_name": name, "input_config": spec,
                                       "received_value": value,
                                       "exception_message": str(exc)}})
            elif options is not None and value not in options:
                errors.append({
                    "type": "value_not_in_list", "message": "Value not in list",
                    "details": f"{name}: '{value}' not in {options}",
                    "extra_info": {"input_name": name, "input_config": spec,
                                   "received_value": value}})
        return errors

    @staticmethod
    def _outputs_of(workflow: dict[str, Any]) -> list[str]:
        return [n for n, node in workflow.items() if node.get("class_type") in OUTPUT_NODES]

    # -- messages -----------------------------------------------------------------

    def _send(self, ws: Any, kind: str | None, data: Any) -> None:
        lock = self._send_locks.get(id(ws))
        if lock is None:
            return
        with lock:
            try:
                ws.send(data if kind is None else json.dumps({"type": kind, "data": data}))
            except Exception:  # the client went away mid-send: ComfyUI drops it too
                pass

    def _to_client(self, client_id: str | None, kind: str | None, data: Any) -> None:
        ws = self._sockets.get(client_id or "")
        if ws is not None:
            self._send(ws, kind, data)

    def _queue_remaining(self) -> int:
        with self._cond:
            return len(self.pending) + (1 if self.running else 0)

    def _broadcast_status(self) -> None:
        data = {"status": {"exec_info": {"queue_remaining": self._queue_remaining()}}}
        for ws in list(self._sockets.values()):
            self._send(ws, "status", data)

    # -- execution ----------------------------------------------------------------

    def _execute_forever(self) -> None:
        while not self._stopped.is_set():
            with self._cond:
                while not self.pending and not self._stopped.is_set():
                    self._cond.wait(0.5)
                if self._stopped.is_set():
                    return
                self.running = self.pending.pop(0)
                self._interrupt.clear()
            item = self.running
            try:
                self._execute(item)
            finally:
                with self._cond:
                    self.running = None
                    self._last_node = None
            # As ComfyUI's prompt worker: the queue update (status) first, then "done".
            self._broadcast_status()
            self._to_client(item["client_id"], "executing",
                            {"node": None, "prompt_id": item["prompt_id"]})

    def _execute(self, item: dict[str, Any]) -> None:
        prompt_id, workflow, client_id = item["prompt_id"], item["prompt"], item["client_id"]

        def send(kind: str | None, data: Any, per_node: bool = False) -> None:
            """A JSON message with the prompt id (``per_node``: in each of its nodes too),
            or (kind None) a binary frame."""
            if per_node:
                data = {**data, "nodes": {n: {**v, "prompt_id": prompt_id}
                                          for n, v in data["nodes"].items()}}
            self._to_client(client_id, kind, data if kind is None else
                            {**data, "prompt_id": prompt_id})

        now = lambda: int(time.time() * 1000)  # noqa: E731
        messages: list[list[Any]] = []
        send("execution_start", {"timestamp": now()})
        messages.append(["execution_start", {"prompt_id": prompt_id, "timestamp": now()}])
        order = self._order(workflow)
        signatures = {n: self._signature(workflow, n) for n in workflow}
        self._cache.set_prompt(signatures.values())  # as execute_async: every node of it
        cached = [n for n in order if signatures[n] in self._cache]
        send("execution_cached", {"nodes": cached, "timestamp": now()})
        messages.append(["execution_cached", {"nodes": cached, "prompt_id": prompt_id,
                                              "timestamp": now()}])
        executed, outputs, values = list(cached), {}, {}
        states: dict[str, dict[str, Any]] = {}
        status = "success"
        try:
            for node_id in order:
                if node_id in cached:
                    values[node_id] = self._cached_value(workflow, node_id, values)
                    ui = self._cache[signatures[node_id]]
                    if ui:  # ComfyUI repeats a cached output node's earlier output
                        outputs[node_id] = ui
                        send("executed", {"node": node_id, "display_node": node_id,
                                          "output": ui})
                    continue
                if self._interrupt.is_set():
                    raise Interrupted(node_id)
                with self._cond:
                    self._last_node = node_id
                # As ComfyUI 0.8 sends them: the node's progress_state first, then executing.
                self._progress_state(send, states, node_id, "running", 0, 1)
                send("executing", {"node": node_id, "display_node": node_id})
                ui = self._run_node(node_id, workflow, values, send, states)
                self._progress_state(send, states, node_id, "finished", 1, 1)
                executed.append(node_id)
                self._cache[signatures[node_id]] = ui
                if ui:
                    outputs[node_id] = ui
                    send("executed", {"node": node_id, "display_node": node_id, "output": ui})
            send("execution_success", {"timestamp": now()})
            messages.append(["execution_success", {"prompt_id": prompt_id, "timestamp": now()}])
        except Interrupted as stop:
            status = "error"
            data = {"prompt_id": prompt_id, "node_id": stop.node_id,
                    "node_type": workflow[stop.node_id]["class_type"], "executed": executed,
                    "timestamp": now()}
            send("execution_interrupted", data)
            messages.append(["execution_interrupted", data])
        except NodeError as error:
            status = "error"
            data = {"prompt_id": prompt_id, "node_id": error.node_id,
                    "node_type": workflow[error.node_id]["class_type"], "executed": executed,
                    "exception_message": error.message, "exception_type": error.exception_type,
                    "traceback": ["Traceback (most recent call last):\n", "  (test server)\n"],
                    "current_inputs": {}, "current_outputs": {}, "timestamp": now()}
            send("execution_error", data)
            messages.append(["execution_error", data])
        self.history[prompt_id] = {
            "prompt": [item["number"], prompt_id, workflow, item["extra_data"],
                       self._outputs_of(workflow)],
            "outputs": outputs,
            "status": {"status_str": status, "completed": status == "success",
                       "messages": messages},
            "meta": {n: {"node_id": n, "display_node": n, "parent_node": None,
                         "real_node_id": n} for n in outputs},
        }

    @staticmethod
    def _progress_state(send: Any, states: dict[str, dict[str, Any]], node_id: str,
                        state: str, value: float, maximum: float) -> None:
        """ComfyUI 0.8's ``progress_state``: every node of the prompt seen so far."""
        states[node_id] = {"value": value, "max": maximum, "state": state, "node_id": node_id,
                           "display_node_id": node_id, "parent_node_id": None,
                           "real_node_id": node_id}
        send("progress_state", {"nodes": {n: dict(s) for n, s in states.items()}}, True)

    def _order(self, workflow: dict[str, Any],
               outputs: list[str] | None = None) -> list[str]:
        """Nodes the outputs (default: all) need, each after the nodes it links to."""
        order: list[str] = []

        def visit(node_id: str) -> None:
            if node_id in order or node_id not in workflow:
                return
            for value in workflow[node_id].get("inputs", {}).values():
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                    visit(value[0])
            order.append(node_id)

        for output in self._outputs_of(workflow) if outputs is None else outputs:
            visit(output)
        return order

    def _signature(self, workflow: dict[str, Any], node_id: str) -> str:
        node = workflow[node_id]
        inputs = {k: (self._signature(workflow, v[0]) if isinstance(v, list) and len(v) == 2
                      and isinstance(v[0], str) and v[0] in workflow else v)
                  for k, v in node.get("inputs", {}).items()}
        return json.dumps([node["class_type"], inputs], sort_keys=True)

    @staticmethod
    def _linked(workflow: dict[str, Any], node_id: str, name: str,
                values: dict[str, Any]) -> dict[str, Any]:
        link = workflow[node_id]["inputs"].get(name)
        return values.get(link[0], {}) if isinstance(link, list) else {}

    def _cached_value(self, workflow: dict[str, Any], node_id: str,
                      values: dict[str, Any]) -> dict[str, Any]:
        inputs = workflow[node_id]["inputs"]
        if workflow[node_id]["class_type"] == "EmptyLatentImage":
            return {"width": inputs.get("width", 512), "height": inputs.get("height", 512),
                    "batch": inputs.get("batch_size", 1)}
        if workflow[node_id]["class_type"] == "PrimitiveString":
            return {"string": str(inputs.get("value", ""))}
        for name in ("latent_image", "samples", "images"):
            if name in inputs:
                return self._linked(workflow, node_id, name, values)
        return {}

    def _run_node(self, node_id: str, workflow: dict[str, Any], values: dict[str, Any],
                  send: Any, states: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        node = workflow[node_id]
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple" and inputs["ckpt_name"] in self.broken_checkpoints:
            raise NodeError(node_id, "FileNotFoundError", "[Errno 2] No such file or directory: "
                            f"'/ComfyUI/models/checkpoints/{inputs['ckpt_name']}'")
        if kind == "CheckpointLoaderSimple" and inputs["ckpt_name"] in self.corrupt_checkpoints:
            # execution.py's full_type_name (module, then class) and the exception's text,
            # as real ComfyUI 0.8 sent them for an empty checkpoint file.
            raise NodeError(node_id, "safetensors._safetensors_rust.SafetensorError",
                            "Error while deserializing header: header too small\n")
        if kind == "KSampler":
            latent = self._linked(workflow, node_id, "latent_image", values)
            pixels = latent.get("width", 512) * latent.get("height", 512) * latent.get("batch", 1)
            if pixels > self.max_pixels and self.cpu:
                # With --cpu, torch's CPU allocator raises a plain RuntimeError (not
                # ComfyUI's OOM_EXCEPTION, so no tips); execution.py sends "{ex}\n".
                raise NodeError(node_id, "RuntimeError",
                                "[enforce fail at alloc_cpu.cpp:117] err == 0. "
                                "DefaultCPUAllocator: can't allocate memory: you tried to "
                                f"allocate {pixels * 4 * 64} bytes. Error code 12 (Cannot "
                                "allocate memory)\n")
            if pixels > self.max_pixels:
                raise NodeError(node_id, "torch.OutOfMemoryError",
                                "Allocation on device 0 would exceed allowed memory. "
                                "(out of memory)\nCurrently allocated     : 22.10 GiB")
            steps = int(inputs.get("steps", 20))
            for step in range(1, steps + 1):
                if self._interrupt.wait(self.step_seconds):
                    raise Interrupted(node_id)
                send("progress", {"value": step, "max": steps, "node": node_id})
                self._progress_state(send, states, node_id, "running", step, steps)
                if step % 2 == 0:  # a latent preview: binary frame, event type 1, PNG
                    send(None, struct.pack(">II", 1, 2) + png_bytes(2, 2))
            values[node_id] = latent
            return None
        # No progress hook in other nodes: ComfyUI checks the interrupt after them.
        time.sleep(self.slow_nodes.get(kind, self.node_seconds))
        values[node_id] = self._cached_value(workflow, node_id, values)
        if kind == "PreviewAny":  # a 1-tuple in the node, a list once ComfyUI sends it
            return {"text": [self._preview_text(workflow, node_id, values)]}
        if kind == "Preview3D":  # PreviewUI3D.as_dict: no camera_info, no bg_image given
            return {"result": [inputs.get("model_file", ""), None, None]}
        if kind in OUTPUT_NODES:
            return {"images": self._save(inputs, values[node_id], kind)}
        return None

    def _preview_text(self, workflow: dict[str, Any], node_id: str,
                      values: dict[str, Any]) -> str:
        """PreviewAny.main: a string as it is, a number or bool as ``str``, else JSON."""
        source = workflow[node_id]["inputs"].get("source")
        if isinstance(source, list):  # a link: the double's value of that node
            value = self._linked(workflow, node_id, "source", values)
            source = value["string"] if "string" in value else value
        if source is None:
            return "None"
        if isinstance(source, (str, int, float, bool)):
            return str(source)
        return json.dumps(source, indent=4)

    def _save(self, inputs: dict[str, Any], image: dict[str, Any], kind: str) -> list[dict]:
        file_type = "output" if kind == "SaveImage" else "temp"
        prefix = str(inputs.get("filename_prefix") or "ComfyUI")
        if kind == "PreviewImage":  # as nodes.py's PreviewImage: in temp, a random infix
            prefix = "ComfyUI_temp_" + "".join(random.choice(string.ascii_lowercase)
                                               for _ in range(5))
        subfolder, _, name = prefix.rpartition("/")
        directory = self.dirs[file_type] / subfolder
        directory.mkdir(parents=True, exist_ok=True)
        images = []
        for _ in range(int(image.get("batch", 1))):
            filename = f"{name}_{next(self._files):05d}_.png"
            (directory / filename).write_bytes(png_bytes())
            images.append({"filename": filename, "subfolder": subfolder, "type": file_type})
        return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--root", default="comfyui-test-server")
    parser.add_argument("--checkpoints", default="sd15.safetensors")
    args = parser.parse_args()
    server = ComfyUITestServer(Path(args.root), checkpoints=args.checkpoints.split(","))
    server.start(args.port)
    print(f"ComfyUI test server on {server.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
