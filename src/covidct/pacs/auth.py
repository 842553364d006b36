"""Credentials for the DICOMweb server: a bearer token or basic auth, from the environment or a file.

Files rather than options, so a secret never shows in the process list or the shell history:
``--token-file`` holds the token, ``--basic-auth-file`` one line ``user:password``. The environment
(``COVIDCT_PACS_TOKEN``, or ``COVIDCT_PACS_USER`` and ``COVIDCT_PACS_PASSWORD``) is read when no file
is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from covidct.errors import OptionError

TOKEN_ENV = "COVIDCT_PACS_TOKEN"
USER_ENV = "COVIDCT_PACS_USER"
PASSWORD_ENV = "COVIDCT_PACS_PASSWORD"


@dataclass(frozen=True)
class Credentials:
    """A bearer token, or a user and password (repr hides both secrets)."""

    token: str = field(default="", repr=False)
    user: str = ""
    password: str = field(default="", repr=False)

    def session(self) -> requests.Session:
        """A requests session that sends these credentials with every request."""
        session = requests.Session()
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        elif self.user:
            session.auth = (self.user, self.password)
        return session


def read_credentials(
    *,
    token_file: Path | None = None,
    basic_auth_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Credentials:
    """The credentials from the given file, else from the environment, else none (an open server).

    Raises:
        OptionError: both files given, an unreadable or empty file, a basic-auth file without
            ``user:password``.
    """
    env = os.environ if env is None else env
    if token_file and basic_auth_file:
        raise OptionError("--token-file and --basic-auth-file both given; pass one")
    if token_file:
        return Credentials(token=_read_secret(token_file, "--token-file"))
    if basic_auth_file:
        user, colon, password = _read_secret(basic_auth_file, "--basic-auth-file").partition(":")
        if not colon or not user:
            raise OptionError(f"--basic-auth-file {basic_auth_file}: expected one line 'user:password'")
        return Credentials(user=user, password=password)
    if env.get(TOKEN_ENV):
        return Credentials(token=env[TOKEN_ENV])
    if env.get(USER_ENV):
        return Credentials(user=env[USER_ENV], password=env.get(PASSWORD_ENV, ""))
    return Credentials()


def _read_secret(path: Path, option: str) -> str:
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise OptionError(f"{option} {path}: cannot read it ({error.strerror})") from None
    if not secret:
        raise OptionError(f"{option} {path}: the file is empty")
    return secret
