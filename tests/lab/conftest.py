"""Fixtures for the namespace lab (tier 1): real iproute2, tgtd, libiscsi and qemu-io.

- ``lab``: a function-scoped ``Lab`` that is up; torn down whatever happens (files kept when
  the test failed, for the logs).
- ``lab_factory``: builds ``Lab`` objects that are *not* up yet (for tests of up/down
  themselves); every lab it made is torn down at the end of the test.

Tests are skipped, with the Debian package to install, when not root or a tool is missing.
Prefixes are unique per process (pytest-xdist worker), per test and per concurrent pytest run,
and short: ``t<pid base36><worker><n>-``.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pluggy
import pytest

from tests.lab.netns import Lab

# tool -> Debian package that provides it
REQUIRED_TOOLS = {
    "ip": "iproute2",
    "sysctl": "procps",
    "ping": "iputils-ping",
    "arping": "iputils-arping",
    "tgtd": "tgt",
    "tgtadm": "tgt",
    "iscsi-inq": "libiscsi-bin",
    "qemu-io": "qemu-utils (plus qemu-block-extra for iscsi://)",
}

_counter = itertools.count()


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the namespace lab needs root (network namespaces, tgtd)"
    missing = [
        f"{tool} (apt-get install {pkg})"
        for tool, pkg in REQUIRED_TOOLS.items()
        if shutil.which(tool) is None
    ]
    if missing:
        return "missing lab tools: " + ", ".join(missing)
    return None


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def unique_prefix() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    worker_tag = "w" + worker[2:] if worker.startswith("gw") else "m"
    return f"t{_base36(os.getpid())}{worker_tag}{next(_counter)}-"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Lab]]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    made: list[Lab] = []

    def make() -> Lab:
        lab = Lab(unique_prefix(), tmp_dir=tmp_path)
        made.append(lab)
        return lab

    try:
        yield make
    finally:
        failed = request.node.stash.get(_FAILED, False)
        errors = []
        for lab in reversed(made):
            try:
                lab.down(keep_files=failed)
            except Exception as exc:  # tear every lab down, then report
                errors.append(f"{lab.prefix}: {exc}")
        if errors:
            pytest.fail("lab teardown failed: " + "; ".join(errors))


@pytest.fixture
def lab(lab_factory: Callable[[], Lab]) -> Lab:
    return lab_factory().up()
