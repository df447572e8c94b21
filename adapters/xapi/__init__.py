"""XenServer / XCP-ng through the official ``XenAPI`` SDK: the session (timeouts, re-login,
``HOST_IS_SLAVE``), the hypervisor adapter (PBD plug / re-plug), the role source (pool
master) and LVM's view of an SR on the host."""

from adapters.xapi.hypervisor import XapiHypervisor, select_pbds
from adapters.xapi.rolesource import XapiRoleSource
from adapters.xapi.session import Credentials, XapiClient, XapiError, read_credentials

__all__ = [
    "Credentials",
    "XapiClient",
    "XapiError",
    "XapiHypervisor",
    "XapiRoleSource",
    "read_credentials",
    "select_pbds",
]
