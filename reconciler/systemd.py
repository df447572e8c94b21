"""systemd integration of ``reconcile --watch``: sd_notify and the unit file.

The notify protocol (sd_notify(3)) is a few lines: one datagram of ``KEY=VALUE`` lines sent to
the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
namespace). Sent after every completed tick: ``READY=1`` once (the first tick, so ``systemctl
start`` returns when the node has been reconciled once), ``STATUS=`` a one-line state, and
``WATCHDOG=1`` when systemd asked for pings (``$WATCHDOG_USEC``, for this pid when
``$WATCHDOG_PID`` is set). A tick that hangs sends nothing more, so systemd kills the agent
after ``WatchdogSec`` and ``Restart=on-failure`` starts it again (the reference design's
kill-stuck-runs).

Invariants: notifying never raises (no socket, a full socket buffer or a closed listener is
not the agent's problem); without ``$NOTIFY_SOCKET`` nothing is sent.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from importlib import resources as importlib_resources

from reconciler.agent import TickReport
from reconciler.core.spec import StorageCluster

UNIT_NAME = "tandem.service"


class Notifier:
    """Sends sd_notify datagrams to one socket (or nowhere when ``address`` is None)."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC") and (not pid or pid == str(os.getpid())):
            try:
                usec = int(env["WATCHDOG_USEC"])
            except ValueError:
                usec = None
        return cls(address, watchdog_usec=usec if usec and usec > 0 else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog(self) -> bool:
        return self.address is not None and self.watchdog_usec is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram; True when it was handed to the socket."""
        if self.address is None or not lines:
            return False
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, target)
        except OSError:
            return False
        return True


def status_line(report: TickReport) -> str:
    """One line for ``systemctl status`` (and ``STATUS=``): role, progress, refusals."""
    p = report.plan
    parts = [f"{p.node}: {p.desired_role}"]
    if p.converged:
        parts.append("converged")
    elif report.result is not None and report.result.failed is not None:
        parts.append(f"failed: {report.result.failed.action.describe()}")
    elif p.actions:
        parts.append(f"{len(p.actions)} action(s) applied")
    if p.blocked:
        first = p.blocked[0]
        parts.append(f"blocked {first.what}: {first.reason}")
    if p.warnings:
        parts.append(f"{len(p.warnings)} warning(s)")
    return "; ".join(parts).replace("\n", " ")[:400]


class TickNotifier:
    """The watch loop's systemd observer: READY after the first tick, then STATUS and WATCHDOG
    after each one (a tick observer, see ``reconciler.loop.TickObserver``)."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.ready = False

    def __call__(self, report: TickReport) -> None:
        if not self.notifier.enabled:
            return
        lines = [f"STATUS={status_line(report)}"]
        if not self.ready:
            lines.insert(0, "READY=1")
            self.ready = True
        if self.notifier.watchdog:
            lines.append("WATCHDOG=1")
        self.notifier.send(*lines)

    def stopping(self) -> None:
        self.notifier.send("STOPPING=1", "STATUS=stopping after the current tick")


# --- the unit file ---------------------------------------------------------------------------


def watchdog_seconds(spec: StorageCluster) -> int:
    """``WatchdogSec``: the longest gap between two pings of a healthy agent, with margin.

    WatchdogSec = tickInterval + (retryAttempts + 3) x commandTimeout
                  + retryAttempts x retryBackoffMax, rounded up, at least 10 s.
    Between two pings the loop waits at most tickInterval; a tick observes (the concerns in
    parallel, early and late reads: up to 2 command timeouts), applies until its first failed
    step (that step: retryAttempts timeouts and the backoffs between them) and one more
    timeout of margin for slow successful steps. Defaults: 10 + 6 x 10 + 3 x 2 = 76 s.
    """
    t = spec.spec.timings
    seconds = (
        t.tick_interval
        + (t.retry_attempts + 3) * t.command_timeout
        + t.retry_attempts * t.retry_backoff_max
    )
    return max(10, math.ceil(seconds))


def unit_text(
    spec: StorageCluster,
    *,
    exec_path: str,
    spec_path: str | None,
    state_dir: str,
    node: str | None = None,
) -> str:
    """The unit file, from the template shipped in the wheel (reconciler/data)."""
    template = (
        importlib_resources.files("reconciler").joinpath("data", UNIT_NAME).read_text("utf-8")
    )
    env = []
    if spec_path is not None:
        env.append(f"Environment=TANDEM_SPEC={_quote(spec_path)}")
    env.append(f"Environment=TANDEM_STATE_DIR={_quote(state_dir)}")
    if node is not None:
        env.append(f"Environment=TANDEM_NODE={_quote(node)}")
    t = spec.spec.timings
    return template.format(
        exec_start=_quote(exec_path),
        environment="\n".join(env),
        watchdog_sec=watchdog_seconds(spec),
        tick_interval=f"{t.tick_interval:g}",
        command_timeout=f"{t.command_timeout:g}",
        retry_attempts=t.retry_attempts,
        retry_backoff_max=f"{t.retry_backoff_max:g}",
    )


def _quote(value: str) -> str:
    """A value for a unit file line: quoted when it holds spaces; % and \\ escaped."""
    text = value.replace("\\", "\\\\").replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) or '"' in text else text
