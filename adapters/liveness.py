"""Peer liveness and quorum heuristics by ICMP echo (iputils ``ping``).

Invariants:

- ``observe`` never raises and returns within about ``timeout`` plus process start-up: every
  address gets one ``ping -c 1 -W TIMEOUT -n ADDR``, all of them concurrently.
- ``peer_reachable`` is True when any peer address answers, False when every peer address was
  asked and none answered (no reply, or no route to it), and None when none answered and at
  least one ping could not be run at all (missing binary, timeout of the command itself, an
  unexpected exit code), or when no peer address is configured: "not probed" must never look
  like "peer dead" to the promotion policy.
- ``heuristics_ok`` counts the heuristic addresses that answered; one that could not be probed
  does not count (it cannot vouch for this node's connectivity). ``heuristics_total`` is the
  number configured.
- Addresses are validated as IPv4 when the adapter is built, so nothing else reaches argv.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from adapters.runner import Runner
from reconciler.core.observed import Liveness

_UNREACHABLE_RE = re.compile(r"unreachable|no route to host", re.IGNORECASE)


def liveness_from(
    answers: Mapping[str, bool | None], peers: Sequence[str], heuristics: Sequence[str]
) -> Liveness:
    """The module docstring's rule, from each address's answer (True: it answered; False: no
    answer; None: not asked). Pure; every liveness adapter uses it."""
    peer = [answers.get(a) for a in peers]
    if any(peer):
        peer_reachable: bool | None = True
    elif peer and all(a is False for a in peer):
        peer_reachable = False
    else:
        peer_reachable = None
    return Liveness(
        peer_reachable=peer_reachable,
        heuristics_ok=sum(1 for a in heuristics if answers.get(a)),
        heuristics_total=len(heuristics),
    )


class PingLiveness:
    """``LivenessAdapter`` using ``ping`` through the runner (see the module docstring)."""

    def __init__(
        self,
        runner: Runner,
        *,
        peer_addresses: Sequence[str],
        heuristics: Sequence[str] = (),
        timeout: float = 0.5,
    ) -> None:
        if not 0 < timeout <= 60:
            raise ValueError("timeout must be in (0, 60] seconds")
        self.runner = runner
        self.peer_addresses = [str(ipaddress.IPv4Address(a)) for a in peer_addresses]
        self.heuristics = [str(ipaddress.IPv4Address(a)) for a in heuristics]
        self.timeout = timeout

    def observe(self) -> Liveness:
        addresses = list(dict.fromkeys([*self.peer_addresses, *self.heuristics]))
        answers: dict[str, bool | None] = {}
        if addresses:
            with ThreadPoolExecutor(max_workers=len(addresses), thread_name_prefix="ping") as pool:
                answers = dict(zip(addresses, pool.map(self.ping, addresses), strict=True))
        return liveness_from(answers, self.peer_addresses, self.heuristics)

    def ping(self, address: str) -> bool | None:
        """True: it answered; False: no answer (or no route); None: could not ask."""
        argv = ["ping", "-c", "1", "-W", f"{self.timeout:g}", "-n", address]
        try:
            res = self.runner.run(argv, check=False, timeout=self.timeout + 2.0)
        except Exception:  # AdapterError or worse: liveness never raises
            return None
        if res.rc == 0:
            return True
        if res.rc == 1 or (res.rc == 2 and _UNREACHABLE_RE.search(res.stderr)):
            return False
        return None
