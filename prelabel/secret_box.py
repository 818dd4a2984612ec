"""Encryption at rest of the credentials prelabel keeps (Fernet: AES-128-CBC + HMAC-SHA256)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from prelabel.errors import IntegrationError
from prelabel.settings import SecuritySettings

logger = logging.getLogger(__name__)

KEY_FILE = "secret-key"
SEALED_PREFIX = "fernet:"


@dataclass(frozen=True)
class SecretBox:
    """Seals and opens short secrets with one key."""

    fernet: Fernet

    def seal(self, secret: str) -> str:
        """The secret encrypted, as text to store."""
        return SEALED_PREFIX + self.fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        """The secret a :meth:`seal` result holds.

        Raises:
            IntegrationError: Not sealed, or sealed with another key (the key changed).
        """
        if not sealed.startswith(SEALED_PREFIX):
            raise IntegrationError("stored credential is not encrypted; send it again")
        try:
            return self.fernet.decrypt(sealed[len(SEALED_PREFIX) :].encode()).decode()
        except InvalidToken as exc:
            raise IntegrationError(
                "stored credential was encrypted with another PRELABEL_SECRET_KEY"
            ) from exc


def write_private_file(path: Path, text: str, *, replace: bool = False) -> None:
    """Write ``text`` to a file readable only by its owner (mode 0600 from creation on).

    Raises:
        FileExistsError: The file exists and ``replace`` is False.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if replace else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    if replace:
        os.replace(target, path)


def load_secret_box(settings: SecuritySettings, home: Path) -> SecretBox:
    """The box for ``PRELABEL_SECRET_KEY``, else for ``home/secret-key`` (made on first use).

    Raises:
        ValueError: The configured or stored key is not a Fernet key.
    """
    if settings.secret_key is not None:
        key = settings.secret_key.get_secret_value().strip()
    else:
        path = home / KEY_FILE
        if not path.exists():
            try:
                write_private_file(path, Fernet.generate_key().decode())
                logger.info("generated the secret key into %s (mode 0600)", path)
            except FileExistsError:
                pass  # another process made it first
        key = path.read_text().strip()
    try:
        return SecretBox(Fernet(key.encode()))
    except ValueError as exc:
        raise ValueError(
            "PRELABEL_SECRET_KEY (or $PRELABEL_HOME/secret-key) is not a Fernet key: 32 "
            "url-safe base64-encoded bytes, e.g. from `python -c 'from cryptography.fernet "
            "import Fernet; print(Fernet.generate_key().decode())'`"
        ) from exc
