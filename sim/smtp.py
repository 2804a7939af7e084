"""The SMTP emulator: aiosmtpd in the simulator's own loop, on loopback. It speaks as a submission server does:
STARTTLS first (a self-signed certificate made at start, for localhost and 127.0.0.1, which a client pins),
then AUTH PLAIN or LOGIN with the one simulated account, then MAIL, RCPT, DATA. Faults act on MAIL, the send."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hmac
import ipaddress
import logging
import ssl
import tempfile
import weakref
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sim.faults import Fault, Faults

if TYPE_CHECKING:
    from sim.chat import ChatHub

# aiosmtpd warns on every login that a field it sets itself is deprecated; that says nothing about the client.
logging.getLogger("mail.log").addFilter(lambda record: "login_data is deprecated" not in record.getMessage())

TLS_NAMES = ("localhost", "127.0.0.1", "::1")
REFUSALS = {"rate_limit": "451 4.7.1 Try again later", "http500": "421 4.3.0 Temporary server error, try again later",
            "down": "421 4.3.2 Service not available, closing transmission channel"}


def self_signed_certificate(names: tuple[str, ...] = TLS_NAMES) -> tuple[str, str]:
    """A fresh key and a certificate for `names` signed by itself: (certificate PEM, key PEM). A client trusts
    exactly this certificate (ssl.create_default_context(cadata=pem)), so TLS is checked end to end."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt: list[x509.GeneralName] = []
    for entry in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            alt.append(x509.DNSName(entry))
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def server_tls_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """ssl loads a chain only from files: they live in a private temporary folder just long enough for that."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="hedgeguard-sim-tls-") as folder:
        cert_file, key_file = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_file.write_text(cert_pem)
        key_file.write_text(key_pem)
        context.load_cert_chain(cert_file, key_file)
    return context


def plain_text(message: EmailMessage) -> str:
    """The body a person reads: the text/plain part, else the HTML one, transfer encodings and the wire's CRLF
    line ends undone."""
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    return str(part.get_content()).replace("\r\n", "\n").rstrip("\n")


class SmtpEmulator:
    """The handler aiosmtpd calls, the one account it accepts, and the listening server."""

    def __init__(self, hub: ChatHub, faults: Faults, *, user: str, password: str) -> None:
        self.hub = hub
        self.faults = faults
        self.user, self.password = user, password
        self.cert_pem: str | None = None
        self._tls: ssl.SSLContext | None = None
        self._server: asyncio.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()  # open connections, closed on stop

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 = any free port) in the running loop; the port actually bound."""
        if self._tls is None:
            self.cert_pem, key_pem = self_signed_certificate()
            self._tls = server_tls_context(self.cert_pem, key_pem)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._session, host, port, reuse_address=True)
        return self._server.sockets[0].getsockname()[1]

    def _session(self) -> SMTP:
        session = SMTP(self, hostname="localhost", ident="hedgeguard-sim ESMTP", tls_context=self._tls,
                       require_starttls=True, auth_required=True, auth_require_tls=True,
                       authenticator=self.authenticate, enable_SMTPUTF8=True, loop=asyncio.get_running_loop())
        self._sessions.add(session)
        return session

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        self._sessions.clear()
        await self._server.wait_closed()
        self._server = None

    # -- aiosmtpd hooks ---------------------------------------------------------------------------
    def authenticate(self, server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        """aiosmtpd offers this only after STARTTLS (auth_require_tls); the wrong pair gets 535."""
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        good = (hmac.compare_digest(auth_data.login, self.user.encode())
                and hmac.compare_digest(auth_data.password, self.password.encode()))
        return AuthResult(success=good, handled=False, auth_data=auth_data.login.decode() if good else None)

    async def handle_MAIL(self, server: SMTP, session: Any, envelope: Any, address: str,  # noqa: N802
                          mail_options: list[str]) -> str:
        """MAIL starts a send: it is counted, and faults without a path refuse it here."""
        self.hub.count_attempt("email")
        fault = self.faults.take("smtp", "MAIL", method="MAIL", order_entry=False, private=True)
        if fault is not None:
            return self._refusal(fault)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:  # noqa: N802
        """Faults reach DATA only when they name it (path "DATA"); otherwise the message is recorded."""
        fault = self.faults.take("smtp", "DATA", method="DATA", order_entry=False, private=False)
        if fault is not None:
            return self._refusal(fault)
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        recipients = list(envelope.rcpt_tos)
        self.hub.record("email", to=", ".join(recipients), recipients=recipients, subject=message["subject"],
                        text=plain_text(message), sender=message["from"] or envelope.mail_from)
        return "250 OK: queued"

    @staticmethod
    def _refusal(fault: Fault) -> str:
        return REFUSALS[fault.kind]
