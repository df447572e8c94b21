"""Benchmark: how long loading a spec takes (not collected by pytest: no test_ prefix).

    python tests/bench/spec_load.py

Prints the time of ``load_spec_bytes`` (what ``reconcile validate -f`` runs once the file is
read) for: the demo; the largest sensible spec (255 resources, each exported as a LUN); the demo
padded with comments to exactly MAX_SPEC_BYTES (the largest legal file); the same size of dense
YAML (the worst legal case: ruamel parses about 100 KB of it a second); and files refused for
their size (10 MB, 100 MB of zeros) - which must not depend on the size, since the limit is
checked before parsing. Figures, not asserts: the machine's speed moves them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reconciler.core.specload import MAX_SPEC_BYTES, SpecError, load_spec_bytes

ROOT = Path(__file__).resolve().parents[2]
DEMO = (ROOT / "specs" / "demo.yaml").read_text(encoding="utf-8")


def largest_sensible_spec(count: int = 255) -> str:
    resources = "".join(
        f"    - name: r{i}\n      minor: {i + 1}\n      disk: /dev/vg0/r{i}\n" for i in range(count)
    )
    luns = "".join(
        f"      - lun: {i + 1}\n        resource: r{i}\n        scsiId: tandem-r{i}\n"
        f"        scsiSn: TANDEM{i:04d}\n"
        for i in range(count)
    )
    head, rest = DEMO.split("  resources:\n", 1)
    _, rest = rest.split("  vips:\n", 1)
    text = head + "  resources:\n" + resources + "  vips:\n" + rest
    before, after = text.split("    luns:\n", 1)
    _, after = after.split("    initiators:", 1)
    return before + "    luns:\n" + luns + "    initiators:" + after


def padded(data: bytes, filler: bytes) -> bytes:
    data += filler * ((MAX_SPEC_BYTES - len(data)) // len(filler))
    return data + b"#" * (MAX_SPEC_BYTES - len(data))


def timed(label: str, make: Callable[[], bytes], repeat: int = 3) -> None:
    data = make()
    best = float("inf")
    outcome = ""
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            load_spec_bytes(data, filename="bench.yaml")
            outcome = "valid"
        except SpecError as exc:
            outcome = f"refused: {exc.problems[0].message[:60]}"
        best = min(best, time.perf_counter() - start)
    print(f"{label:<44} {len(data):>11,} bytes {best * 1000:>9.1f} ms  {outcome}")


def main() -> None:
    dense_line = b"    - name: r1\n      minor: 1\n      disk: /dev/vdb\n"
    dense = DEMO.replace("  vips:\n", "__VIPS__").encode()
    timed("demo", lambda: DEMO.encode())
    timed("255 resources and LUNs", lambda: largest_sensible_spec().encode())
    timed("demo + comments, exactly the limit", lambda: padded(DEMO.encode(), b"#" * 79 + b"\n"))
    timed(
        "dense YAML, exactly the limit",
        lambda: padded(dense.split(b"__VIPS__")[0], dense_line)[: MAX_SPEC_BYTES - 1] + b"\n",
        repeat=1,
    )
    timed("10 MB of comments (refused)", lambda: b"#" * (10 << 20))
    timed("100 MB of zeros (refused)", lambda: bytes(100 << 20), repeat=1)


if __name__ == "__main__":
    main()
