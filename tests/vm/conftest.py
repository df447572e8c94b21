"""Fixtures of the VM tier (tier 2): the boot image, the three-VM lab and the cluster on it.

- ``vm_image`` (session): built or taken from the cache (``$TANDEM_VM_CACHE``, else pytest's
  cache directory). Skipped with the packages to install when qemu or a build tool is missing;
  under ``CI`` (set by .ci/run) a missing tool fails instead, so a broken CI setup cannot pass
  as "skipped".
- ``vm_lab`` (session): the three-VM lab, booted once and lent to one module after the other
  (a boot of three TCG VMs costs 10-15 s). A module hands the VMs back as a fresh boot would
  leave them as far as the next module can tell: no DRBD device, no tgtd or arping, no VIP
  (their disks keep what was written; modules create DRBD metadata before they use it). When
  the next module borrows the lab, that is checked (``leftovers``); a lab that is not clean,
  or that a failed module returns, is taken down (files kept after a failure, path printed)
  and the next module boots a new one.
- ``vm_cluster`` (module): the borrowed lab, the module's spec and state directory (a
  subdirectory of the lab's, named after the module), agents built but not started. Agents
  are stopped whatever happens.
- Scenarios of one module share the cluster and run in file order; after a failure the rest
  of the module is skipped (the cluster's state is unknown).

The timings table (agent vs hand-scripted floor) is printed at the end of the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.vm.cluster import TIMINGS, VmCluster, leftovers
from tests.vm.image import (
    Image,
    ImageError,
    build_image,
    default_cache_dir,
    missing_build_tools,
)
from tests.vm.machine import VmLab, qemu_unavailable

_FAILED = pytest.StashKey[bool]()


def vm_unavailable() -> str | None:
    reason = qemu_unavailable()
    missing = missing_build_tools()
    if missing:
        reason = (reason + "; " if reason else "") + "missing: " + ", ".join(missing)
    return reason


@pytest.fixture(scope="session")
def vm_image(request: pytest.FixtureRequest) -> Image:
    reason = vm_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"VM tier cannot run in CI: {reason}")
        pytest.skip(f"VM tier: {reason}")
    env = os.environ.get("TANDEM_VM_CACHE")
    pytest_cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    cache = (
        Path(env)
        if env
        else Path(pytest_cache.mkdir("tandem-vm"))
        if pytest_cache is not None
        else default_cache_dir()
    )
    try:
        return build_image(cache, log=True)
    except ImageError as exc:
        pytest.fail(f"cannot build the VM image: {exc}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.failed and "vm_cluster" in getattr(item, "fixturenames", ()):
        item.module.__dict__.setdefault("_vm_failed", []).append(item.name)  # type: ignore[attr-defined]


class SharedLab:
    """The session's VM lab, lent to one module at a time (see the module docstring)."""

    def __init__(self, image: Image) -> None:
        self.image = image
        self.lab: VmLab | None = None

    def borrow(self) -> VmLab:
        if self.lab is not None:
            left = leftovers(self.lab)
            if left:
                print(f"\nthe VM lab is not clean ({'; '.join(left)}): booting a new one")
                self.lab.down()
                self.lab = None
        if self.lab is None:
            lab = VmLab(self.image, memory_mb=int(os.environ.get("TANDEM_VM_MEMORY", "192")))
            lab.up()
            TIMINGS.boot.update(lab.boot_seconds)
            self.lab = lab
        return self.lab

    def give_back(self, *, failed: bool) -> None:
        """After a module; a failed module's lab is not lent again (its files are kept)."""
        if failed and self.lab is not None:
            lab, self.lab = self.lab, None
            print(f"\nVM lab files kept in {lab.directory}\n{lab.log_tails()}")
            lab.down(keep_files=True)

    def close(self) -> None:
        if self.lab is not None:
            lab, self.lab = self.lab, None
            keep = bool(os.environ.get("TANDEM_VM_KEEP"))
            if keep:
                print(f"\nVM lab files kept in {lab.directory}\n{lab.log_tails()}")
            lab.down(keep_files=keep)


@pytest.fixture(scope="session")
def vm_lab(vm_image: Image) -> Iterator[SharedLab]:
    shared = SharedLab(vm_image)
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture(scope="module")
def vm_cluster(vm_lab: SharedLab, request: pytest.FixtureRequest) -> Iterator[VmCluster]:
    lab = vm_lab.borrow()
    assert lab.directory is not None
    cluster = VmCluster(lab, lab.directory / request.module.__name__.rpartition(".")[2])
    stopped = False
    try:
        yield cluster
    finally:
        try:
            cluster.stop_agents()
            stopped = True
            cluster.stop_tgtds()
        finally:
            # an agent that did not stop would go on acting on the next module's VMs
            failed = not stopped or bool(request.module.__dict__.get("_vm_failed"))
            vm_lab.give_back(failed=failed)


@pytest.fixture(autouse=True)
def _stop_after_failure(request: pytest.FixtureRequest) -> None:
    if "vm_cluster" not in request.fixturenames:
        return
    failed = request.module.__dict__.get("_vm_failed")
    if failed:
        pytest.skip(f"an earlier scenario failed ({', '.join(failed)}): cluster state unknown")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS.rows or TIMINGS.boot:
        terminalreporter.section("VM tier timings (agent vs hand-scripted floor)")
        terminalreporter.write_line(TIMINGS.render())
