"""The fence against agent pauses: a Linux watchdog device the agent pets at every observation.

A node whose agent is paused past its witness lease (a long GC pause, SIGSTOP, a hung kernel
or command) still holds DRBD Primary while the other node takes over on the expired lease;
nothing in software on the paused node can prevent that. A watchdog can: the kernel (or the
hardware) resets the node when nobody wrote to ``/dev/watchdog`` for its timeout
(Documentation/watchdog/watchdog-api.rst). ``witness.watchdog.timeout`` is bounded by the spec
so that the reset comes before the other node may promote (docs/operations.md, "The witness").

``PettingWitness`` wraps the real witness adapter: every ``observe`` first pets the device
(opened on first use: building adapters starts nothing), so a tick that does not come (a paused
or hung agent) is a pet that does not come. A device that cannot be opened or written is an
observation that refuses: the witness reads as unreachable, with the reason (no promotion while
disconnected without the fence, and a disconnected primary steps down). ``close`` writes the
magic character 'V' before closing, which disarms the watchdog on a clean stop of the agent
(drivers built with nowayout ignore it); a crashed agent leaves it armed, and the node is reset
unless a new agent pets it in time (systemd's Restart= must be quicker than the timeout).
"""

from __future__ import annotations

import fcntl
import math
import os
import struct
from dataclasses import dataclass, field, replace

from adapters.base import WitnessAdapter
from reconciler.core.observed import WitnessObs

WDIOC_SETTIMEOUT = 0xC0045706  # _IOWR('W', 6, int), linux/watchdog.h


@dataclass
class DeviceWatchdog:
    """``/dev/watchdog`` (or a file standing in for it in tests)."""

    device: str
    timeout: float
    pets: int = 0
    _fd: int | None = field(default=None, repr=False)

    def pet(self) -> None:
        """Write to the device (any write pets); opens it and sets its timeout first."""
        if self._fd is None:
            self._fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
            try:
                # Whole seconds (the API's unit), rounded down so the reset never comes later.
                seconds = struct.pack("i", max(1, math.floor(self.timeout)))
                fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, seconds)
            except OSError:
                pass  # a file, or a driver with a fixed timeout: its own timeout stays
        os.write(self._fd, b"\0")
        self.pets += 1

    def close(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.write(fd, b"V")  # magic close: a clean stop disarms the watchdog
        except OSError:
            pass
        finally:
            os.close(fd)


@dataclass
class PettingWitness:
    """The witness adapter with the watchdog petted before every observation."""

    inner: WitnessAdapter
    watchdog: DeviceWatchdog

    def observe(self) -> WitnessObs:
        try:
            self.watchdog.pet()
        except OSError as exc:
            seen = self.inner.observe()
            why = f"watchdog {self.watchdog.device} unusable ({exc.strerror or exc})"
            return replace(seen, reachable=False, error=f"{why}; no fence against pauses")
        return self.inner.observe()

    def claim(self) -> None:
        self.inner.claim()

    def release(self) -> None:
        self.inner.release()

    def close(self) -> None:
        self.watchdog.close()
        closer = getattr(self.inner, "close", None)
        if callable(closer):
            closer()
