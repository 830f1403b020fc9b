"""Log setup and the one-line activation record."""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime

from kmsgate.catalog import Catalog
from kmsgate.protocol.engine import unix_from_filetime
from kmsgate.protocol.hresult import describe
from kmsgate.protocol.messages import KmsRequest
from kmsgate.protocol.session import ActivationRefused, ActivationServed

LICENSE_STATUS = {
    0: "unlicensed",
    1: "licensed",
    2: "oob-grace",
    3: "oot-grace",
    4: "non-genuine-grace",
    5: "notification",
    6: "extended-grace",
}

activation_log = logging.getLogger("kmsgate.activation")


def setup_logging(level: str) -> None:
    """Log to stderr with UTC timestamps."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    formatter.converter = time.gmtime
    formatter.default_msec_format = "%s.%03dZ"
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def license_status_name(status: int) -> str:
    return LICENSE_STATUS.get(status, f"status-{status}")


def _describe_request(request: KmsRequest, catalog: Catalog) -> str:
    product = catalog.product_name(request.sku_id, request.kms_counted_id)
    name = request.machine_name.replace('"', "'") or "-"
    return (
        f'{name} "{product}" {license_status_name(request.license_status)} '
        f"v{request.major_version}.{request.minor_version}"
    )


def activation_line(
    peer: str, event: ActivationServed | ActivationRefused, catalog: Catalog
) -> str:
    """`client machine "product" status vN.M result`: one compact line per request."""
    if event.request is None:
        return f"{peer} - refused {describe(event.hresult)}: {event.reason}"
    text = f"{peer} {_describe_request(event.request, catalog)}"
    if isinstance(event, ActivationServed):
        when = datetime.fromtimestamp(unix_from_filetime(event.request.request_time), UTC)
        return (
            f"{text} activated count={event.response.current_client_count} "
            f"client-time={when:%Y-%m-%dT%H:%M:%SZ}"
        )
    return f"{text} refused {describe(event.hresult)}: {event.reason}"
