"""The licence status a KMS client reports in its request, by name."""

from __future__ import annotations

from typing import Final, overload

#: The client's licensing state (the request's LicenseStatus field) as logs and the API name it.
LICENSE_STATUS: Final = {
    0: "unlicensed",
    1: "licensed",
    2: "oob-grace",
    3: "oot-grace",
    4: "non-genuine-grace",
    5: "notification",
    6: "extended-grace",
}


@overload
def license_status_name(status: int) -> str: ...
@overload
def license_status_name(status: None) -> None: ...
def license_status_name(status: int | None) -> str | None:
    """Readable name of a licence status code ("status-N" for codes without one); None stays."""
    if status is None:
        return None
    return LICENSE_STATUS.get(status, f"status-{status}")
