"""The API key check: ``Authorization: Bearer <key>`` on every ``/api/v1`` request when a key is set."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status


def require_api_key(request: Request) -> None:
    """Let the request through when no key is configured or it carries the right one; else 401.

    The comparison is constant-time (``hmac.compare_digest``), so response timing does not reveal
    how much of a guessed key was right.
    """
    expected = request.app.state.settings.api_key
    if expected is None or not expected.get_secret_value():
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.get_secret_value().encode()
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=(
                "missing or wrong API key; send the header 'Authorization: "
                "Bearer <key>' with the key the server was started with"
            ),
            headers={"WWW-Authenticate": "Bearer"},
        )
