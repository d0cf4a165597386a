"""The store's address kept out of what unauthenticated callers read.

``StoreAddress(url)`` knows every form in which the configured store URL can show
up in a message (the URL itself, its credential-free display form, ``host:port``,
an S3 endpoint, a directory) and ``hide(text)`` replaces them with ``<store>``.
Error answers and the status of ``/v2/health/ready`` go through it unless the
caller is authenticated; the server's own log keeps the display URL (never
credentials: ``pemn.store`` builds that form without them).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

from pemn.store import parse_url

__all__ = ["StoreAddress"]

_MASK = "<store>"


def _forms_of(url: str) -> set[str]:
    forms = {url}
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        forms.add(unquote(parts.path))
        return forms
    if parts.password:
        forms.add(parts.password)
        forms.add(unquote(parts.password))
    if parts.hostname:
        host = parts.hostname
        port = parts.port
        forms.add(f"{host}:{port}" if port else host)
        if port is None or "." in host or ":" in host:  # an IP address or a FQDN
            forms.add(host)
    for key, value in parse_qsl(parts.query):
        if key == "endpoint_url" and value:
            forms |= _forms_of(value)
    return forms


class StoreAddress:
    def __init__(self, url: str) -> None:
        display, _, _ = parse_url(url)
        forms = _forms_of(url) | _forms_of(display)
        # longest first, so that a URL goes before the host:port inside it
        self._forms = sorted((f for f in forms if len(f) >= 3), key=len, reverse=True)
        self.display = display
        self.kind = urlsplit(display).scheme or "file"

    def hide(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, _MASK)
        return text
