"""The model catalog: where each model can be downloaded from, how big it is, its checksum.

One Redis hash (``keys.MODEL_CATALOG_KEY``, its own hash tag so it lives in
one slot on a cluster): model name -> JSON ``{url, size, sha256}``. The API
edits it (``/api/models``); machines read it to download a model a job needs
and they lack (``machine.models``). Entries are checked here, so a bad one
is refused with the field named and nothing is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlparse

from capability_router.errors import EmpError
from capability_router.keys import MODEL_CATALOG_KEY
from capability_router.redaction import masked_url

#: Model names: they become file names in the machines' caches, so no '/' and no
#: leading '.'.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: Largest model size accepted, bytes (1 TiB).
MAX_MODEL_BYTES = 1 << 40


class InvalidModel(EmpError, ValueError):
    """A catalog entry is malformed; the message names the field. Nothing was written."""


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable model.

    :param name: the model's name, as jobs require it (``requirements.models``).
    :param url: http(s) URL of the file.
    :param size: file size, bytes.
    :param sha256: hex digest of the file (lowercase).
    """

    name: str
    url: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps({"url": self.url, "size": self.size, "sha256": self.sha256},
                          sort_keys=True)


def check_name(name: Any) -> str:
    """The model name, or InvalidModel saying what is wrong with it."""
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name) or ".." in name:
        raise InvalidModel(f"name must be 1-128 letters, digits or '_.:-' (not starting with "
                           f"'.', no '..'), got {name!r}")
    return name


def parse_entry(name: str, body: Any) -> ModelEntry:
    """A checked entry from ``{url, size, sha256}``; InvalidModel naming the bad field."""
    check_name(name)
    if not isinstance(body, dict):
        raise InvalidModel("a model entry must be a JSON object {url, size, sha256}")
    unknown = sorted(set(body) - {"url", "size", "sha256", "name"})
    if unknown:
        raise InvalidModel(f"unknown field(s): {', '.join(unknown)}")
    if body.get("name") not in (None, name):
        raise InvalidModel(f"name: {body['name']!r} differs from the path's {name!r}")
    url = body.get("url")
    try:
        parsed = urlparse(url) if isinstance(url, str) else None
        if parsed is not None:
            parsed.port  # noqa: B018 - raises ValueError for a port past 65535
    except ValueError:  # an unmatched '[' ("Invalid IPv6 URL"), a bad port
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidModel(f"url must be an http(s) URL, got {url!r}")
    size = body.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_MODEL_BYTES:
        raise InvalidModel(f"size must be an integer number of bytes 1-{MAX_MODEL_BYTES}, "
                           f"got {size!r}")
    sha256 = body.get("sha256")
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256.lower()):
        raise InvalidModel(f"sha256 must be 64 hex digits, got {sha256!r}")
    return ModelEntry(name, url, size, sha256.lower())


def redacted_url(url: str) -> str:
    """``url`` with its password and query masked, for messages and non-admin readers
    (a private mirror's URL may carry credentials or a signed query)."""
    return masked_url(url, query=True)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(name: str, raw: str | bytes) -> ModelEntry | None:
    try:
        return parse_entry(name, json.loads(_text(raw)))
    except (ValueError, InvalidModel):
        return None  # written by hand and broken: treated as absent


def put_model(client: Any, entry: ModelEntry) -> bool:
    """Add or replace an entry; True when it is new."""
    return bool(client.hset(MODEL_CATALOG_KEY, entry.name, entry.to_json()))


def get_model(client: Any, name: str) -> ModelEntry | None:
    """The entry of ``name``, or None when the catalog does not know it."""
    raw = client.hget(MODEL_CATALOG_KEY, name)
    return None if raw is None else _entry(name, raw)


def get_models(client: Any, names: list[str]) -> dict[str, ModelEntry]:
    """The entries the catalog has among ``names`` (one round trip)."""
    if not names:
        return {}
    found = client.hmget(MODEL_CATALOG_KEY, names)
    entries = {name: _entry(name, raw) for name, raw in zip(names, found, strict=True)
               if raw is not None}
    return {name: entry for name, entry in entries.items() if entry is not None}


def list_models(client: Any) -> list[ModelEntry]:
    """Every valid entry, by name."""
    entries = (_entry(_text(name), raw)
               for name, raw in client.hgetall(MODEL_CATALOG_KEY).items())
    return sorted((e for e in entries if e is not None), key=lambda e: e.name)


def delete_model(client: Any, name: str) -> bool:
    """Remove an entry; True when there was one."""
    return bool(client.hdel(MODEL_CATALOG_KEY, name))
