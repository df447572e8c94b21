"""The CHAP secrets file: refused unless root's and 0600, every wrong content in words, and no
message, repr or traceback that shows a password; the redaction helper every output uses."""

from __future__ import annotations

import io
import logging
import os
import traceback
from pathlib import Path

import pytest

from adapters.redact import REDACTED, RedactFilter, RedactingStream, redact, redact_data, remember
from adapters.runner import Runner
from adapters.tgt import TgtAdapter
from adapters.tgt.chap import ChapFileError, load_chap_secrets
from reconciler.core.errors import AdapterError
from reconciler.core.spec import Chap

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the file must be owned by root")
PASSWORD = "Tq7-vault-9xYz"  # 14 characters
MUTUAL = "Rm4-other-2wQp"


def secrets_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "chap.yaml"
    path.write_text(text)
    path.chmod(mode)
    return path


def load(path: Path, *, mutual: bool = False) -> object:
    return load_chap_secrets(Chap(secrets_file=str(path), mutual=mutual))


@ROOT_ONLY
def test_a_good_file_loads_and_its_repr_hides_the_passwords(tmp_path: Path) -> None:
    path = secrets_file(
        tmp_path,
        f"username: xen-pool\npassword: '{PASSWORD}'\n"
        f"mutualUsername: tandem-tgt\nmutualPassword: '{MUTUAL}'\n",
    )
    secrets = load_chap_secrets(Chap(secrets_file=str(path), mutual=True))
    assert (secrets.user, secrets.password) == ("xen-pool", PASSWORD)
    assert secrets.accounts == {("xen-pool", False), ("tandem-tgt", True)}
    shown = repr(secrets)
    assert PASSWORD not in shown and MUTUAL not in shown and "xen-pool" in shown
    # loading registered both for redaction
    assert redact(f"a {PASSWORD} b {MUTUAL}") == f"a {REDACTED} b {REDACTED}"


@ROOT_ONLY
@pytest.mark.parametrize(
    ("mode", "owner", "expected"),
    [
        (0o644, 0, "mode 0644, must be 0600"),
        (0o640, 0, "mode 0640, must be 0600"),
        (0o400, 0, "mode 0400, must be 0600"),
        (0o600, 1000, "owned by uid 1000, must be owned by root"),
    ],
)
def test_a_file_others_could_read_or_change_is_refused(
    tmp_path: Path, mode: int, owner: int, expected: str
) -> None:
    path = secrets_file(tmp_path, f"username: u\npassword: '{PASSWORD}'\n", mode)
    os.chown(path, owner, 0)
    with pytest.raises(ChapFileError) as err:
        load(path)
    assert str(path) in str(err.value) and expected in str(err.value)


@ROOT_ONLY
def test_a_symlink_a_directory_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    real = secrets_file(tmp_path, f"username: u\npassword: '{PASSWORD}'\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    with pytest.raises(ChapFileError, match="symbolic link"):
        load(link)
    (tmp_path / "dir").mkdir(mode=0o600)
    with pytest.raises(ChapFileError, match="not a regular file"):
        load(tmp_path / "dir")
    with pytest.raises(ChapFileError, match="No such file"):
        load(tmp_path / "absent.yaml")


@ROOT_ONLY
@pytest.mark.parametrize(
    ("text", "mutual", "expected"),
    [
        ("password: 'Tq7-vault-9xYz'\n", False, "missing username"),
        ("username: u\npassword: 'short-1'\n", False, "password has 7 characters"),
        ("username: u\npassword: 'seventeen-chars-x'\n", False, "password has 17 characters"),
        ("username: u\npassword: 'with space 12'\n", False, "printable ASCII"),
        ("username: u\npassword: 123456789012\n", False, "password must be text"),
        ("username: u\npasword: 'Tq7-vault-9xYz'\n", False, "unknown key(s) pasword"),
        ("username: 'a b'\npassword: 'Tq7-vault-9xYz'\n", False, "username 'a b' must be"),
        ("- a list\n", False, "expected the keys username, password"),
        ("username: [unclosed\n", False, "not a readable YAML mapping"),
        ("username: u\npassword: 'Tq7-vault-9xYz'\n", True, "missing mutualUsername"),
        (
            "username: u\npassword: 'Tq7-vault-9xYz'\nmutualUsername: t\n"
            "mutualPassword: 'Rm4-other-2wQp'\n",
            False,
            "target.chap.mutual is false",
        ),
        (
            "username: u\npassword: 'Tq7-vault-9xYz'\nmutualUsername: u\n"
            "mutualPassword: 'Rm4-other-2wQp'\n",
            True,
            "mutualUsername must differ from username",
        ),
        (
            "username: u\npassword: 'Tq7-vault-9xYz'\nmutualUsername: t\n"
            "mutualPassword: 'Tq7-vault-9xYz'\n",
            True,
            "mutualPassword must differ from password",
        ),
    ],
)
def test_wrong_contents_are_named_without_quoting_a_password(
    tmp_path: Path, text: str, mutual: bool, expected: str
) -> None:
    path = secrets_file(tmp_path, text)
    with pytest.raises(ChapFileError) as err:
        load(path, mutual=mutual)
    message = str(err.value)
    assert expected in message and str(path) in message
    for secret in ("Tq7-vault-9xYz", "Rm4-other-2wQp", "short-1", "seventeen-chars-x"):
        assert secret not in message


@ROOT_ONLY
def test_a_yaml_error_does_not_quote_the_line_holding_the_password(tmp_path: Path) -> None:
    path = secrets_file(tmp_path, "username: u\npassword: 'Unclosed-pass-1\n")
    with pytest.raises(ChapFileError) as err:
        load(path)
    assert "Unclosed-pass-1" not in str(err.value)
    assert "Unclosed-pass-1" not in "".join(traceback.format_exception(err.value))


def _echoing_transport() -> object:
    """A transport whose every command fails and echoes its whole argv on stderr: the worst a
    tool can do with a password it was given."""

    class Echo:
        name = "echo"

        def wrap(self, argv: list[str]) -> list[str]:
            return ["sh", "-c", 'echo "tgtadm: refused: $*" >&2; exit 22', "sh", *argv]

    return Echo()


def test_a_failed_account_command_carries_no_password(tmp_path: Path) -> None:
    password = "Echo-pass-0042"
    adapter = TgtAdapter(Runner(_echoing_transport()), control_dir=str(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(AdapterError) as err:
        adapter._create_account("xen-pool", password)
    exc = err.value
    assert "22" in str(exc)
    everything = "\n".join(
        [str(exc), " ".join(exc.command), exc.output, *traceback.format_exception(exc)]
    )
    assert "xen-pool" in everything and REDACTED in " ".join(exc.command)
    assert password not in everything


def test_redaction_helpers() -> None:
    remember("Helper-secret-77", "abc")  # too short to register: would mask ordinary words
    assert redact("x Helper-secret-77 y abc") == f"x {REDACTED} y abc"
    assert redact_data({"a": ["Helper-secret-77", 3], "Helper-secret-77": None}) == {
        "a": [REDACTED, 3],
        REDACTED: None,
    }
    # a stream redacts whole lines: a secret split across two writes is still caught
    out = io.StringIO()
    stream = RedactingStream(lambda: out)
    stream.write("one Helper-sec")
    stream.write("ret-77 two\nthree")
    assert out.getvalue() == f"one {REDACTED} two\n"
    stream.flush()
    assert out.getvalue() == f"one {REDACTED} two\nthree"
    assert not hasattr(stream, "buffer")  # nothing can write around it
    # the logging filter redacts the formatted message for every handler of the logger
    log = logging.getLogger("tests.redact")
    buf = io.StringIO()
    log.addHandler(logging.StreamHandler(buf))
    log.addFilter(RedactFilter())
    log.propagate = False
    log.warning("token %s", "Helper-secret-77")
    assert buf.getvalue() == f"token {REDACTED}\n"
