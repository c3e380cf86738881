"""Loading the function libraries during a rolling upgrade: machines of two releases
share one Redis, and none may put an older library back over a newer one."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from capability_router import functions
from capability_router.libraries import source_version
from webapp.api import limits
from webapp.webhooks import library as webhooks

#: (what loads it, its source, its keyless version function) per library.
LIBRARIES = {
    "queue": (functions.ensure_library, functions.library_source, "emp_version"),
    "webhooks": (webhooks.ensure_library, webhooks.library_source, "emp_wh_version"),
    "limits": (limits.ensure_library, limits.library_source, "emp_limits_version"),
}


def released_as(source: str, version: str) -> str:
    """``source`` as another release would ship it: the same text, another VERSION."""
    return source.replace(f"local VERSION = '{source_version(source)}'",
                          f"local VERSION = '{version}'", 1)


def version_on(client, function: str) -> str:  # noqa: ANN001
    return client.fcall_ro(function, 0)


@pytest.mark.fast
@pytest.mark.parametrize("name", LIBRARIES)
def test_a_newer_release_on_the_server_is_left_as_it_is(
        client, name: str, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    """Tried: the server holds the next release's library (this text stamped 999) when
    a process of this release starts, as an old machine (re)starting during a rolling
    upgrade does. Before, it loaded its own over it (any other version was replaced):
    the new machines then loaded theirs again, and the two flipped for as long as both
    ran. Now the newer one stays, and the process says once that it is older."""
    ensure: Callable = LIBRARIES[name][0]
    source, function = LIBRARIES[name][1](), LIBRARIES[name][2]
    client.function_load(released_as(source, "999-next"), replace=True)
    with caplog.at_level(logging.WARNING):
        assert ensure(client) is False
        assert ensure(client) is False
    assert version_on(client, function) == "999-next"
    said = [r.getMessage() for r in caplog.records if "newer function library" in
            r.getMessage()]
    assert len(said) == 1 and "999-next" in said[0], said


@pytest.mark.fast
@pytest.mark.parametrize("name", LIBRARIES)
def test_an_older_or_edited_library_is_replaced(client, name: str) -> None:  # noqa: ANN001
    """Tried: the server holds release 1 of the library, then this release's number with
    another digest (the file edited without a new number). Both are replaced by this
    process's library."""
    ensure: Callable = LIBRARIES[name][0]
    source, function = LIBRARIES[name][1](), LIBRARIES[name][2]
    number = source_version(source).partition("-")[0]
    for old in ("1-old", f"{number}-000000000000"):
        client.function_load(released_as(source, old), replace=True)
        assert ensure(client) is True
        assert version_on(client, function) == source_version(source)
        assert ensure(client) is False
