"""Help panels: where each setting shows in `kmsgate serve --help`, the man page and docs."""

from __future__ import annotations

from typing import Final

from pydantic.config import JsonDict

# Help panels of `kmsgate serve --help` and sections of the man page, in display order. Every
# field names its panel in json_schema_extra, so a new setting has to choose where it shows.
PANELS: dict[str, str] = {
    "listening": "Listening",
    "identity": "Identity and protocol",
    "access": "Access",
    "limits": "Limits",
    "store": "Store",
    "web": "Web",
    "gateway": "Gateway and accounts",
    "dns": "DNS publishing",
    "logging": "Logging",
}
PANEL_LISTENING: Final[JsonDict] = {"panel": "listening"}
PANEL_IDENTITY: Final[JsonDict] = {"panel": "identity"}
PANEL_ACCESS: Final[JsonDict] = {"panel": "access"}
PANEL_LIMITS: Final[JsonDict] = {"panel": "limits"}
PANEL_STORE: Final[JsonDict] = {"panel": "store"}
PANEL_WEB: Final[JsonDict] = {"panel": "web"}
PANEL_GATEWAY: Final[JsonDict] = {"panel": "gateway"}
PANEL_DNS: Final[JsonDict] = {"panel": "dns"}
PANEL_LOGGING: Final[JsonDict] = {"panel": "logging"}
