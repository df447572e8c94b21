"""The spec's building blocks: constrained string and address types, their validators, the
base model (frozen, camelCase, unknown keys forbidden) and the help texts of the patterns.
Pure; ``reconciler.core.spec`` builds the models from these."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

SafeName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"),
    Field(description="Letters, digits, '.', '_' and '-' (max 63), starting with a letter/digit."),
]
DevicePath = Annotated[
    str,
    StringConstraints(pattern=r"^/dev/[A-Za-z0-9_][A-Za-z0-9/_.+-]{0,126}$"),
    Field(description="A block device path under /dev (no spaces, no '..')."),
]
FilePath = Annotated[
    str,
    StringConstraints(pattern=r"^/[A-Za-z0-9_][A-Za-z0-9/_.+-]{0,254}$"),
    Field(description="An absolute file path without spaces or shell characters."),
]
InterfaceName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$"),
    Field(description="A Linux interface name (max 15 characters)."),
]
Iqn = Annotated[
    str,
    StringConstraints(pattern=r"^iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9][a-z0-9.-]*(:[A-Za-z0-9_.:-]+)?$"),
    Field(description="An iSCSI qualified name, e.g. iqn.2024-01.com.example:storage.iscsi1"),
]
ScsiWord = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,32}$"),
    Field(description="SCSI identifier text (letters, digits, '.', '_', '-'; max 32)."),
]
MailAddress = Annotated[
    str,
    StringConstraints(
        pattern=r"^[^\s@<>(),;:\"\[\]\\]{1,64}@[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
    ),
    Field(description="A plain mail address, e.g. ops@example.com (no display name)."),
]
HeaderText = Annotated[
    str,
    StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{0,200}$"),
    Field(description="One line of text (max 200 characters; no line breaks or tabs)."),
]
HostName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9.-]+$"),
    Field(description="A host name or IPv4 address (letters, digits, '.', '-')."),
]
SAFE_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

# Strict numbers and booleans: YAML says what a value is, and `minor: true` (1), `tickInterval:
# yes` or `lun: '1'` are mistakes to report, not values to coerce. A float accepts an integer.
XapiUrl = Annotated[
    str,
    StringConstraints(pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$"),
    Field(description="An http:// or https:// URL of a pool host (no path, no credentials)."),
]


Seconds = Annotated[
    float, Strict(), Field(gt=0, le=3600, allow_inf_nan=False, description="A duration in seconds.")
]


def _not_a_number(value: object) -> object:
    # ipaddress accepts integers (IPv4Address(12) is 0.0.0.12): a truncated address in YAML
    # (`replicationAddress: 10`) must be an error, not a silently different address.
    if isinstance(value, int | float):
        raise ValueError("expected an IPv4 address written as text, e.g. 10.0.0.1")
    return value


def _unicast(value: ipaddress.IPv4Address) -> None:
    # None of these can be a host's address on a link: a spec naming one is a mistake that would
    # only show at run time (ip addr add refusing it, a ping that always or never answers).
    for bad, what in (
        (value.is_unspecified, "the unspecified address"),
        (value.is_loopback, "a loopback address"),
        (value.is_multicast, "a multicast address"),
        (value == ipaddress.IPv4Address("255.255.255.255"), "the broadcast address"),
    ):
        if bad:
            raise ValueError(f"{value} is {what}; expected a host's unicast address")


def _host_address(value: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
    _unicast(value)
    return value


def _host_interface(value: ipaddress.IPv4Interface) -> ipaddress.IPv4Interface:
    _unicast(value.ip)
    net = value.network
    if net.prefixlen <= 30 and value.ip in (net.network_address, net.broadcast_address):
        which = "network" if value.ip == net.network_address else "broadcast"
        raise ValueError(
            f"{value.ip} is the {which} address of {net}; expected a host address inside it"
        )
    return value


def _with_prefix(value: object) -> object:
    # ipaddress reads '10.0.0.3' as 10.0.0.3/32: a VIP whose prefix was forgotten would be added
    # without its subnet route. Ask for the prefix instead of guessing it.
    value = _not_a_number(value)
    if isinstance(value, str) and "/" not in value:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            return value  # not an address at all: the type's own error says what is expected
        raise ValueError(f"expected an address with its prefix, e.g. {value}/24")
    return value


IPv4 = Annotated[
    ipaddress.IPv4Address, BeforeValidator(_not_a_number), AfterValidator(_host_address)
]
IPv4WithPrefix = Annotated[
    ipaddress.IPv4Interface, BeforeValidator(_with_prefix), AfterValidator(_host_interface)
]


def cross_field_error(message: str, *at: str | int) -> PydanticCustomError:
    """A model-level rule broken by one field: ``at`` is that field's path (YAML keys) below the
    model, so the loader can point at its line instead of at the whole model."""
    return PydanticCustomError("cross_field", "{message}", {"message": message, "at": at})


def _help(alias: object) -> tuple[str, str]:
    meta = getattr(alias, "__metadata__", ())
    pattern = next(m.pattern for m in meta if isinstance(m, StringConstraints))
    text = next(m.description for m in meta if hasattr(m, "description") and m.description)
    if not text[1:2].isupper():  # "Letters" -> "letters", but "SCSI" stays "SCSI"
        text = text[0].lower() + text[1:]
    return str(pattern), f"expected {text}"


PATTERN_HELP: dict[str, str] = dict(
    _help(a)
    for a in (
        SafeName,
        DevicePath,
        FilePath,
        InterfaceName,
        Iqn,
        ScsiWord,
        MailAddress,
        HeaderText,
        HostName,
        XapiUrl,
    )
)


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        use_enum_values=False,
    )
