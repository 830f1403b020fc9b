"""Container health check: GET /healthz of the node's own web listener.

Unlike a KMS activation, this leaves no trace in the records (no client, no activation, no
gateway audit line). It finds the listener from the same file and KMSGATE_* environment as
`kmsgate serve`; exit status 0 when the node and its database answer, else 1.
"""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request

from pydantic import ValidationError

from kmsgate.config.addresses import parse_listen
from kmsgate.config.loading import load_settings

# A wildcard listener is reached on loopback from inside the container.
LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def main() -> int:
    try:
        settings = load_settings()
    except (ValidationError, ValueError, OSError) as exc:
        print(f"health check: settings do not load: {exc}", file=sys.stderr)
        return 1
    if settings.no_web or settings.no_store:
        print("health check: no web listener (no_web or no_store), no /healthz", file=sys.stderr)
        return 1
    host, port = parse_listen(settings.web)
    host = LOOPBACK.get(host, host)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    context = None
    scheme = "http"
    if settings.web_cert is not None:
        scheme = "https"
        # The certificate names the public host, not the loopback address asked here.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    url = f"{scheme}://{netloc}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:  # noqa: S310
            healthy = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"health check: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
