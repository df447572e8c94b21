"""Alert delivery: the system log and SMTP mail.

Delivery failures never break a tick: they are returned as text for the agent's own log.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import smtplib
import socket
from email.message import EmailMessage

from adapters.base import Alert
from adapters.redact import redact
from reconciler.core.spec import Mail

log = logging.getLogger("tandem")


def syslog_handler() -> logging.Handler | None:
    """A handler for the local system log, when there is one (/dev/log)."""
    if not os.path.exists("/dev/log"):
        return None
    handler = logging.handlers.SysLogHandler(address="/dev/log")
    handler.setFormatter(logging.Formatter("tandem[%(process)d]: %(levelname)s %(message)s"))
    return handler


class MailAlerter:
    def __init__(self, mail: Mail, *, timeout: float = 10.0) -> None:
        self.mail = mail
        self.timeout = timeout

    def send(self, alerts: list[Alert]) -> str | None:
        """Send one mail listing the alerts; returns an error text instead of raising."""
        if not alerts or not self.mail.enabled:
            return None
        msg = EmailMessage()
        msg["From"] = self.mail.sender
        msg["To"] = ", ".join(self.mail.to)
        worst = "critical" if any(a.severity == "critical" for a in alerts) else alerts[0].severity
        # Redacted before the subject's cut: a secret cut in two would no longer match.
        first = redact(alerts[0].message)
        msg["Subject"] = redact(f"{self.mail.subject} [{worst}] {first[:80]}")
        body = redact("\n".join(f"[{a.severity}] {a.message}" for a in alerts))
        msg.set_content(f"{body}\n\nsent by tandem on {socket.gethostname()}\n")
        try:
            with smtplib.SMTP(self.mail.server, self.mail.port, timeout=self.timeout) as smtp:
                smtp.send_message(msg)
        except (OSError, smtplib.SMTPException) as exc:
            return f"alert mail to {self.mail.server}:{self.mail.port} failed: {exc}"
        return None
