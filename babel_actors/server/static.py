"""The web client (``babel_actors/web``), served at ``/`` from memory.

The files are read once, when the server starts, into a table keyed by URL path. A
request is answered from that table or not at all, so no request path ever reaches the
file system: ``..``, encoded slashes, NUL bytes and absolute paths simply find nothing.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Mapping
from importlib.resources.abc import Traversable
from urllib.parse import unquote

import attrs

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
}
"""The only kinds of file served; anything else in the folder stays private."""

REVALIDATE = "no-cache"
"""File names carry no content hash, so browsers keep a copy but ask each time; the
ETag makes the answer a bodiless 304 when nothing changed."""

PAGE_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss: http: https:; img-src 'self' data:; "
    "media-src 'self' blob:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)
"""Pages load nothing from elsewhere; the API may live on another origin
(``window.BABEL_SERVER``), so connections may go anywhere."""


@attrs.frozen
class Asset:
    """One file of the web client, ready to send."""

    body: bytes
    """The file's bytes."""
    content_type: str
    """The ``Content-Type`` header value."""
    etag: str
    """A strong ETag (quoted) derived from the bytes."""

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """Response headers other than the length."""
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"cache-control", REVALIDATE.encode()),
            (b"etag", self.etag.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]
        if self.content_type.startswith("text/html"):
            headers.append((b"content-security-policy", PAGE_POLICY.encode()))
        return headers


class StaticSite:
    """URL path to ``Asset``; ``/`` and every ``dir/`` mean their ``index.html``."""

    def __init__(self, assets: Mapping[str, Asset]) -> None:
        self._assets = dict(assets)

    @classmethod
    def from_package(cls) -> StaticSite:
        """The web client shipped in the package (empty if the folder is missing)."""
        root = importlib.resources.files("babel_actors").joinpath("web")
        assets: dict[str, Asset] = {}
        if root.is_dir():
            _collect(root, "/", assets)
        return cls(assets)

    def find(self, path: str) -> Asset | None:
        """The asset at URL ``path`` (not yet percent-decoded), or None."""
        if "%" in path:
            try:
                path = unquote(path, errors="strict")
            except UnicodeDecodeError:
                return None
        if path.endswith("/"):
            path += "index.html"
        return self._assets.get(path)

    def __len__(self) -> int:
        return len(self._assets)


def _collect(folder: Traversable, prefix: str, into: dict[str, Asset]) -> None:
    for entry in folder.iterdir():
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_dir():
            _collect(entry, f"{prefix}{entry.name}/", into)
            continue
        suffix = entry.name[entry.name.rfind(".") :] if "." in entry.name else ""
        content_type = CONTENT_TYPES.get(suffix)
        if content_type is None:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        into[prefix + entry.name] = Asset(body, content_type, etag)
