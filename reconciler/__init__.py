"""tandem: a declarative reconciliation engine for two-node DRBD + iSCSI + VIP storage clusters.

``reconciler.core`` is the pure functional core (spec, observation, safety, planner): no I/O,
no clock, no randomness. The rest of ``reconciler`` (executor, loop, CLI) is the imperative
shell that wires the core to ``adapters``.
"""

__version__ = "0.1.0"
