"""The commands each real adapter runs, and the Debian package that installs each one.

A missing tool is a configuration error (the node is not set up for the spec), not a safety
refusal: ``missing_tools`` finds them before the first tick (``adapters.factory``), and the
runner's "command not found" names the package too, for a tool removed while the agent runs.

Invariant: only commands run locally (transport ``local``, or ``netns``, whose ``ip netns
exec`` runs the local binaries) are looked up on this host's PATH; a transport that runs
commands elsewhere (a VM's console agent) is not checked here.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass

# command -> the Debian package that provides it
PACKAGES: dict[str, str] = {
    "drbdsetup": "drbd-utils",
    "drbdadm": "drbd-utils",
    "ip": "iproute2",
    "arping": "iputils-arping",
    "ping": "iputils-ping",
    "tgtd": "tgt",
    "tgtadm": "tgt",
    "modprobe": "kmod",
    "timeout": "coreutils",
}


@dataclass(frozen=True, slots=True)
class MissingTool:
    command: str
    package: str
    needed_by: str  # the concern, as the spec's ``adapters`` names it

    def __str__(self) -> str:
        return f"{self.command} (for {self.needed_by}; install the Debian package {self.package})"


def package_of(command: str) -> str | None:
    return PACKAGES.get(command)


def missing_tools(needed: Iterable[tuple[str, str]]) -> list[MissingTool]:
    """``needed``: (command, concern) pairs; the ones not found on PATH, in order, once each."""
    seen: set[str] = set()
    out: list[MissingTool] = []
    for command, concern in needed:
        if command in seen:
            continue
        seen.add(command)
        if shutil.which(command) is None:
            out.append(MissingTool(command, PACKAGES.get(command, "?"), concern))
    return out


def describe(missing: list[MissingTool], node: str) -> str:
    tools = "; ".join(str(m) for m in missing)
    packages = " ".join(dict.fromkeys(m.package for m in missing))
    return (
        f"node {node}: missing command{'s' if len(missing) > 1 else ''} {tools}. "
        f"This host is not set up for the spec's real adapters: apt-get install {packages} "
        "(or set the concern to 'sim' in the spec's adapters section to simulate it)"
    )
