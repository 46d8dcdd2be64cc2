"""Who may see and do what on the dashboard, and the CSRF check of every POST.

Access is ``"operate"`` (see everything, act), ``"read"`` (see everything, act on nothing) or
None (refused). Mounted in an app of yours, ``authorize(request)`` decides; standalone,
:class:`PasswordAuth` checks HTTP Basic credentials against passwords from the environment.

CSRF: a signed random token lives in a cookie (``HttpOnly``, ``SameSite=Strict``) and in a
hidden field of every form; a POST passes only when the field equals the cookie and the
signature is this app's. A page of another origin can make a browser send the cookie (on the
same site, a port away) but cannot read it, so it cannot fill the field. A POST the browser
marks ``Sec-Fetch-Site: cross-site`` is refused before anything else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable
from typing import Literal

from starlette.requests import Request

__all__ = ["Access", "Authorize", "Csrf", "PasswordAuth", "access_of", "who"]

Access = Literal["operate", "read"]
Authorize = Callable[[Request], "Access | Awaitable[Access | None] | None"]

CSRF_COOKIE = "batchworks_csrf"
CSRF_FIELD = "csrf"


class PasswordAuth:
    """HTTP Basic authentication against one password that may operate and, optionally, one
    that may only read (any user name; it is logged as who acted).

    :param operate: the password of operators.
    :param read: the password of read-only users, or None for none.
    """

    #: what a refused request answers with, so that a browser asks for the password
    challenge = 'Basic realm="batchworks", charset="UTF-8"'

    def __init__(self, operate: str, read: str | None = None) -> None:
        if not operate:
            raise ValueError("PasswordAuth needs a non-empty operate password")
        if read is not None and (not read or hmac.compare_digest(read, operate)):
            raise ValueError("the read password must be non-empty and differ from the operate one")
        self._operate = operate.encode()
        self._read = None if read is None else read.encode()

    def __repr__(self) -> str:
        return f"<PasswordAuth read-only={'yes' if self._read else 'no'}>"

    def __call__(self, request: Request) -> Access | None:
        credentials = _basic(request.headers.get("authorization", ""))
        if credentials is None:
            return None
        user, password = credentials
        access: Access | None = None
        # Both compared every time, in constant time: the answer's timing tells nothing.
        if hmac.compare_digest(password, self._operate):
            access = "operate"
        if self._read is not None and hmac.compare_digest(password, self._read):
            access = "read"
        if access is not None:
            request.state.batchworks_user = user
        return access


def _basic(header: str) -> tuple[str, bytes] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user.decode("utf-8", "replace"), password


async def access_of(authorize: Authorize, request: Request) -> Access | None:
    """What ``authorize`` grants (it may be sync or async); anything else is None."""
    granted = authorize(request)
    if inspect.isawaitable(granted):
        granted = await granted
    return granted if granted in ("operate", "read") else None


def who(request: Request) -> str:
    """Who made the request, for the action log: the Basic user, the app's authenticated user
    (Starlette's ``AuthenticationMiddleware``), or else the client's address."""
    user = getattr(request.state, "batchworks_user", None)
    if user:
        return str(user)
    scoped = request.scope.get("user")
    if scoped is not None and getattr(scoped, "is_authenticated", False):
        return str(getattr(scoped, "display_name", "") or getattr(scoped, "identity", scoped))
    client = request.client
    return f"anonymous@{client.host}" if client else "anonymous"


class Csrf:
    """Signed double-submit tokens (see the module docstring).

    :param secret: the signing key; several processes serving one dashboard need the same.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def new(self) -> str:
        nonce = secrets.token_urlsafe(24)
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        nonce, _, signature = token.partition(".")
        return bool(nonce) and hmac.compare_digest(signature, self._sign(nonce))

    def token_of(self, request: Request) -> str | None:
        """The request's cookie token when it is one of ours."""
        token = request.cookies.get(CSRF_COOKIE)
        return token if self.valid(token) else None

    def check(self, request: Request, submitted: str | None) -> str | None:
        """None when the POST passes, else why it does not."""
        if request.headers.get("sec-fetch-site") == "cross-site":
            return "a cross-site request"
        cookie = self.token_of(request)
        if cookie is None:
            return "no CSRF cookie (load the page again)"
        if not submitted or not hmac.compare_digest(cookie, submitted):
            return "the form's CSRF token does not match (load the page again)"
        return None

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()[:32]
