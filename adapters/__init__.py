"""The outside world: one interface per concern (``adapters.base``), a simulated implementation
of each (``adapters.sim``) and real ones that run commands through ``adapters.runner``."""
