"""Waiting on a condition in tests that drive real processes (the contract suite's real halves,
the namespace lab, the VM transport): poll until it holds, bounded, and fail saying what was
awaited. A fixed sleep that stands for "long enough for X to happen" is either too short on a
loaded machine (a flaky failure) or too long everywhere else; a wait on X itself is neither.

The VM tier's own ``tests.vm.machine.wait_for`` is the timing variant: it returns the seconds
the condition took (the scenarios' figures) and treats a failing probe as "not yet".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    what: str, check: Callable[[], T | None], *, timeout: float = 10.0, interval: float = 0.01
) -> T:
    """Call ``check`` every ``interval`` seconds until it returns something truthy, and return
    that; AssertionError after ``timeout`` seconds, naming ``what``. ``check`` runs at least
    once, also with ``timeout=0`` (a state that must hold at once)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
