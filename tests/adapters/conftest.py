"""Fixtures of the adapter tests."""

from tests.etcd_cluster import etcd  # noqa: F401  (the session's real 3-member etcd)
