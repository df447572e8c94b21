"""Simulated adapters over one shared two-node world (``adapters.sim.world``)."""
