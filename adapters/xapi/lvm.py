"""Is an SR usable on this host? Its LVM volume group ``VG_XenStorage-<sr-uuid>`` exists.

The check runs ``vgs --noheadings -o vg_name VG_XenStorage-<uuid>`` through the command seam
(``adapters.runner``); ``parse_vgs`` reads its answer purely: the name printed and exit 0 is
"usable", LVM's "Volume group ... not found" is "not usable" (the SR_BACKEND_FAILURE_40/46
cases after a failover), anything else is unknown (None) with a reason.
"""

from __future__ import annotations

from adapters.runner import Runner
from reconciler.core.errors import AdapterError

VG_PREFIX = "VG_XenStorage-"


def vg_name(sr_uuid: str) -> str:
    return f"{VG_PREFIX}{sr_uuid}"


def vgs_argv(sr_uuid: str) -> list[str]:
    return ["vgs", "--noheadings", "-o", "vg_name", vg_name(sr_uuid)]


def parse_vgs(name: str, rc: int, stdout: str, stderr: str) -> tuple[bool | None, str | None]:
    """(usable, error) from one ``vgs`` run for the volume group ``name``."""
    listed = {line.strip() for line in stdout.splitlines() if line.strip()}
    if rc == 0 and name in listed:
        return True, None
    if "not found" in stderr and name in stderr:
        return False, None
    if rc == 0:
        return None, f"vgs listed {sorted(listed)} for {name}"
    first = (stderr.strip().splitlines() or [f"exit {rc}"])[0].strip()
    return None, f"vgs {name} failed: {first}"


def vg_exists(runner: Runner, sr_uuid: str) -> tuple[bool | None, str | None]:
    argv = vgs_argv(sr_uuid)
    try:
        result = runner.run(argv, check=False)
    except AdapterError as exc:
        return None, f"cannot check volume group {vg_name(sr_uuid)}: {exc}"
    return parse_vgs(argv[-1], result.rc, result.stdout, result.stderr)
