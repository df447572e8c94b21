"""The pure core: every function here is deterministic and free of I/O (import-linter checks)."""
