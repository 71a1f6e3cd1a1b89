"""Who a limit counts: the client's address, as werkzeug's ``ProxyFix`` would see it."""

from __future__ import annotations

from collections.abc import Callable

from .._compat import flask as compat_flask

__all__ = ["KeyFunc", "client_address", "socket_address"]

KeyFunc = Callable[[], str]

#: The address a request without ``REMOTE_ADDR`` is counted under.
DEFAULT_ADDRESS = "127.0.0.1"


def socket_address() -> str:
    """The key function of ``client_address(0)``: the socket address (``REMOTE_ADDR``).

    One function for every app, so the fast path can tell it apart and read the address
    from the request it already holds.
    """
    address: str = compat_flask.request_environ().get("REMOTE_ADDR") or DEFAULT_ADDRESS
    return address


def client_address(trusted_proxies: int = 0) -> KeyFunc:
    """A key function: the client's address, as werkzeug's ``ProxyFix`` would see it.

    With ``trusted_proxies`` = 0 it is the socket address (``REMOTE_ADDR``), which a
    client cannot forge. With N > 0 it is the Nth address from the right of
    ``X-Forwarded-For`` (the one the outermost trusted proxy saw), falling back to the
    socket address when the header has fewer than N entries. Entries further left are
    whatever the client sent and are never used.

    :param trusted_proxies: how many proxies in front of the app append to the header.
    """
    if trusted_proxies < 0:
        raise ValueError("trusted_proxies must be >= 0")
    if trusted_proxies == 0:
        return socket_address

    def forwarded_address() -> str:
        environ = compat_flask.request_environ()
        forwarded: str | None = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded:
            # Split only the hops our proxies wrote; a client can make the rest arbitrarily long.
            hops = forwarded.rsplit(",", trusted_proxies)
            if len(hops) >= trusted_proxies:
                hop = hops[-trusted_proxies].strip()
                if hop:
                    return hop
        address: str = environ.get("REMOTE_ADDR") or DEFAULT_ADDRESS
        return address

    return forwarded_address
