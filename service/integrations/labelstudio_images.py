"""Task images fetched over HTTP for the Label Studio backend: the core's ``TaskImageSource``.

``data:`` URLs are decoded by the core; absolute URLs and paths on the Label
Studio host are fetched with the injected ``httpx.Client`` (timeouts set there),
the status checked and failures wrapped in ``IntegrationError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from prelabel.errors import ImageTooLarge, IntegrationError
from prelabel.integrations.labelstudio import Binding, decode_data_url
from prelabel.secret_box import SecretBox


@dataclass(frozen=True)
class ImageSource:
    """Fetches task images: ``data:`` URLs, absolute URLs, or paths on the Label Studio host.

    Attributes:
        client: Has the timeouts; injected so tests can use a MockTransport.
        max_bytes: Larger images are refused.
        secrets: Opens the access token, stored sealed (encrypted at rest).
        url_override: Label Studio's address as prelabel reaches it, replacing
            the ``hostname`` from ``/setup`` when set.
    """

    client: httpx.Client
    max_bytes: int
    secrets: SecretBox
    url_override: str | None = None

    def fetch(self, ref: str, binding: Binding) -> bytes:
        """The bytes of the image ``ref`` names.

        The access token from ``/setup`` goes only to the Label Studio host
        (``Authorization: Token ...``), never to other hosts.

        Raises:
            CodecError: a malformed ``data:`` URL.
            ImageTooLarge: over ``max_bytes``.
            IntegrationError: unsupported reference, no host known for a path,
                a timeout, a network error or a non-2xx answer.
        """
        if ref.startswith("data:"):
            return decode_data_url(ref, self.max_bytes)
        host = (self.url_override or binding.hostname or "").rstrip("/")
        if ref.startswith("/") and not ref.startswith("//"):
            if not host:
                raise IntegrationError(
                    f"task image {ref!r} is a path on the Label Studio host, but /setup gave no "
                    f"hostname; set PRELABEL_LABELSTUDIO_URL"
                )
            url = urljoin(host + "/", ref.lstrip("/"))
        elif urlsplit(ref).scheme in ("http", "https"):
            url = ref
        else:
            raise IntegrationError(
                f"task image {ref[:100]!r}: expected a data: URL, an http(s) URL or a /path on "
                f"the Label Studio host"
            )
        headers = {}
        if host and binding.access_token and _same_origin(url, host):
            token = self.secrets.open(binding.access_token.get_secret_value())
            headers["Authorization"] = f"Token {token}"
        return self._get(url, headers)

    def _get(self, url: str, headers: dict[str, str]) -> bytes:
        shown = url.split("?", 1)[0]
        try:
            with self.client.stream("GET", url, headers=headers, follow_redirects=True) as response:
                if response.status_code >= 400:
                    hint = (
                        " (the access token from /setup was refused)"
                        if response.status_code in (401, 403)
                        else ""
                    )
                    raise IntegrationError(
                        f"fetching task image {shown} failed: HTTP {response.status_code}{hint}"
                    )
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ImageTooLarge(f"task image {shown} is over {self.max_bytes} bytes")
                    chunks.append(chunk)
        except httpx.TimeoutException as exc:
            raise IntegrationError(f"fetching task image {shown} timed out ({exc})") from exc
        except httpx.HTTPError as exc:
            raise IntegrationError(f"fetching task image {shown} failed: {exc}") from exc
        return b"".join(chunks)


def _same_origin(url: str, host: str) -> bool:
    a, b = urlsplit(url), urlsplit(host)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)
