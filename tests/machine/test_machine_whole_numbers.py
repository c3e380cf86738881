"""The machine's whole-number and number settings are read as ``env_at_least`` reads them.

Before, ``machine.settings._whole`` read a count or port through ``float``: ``1e3`` was
the whole number 1000 and ``10.0`` was 10, where ``env_at_least(..., int)`` (every other
service's reader) refuses both. One setting meant one thing to ``emp machine`` and
another, or nothing, to the services reading the same environment.
"""

from __future__ import annotations

import math

import pytest

from capability_router.env import SettingError, env_at_least
from machine.errors import MachineError
from machine.settings import MachineSettings

#: Texts on both sides of the line: exponents, fractions, spaces, signs, other bases.
TEXTS = ["7", " 7 ", "+7", "-0", "1_000", "1e3", "10.0", "9090.5", "0x10", "7 GB", "inf",
         "nan", "-inf", "1e400"]


def _reader(convert: type, name: str) -> object:
    """What ``env_at_least`` makes of the variable: its value, or "refused"."""
    try:
        return env_at_least(name, 0, -math.inf, convert)
    except SettingError:
        return "refused"


def _machine(name: str, field: str) -> object:
    try:
        return getattr(MachineSettings.from_env(), field)
    except MachineError as exc:
        assert name in str(exc), exc
        return "refused"


@pytest.mark.parametrize("text", TEXTS)
def test_a_whole_number_setting_means_what_env_at_least_int_makes_of_it(
        monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """Tried: ``EMP_START_RETRIES`` (a machine count, read by ``_whole``) at each text,
    against ``env_at_least("EMP_START_RETRIES", 0, -inf, int)``. Before: ``1e3`` was 1000
    and ``10.0`` was 10 to the machine, refused by env_at_least. Now both accept and
    refuse the same texts (the machine then also applies its floor: negatives refused)."""
    monkeypatch.setenv("MACHINE_ID", "box")
    monkeypatch.setenv("EMP_START_RETRIES", text)
    expected = _reader(int, "EMP_START_RETRIES")
    if expected != "refused" and expected < 0:
        expected = "refused"  # the machine's floor (FLOORS): a count of retries
    assert _machine("EMP_START_RETRIES", "start_retries") == expected


@pytest.mark.parametrize("text", TEXTS)
def test_a_number_setting_means_what_env_at_least_float_makes_of_it(
        monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """The same for ``EMP_REVIVE_SECONDS`` (``_float``; 0 and up by the machine's floor):
    the two agreed already; kept so, now that ``_float`` goes through env_at_least."""
    monkeypatch.setenv("MACHINE_ID", "box")
    monkeypatch.setenv("EMP_REVIVE_SECONDS", text)
    expected = _reader(float, "EMP_REVIVE_SECONDS")
    if expected != "refused" and expected < 0:
        expected = "refused"
    assert _machine("EMP_REVIVE_SECONDS", "revive_seconds") == expected


def test_the_words_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's messages keep their words: "a whole number", "a finite number"."""
    monkeypatch.setenv("MACHINE_ID", "box")
    monkeypatch.setenv("EMP_LOG_BACKUPS", "1e3")
    with pytest.raises(MachineError, match=r"^EMP_LOG_BACKUPS must be a whole number, "
                                           r"got '1e3'$"):
        MachineSettings.from_env()
    monkeypatch.delenv("EMP_LOG_BACKUPS")
    monkeypatch.setenv("EMP_MACHINE_POLL_SECONDS", "inf")
    with pytest.raises(MachineError, match=r"^EMP_MACHINE_POLL_SECONDS must be a finite "
                                           r"number, got 'inf'$"):
        MachineSettings.from_env()
    monkeypatch.setenv("EMP_MACHINE_POLL_SECONDS", "soon")
    with pytest.raises(MachineError, match=r"^EMP_MACHINE_POLL_SECONDS must be a number, "
                                           r"got 'soon'$"):
        MachineSettings.from_env()


@pytest.mark.timeout(150)
def test_emp_machine_refuses_an_exponent_for_a_count(start_machine) -> None:  # noqa: ANN001
    """Tried: ``emp machine`` with ``EMP_START_RETRIES=1e1``. Before, the machine started
    with 10 retries. Now it exits 1, its last line naming the variable, before anything
    starts."""
    machine = start_machine("box-whole", EMP_MOCK_GPUS="1", EMP_START_RETRIES="1e1")
    code, output = machine.refused("EMP_START_RETRIES=1e1")
    assert code == 1, output
    assert output.strip().splitlines()[-1] == (
        "Error: EMP_START_RETRIES must be a whole number, got '1e1'"), output
    assert not (machine.run_dir / "supervisord.conf").exists()
