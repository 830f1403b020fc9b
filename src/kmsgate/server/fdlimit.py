"""The process's open-files limit, raised once at start so connections do not run out of it."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("kmsgate.server")


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit cannot be the soft one (the kernel caps it at fs.nr_open).
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target <= soft:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
        return soft
    log.info("open-files limit raised from %d to %d", soft, target)
    return target
