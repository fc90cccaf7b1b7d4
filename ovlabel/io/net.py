"""Whether a download host answers, found in seconds (no minute of a download library's retries).

:func:`unreachable` tries a host once per process: a name lookup and a TCP connection with a 3-second
timeout (through the proxy when ``HTTPS_PROXY`` is set). ``OVLABEL_OFFLINE=1`` makes every host unreachable
without trying; ``HF_HUB_OFFLINE=1`` does so for the Hugging Face Hub (``$HF_ENDPOINT``).
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

#: Seconds to wait for a host's name lookup plus TCP connection.
CONNECT_TIMEOUT = 3.0

_reachable: dict[str, str | None] = {}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hf_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def unreachable(host: str) -> str | None:
    """Why ``host`` (``name`` or ``name:port``; port 443 by default) cannot be reached now
    (``"OVLABEL_OFFLINE is set"``, ``"cannot reach ..."``), or None. Checked once per process and host."""
    if _truthy("OVLABEL_OFFLINE"):
        return "OVLABEL_OFFLINE is set"
    if host == hf_host() and _truthy("HF_HUB_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    if host not in _reachable:
        proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
        target = urlparse(proxy) if proxy else None
        name, _, port = host.partition(":")
        addr = (target.hostname, target.port or 80) if target and target.hostname else (name, int(port or 443))
        try:
            socket.create_connection(addr, timeout=CONNECT_TIMEOUT).close()
            _reachable[host] = None
        except OSError as exc:
            via = f" (via the proxy {addr[0]})" if target else ""
            reason = exc.strerror or str(exc) or type(exc).__name__
            _reachable[host] = f"cannot reach {host}{via}: {reason}"
    return _reachable[host]


class Unreachable(OSError):
    """A download was not tried: its host is unreachable (the reason is the message)."""


def fail_fast(url_or_host: str) -> None:
    """Raise :class:`Unreachable` at once when the host of ``url_or_host`` cannot be reached, so that a
    loader reports it (with its own advice) instead of letting a download library retry for a minute."""
    host = urlparse(url_or_host).hostname or url_or_host
    why = unreachable(host)
    if why:
        raise Unreachable(why)
