"""The CHAP secrets file a spec's ``target.chap.secretsFile`` names: checked, read, redacted.

The file (YAML)::

    username: xen-pool           # the initiators log in as this tgt account
    password: 12to16chars!       # ... with this secret
    mutualUsername: tandem-tgt   # mutual only: the target answers as this account
    mutualPassword: other12chars # ... with this secret

Invariants:
- ``load_chap_secrets`` refuses (``ChapFileError``, a ``TerminalError`` whose message names the
  file and what is wrong) a file that is not a regular file owned by root with mode 0600, is
  larger than a few KiB, is not such a mapping, or holds a secret of the wrong length or
  characters. Messages never quote a password, not even a wrong one.
- Every password it reads is registered with ``adapters.redact`` before it returns, so no
  output of this process can show it.
- ``ChapSecrets`` never shows a password in its ``repr`` (a traceback or a debug print of an
  adapter holding it shows ``[redacted]``).

Lengths: tgt 1.0.85 itself takes any length (5 and 72 characters were both accepted in the
lab); the limit is the initiators'. RFC 3720 (section 8.2.1) wants at least 96 bits (12 bytes)
for secrets that are not random, and the common initiators (Microsoft's, many storage
appliances) accept at most 16 characters, so 12 to 16 works everywhere, XenServer's open-iscsi
included.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from adapters.redact import REDACTED, remember
from reconciler.core.errors import TerminalError
from reconciler.core.spec import Chap

MIN_SECRET = 12
MAX_SECRET = 16
_MAX_FILE_BYTES = 4096
# Printable ASCII without spaces: the secret travels in tgtadm's argv and in XenServer's
# device-config, and is typed by people.
_SECRET_RE = re.compile(r"^[\x21-\x7e]+$")
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$")
_KEYS = ("username", "password", "mutualUsername", "mutualPassword")


class ChapFileError(TerminalError):
    """The secrets file cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class ChapSecrets:
    """The accounts of one target: ``user``/``password`` for initiators (incoming), and for
    mutual CHAP ``mutual_user``/``mutual_password`` (tgt's outgoing account)."""

    user: str
    password: str = field(repr=False)
    mutual_user: str | None = None
    mutual_password: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        mutual = f", mutual_user={self.mutual_user!r}" if self.mutual_user else ""
        return f"ChapSecrets(user={self.user!r}, password={REDACTED!r}{mutual})"

    @property
    def accounts(self) -> frozenset[tuple[str, bool]]:
        """(user name, outgoing) pairs tgt should show bound to the target."""
        out = {(self.user, False)}
        if self.mutual_user:
            out.add((self.mutual_user, True))
        return frozenset(out)

    @property
    def passwords(self) -> tuple[str, ...]:
        return tuple(p for p in (self.password, self.mutual_password) if p)


def check_file(path: str, st: os.stat_result) -> None:
    """Refuse a secrets file anyone but root could read or change."""
    if not stat.S_ISREG(st.st_mode):
        raise ChapFileError(f"CHAP secrets file {path}: not a regular file")
    if st.st_uid != 0:
        raise ChapFileError(
            f"CHAP secrets file {path}: owned by uid {st.st_uid}, must be owned by root "
            f"(chown root:root {path})"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o600:
        raise ChapFileError(
            f"CHAP secrets file {path}: mode {mode:04o}, must be 0600 (readable and writable "
            f"by root only: chmod 600 {path})"
        )


def load_chap_secrets(chap: Chap) -> ChapSecrets:
    """Check and read ``chap.secrets_file``; raises ``ChapFileError`` (see the module)."""
    path = chap.secrets_file
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        why = "a symbolic link (name the file itself)" if exc.errno == 40 else exc.strerror
        raise ChapFileError(f"CHAP secrets file {path}: cannot open it: {why}") from None
    try:
        # fstat of the open file: what is checked is what is read (no swap in between).
        check_file(path, os.fstat(fd))
        data = os.read(fd, _MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE_BYTES:
        raise ChapFileError(f"CHAP secrets file {path}: larger than {_MAX_FILE_BYTES} bytes")
    secrets = _parse(path, data, mutual=chap.mutual)
    remember(*secrets.passwords)
    return secrets


def _parse(path: str, data: bytes, *, mutual: bool) -> ChapSecrets:
    where = f"CHAP secrets file {path}"
    try:
        doc = YAML(typ="safe", pure=True).load(data.decode("utf-8"))
    except (UnicodeDecodeError, YAMLError):
        # ruamel's message would quote the offending text, which may be a password.
        raise ChapFileError(f"{where}: not a readable YAML mapping") from None
    if not isinstance(doc, dict):
        raise ChapFileError(f"{where}: expected the keys {', '.join(_KEYS[:2])}")
    # Passwords are in a readable-only-by-root file: still, remember them before any message.
    remember(*(v for k, v in doc.items() if isinstance(v, str) and "assword" in str(k)))
    wanted = _KEYS if mutual else _KEYS[:2]
    unknown = [str(k) for k in doc if k not in _KEYS]
    if unknown:
        raise ChapFileError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(_KEYS)})"
        )
    missing = [k for k in wanted if k not in doc]
    if missing:
        raise ChapFileError(f"{where}: missing {', '.join(missing)}")
    if not mutual and any(k in doc for k in _KEYS[2:]):
        raise ChapFileError(
            f"{where}: mutualUsername/mutualPassword are set but the spec's target.chap.mutual "
            "is false (set mutual: true, or remove them)"
        )
    for key in wanted:
        if not isinstance(doc[key], str):
            raise ChapFileError(f"{where}: {key} must be text (quote it)")
    for key in wanted[0::2]:
        if not _USER_RE.match(doc[key]):
            raise ChapFileError(
                f"{where}: {key} {doc[key]!r} must be 1-64 letters, digits, '.', '_', ':', "
                "'@' or '-', starting with a letter or digit"
            )
    for key in wanted[1::2]:
        value = doc[key]
        if not MIN_SECRET <= len(value) <= MAX_SECRET:
            raise ChapFileError(
                f"{where}: {key} has {len(value)} characters; CHAP secrets must have "
                f"{MIN_SECRET} to {MAX_SECRET} (RFC 3720 asks for at least 12; many initiators "
                "accept at most 16)"
            )
        if not _SECRET_RE.match(value):
            raise ChapFileError(
                f"{where}: {key} may hold only printable ASCII characters without spaces"
            )
    if mutual:
        if doc["mutualUsername"] == doc["username"]:
            raise ChapFileError(
                f"{where}: mutualUsername must differ from username (tgt keeps one account "
                "per name)"
            )
        if doc["mutualPassword"] == doc["password"]:
            raise ChapFileError(
                f"{where}: mutualPassword must differ from password (one secret for both "
                "directions lets anyone posing as the target learn the initiator's answers)"
            )
    return ChapSecrets(
        user=doc["username"],
        password=doc["password"],
        mutual_user=doc.get("mutualUsername") if mutual else None,
        mutual_password=doc.get("mutualPassword") if mutual else None,
    )
