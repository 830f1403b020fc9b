"""Builds the C extensions: the block-cipher accelerator, the common exchange's byte layout,
the record ring's append, the activation rows' insert and fold, and the hot path compiled by
mypyc.

All are optional at run time: kmsgate falls back to pure Python without the cipher
(protocol/crypto.py), the layout (protocol/wire.py), the record ring's append
(recording/ring.py), the rows' insert (store/sqlite_rows.py) or fold
(store/activation_fold.py), and to the modules' source
without the mypyc build (kmsgate/_native.py).
KMSGATE_PURE_PYTHON_HOT_PATH=1 at build time skips mypyc.
"""

import os
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
LISTING = ROOT / "src" / "kmsgate" / "native_modules.txt"


def native_extensions() -> list[Extension]:
    """The mypyc build of the modules native_modules.txt lists (none if asked or unable)."""
    if os.environ.get("KMSGATE_PURE_PYTHON_HOT_PATH", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        return []
    sources = [
        f"src/{line.strip()}"
        for line in LISTING.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # mypyc resolves kmsgate's imports from the source folder; its group library is named,
    # so kmsgate/_native.py finds it.
    cwd = Path.cwd()
    os.chdir(ROOT / "src")
    try:
        extensions = mypycify(
            # Not the project's strict mypy settings (found by walking up from here): the
            # isolated build environment lacks the third-party packages they would check.
            [
                "--config-file",
                os.devnull,
                "--ignore-missing-imports",
                *(path.removeprefix("src/") for path in sources),
            ],
            opt_level="3",
            group_name="kmsgate_native",
            target_dir=str(ROOT / "build" / "mypyc"),
        )
    finally:
        os.chdir(cwd)
    for extension in extensions:
        # A C compiler that fails leaves kmsgate installable: it then runs the source.
        extension.optional = True
    return list(extensions)


def links(library: str, probe: bytes) -> bool:
    """True when `probe` (a C program) compiles and links with -l`library`."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    with tempfile.TemporaryDirectory() as folder:
        try:
            done = subprocess.run(  # noqa: S603 (the compiler Python was built with)
                [*compiler, "-x", "c", "-", "-o", f"{folder}/probe", f"-l{library}"],
                input=probe,
                capture_output=True,
                check=False,
            )
        except OSError:
            return False
    return done.returncode == 0


def links_libcrypto() -> bool:
    """True when OpenSSL's headers are here, with its SHA256_* calls (an OpenSSL built
    without its deprecated API has none), and libcrypto links (Debian: libssl-dev)."""
    return links(
        "crypto",
        b"#define OPENSSL_SUPPRESS_DEPRECATED\n#include <openssl/sha.h>\n"
        b"int main(void) { SHA256_CTX c; return !SHA256_Init(&c); }\n",
    )


def links_zlib() -> bool:
    """True when zlib's headers are here and it links (Debian: zlib1g-dev)."""
    return links("z", b"#include <zlib.h>\nint main(void) { return !crc32(0L, 0, 0); }\n")


def c_extension(module: str, **options: Any) -> Extension:
    """One of kmsgate's own C files: optional (kmsgate runs without it), built against the
    stable ABI (Py_LIMITED_API in the source), one wheel per platform."""
    source = "src/" + module.replace(".", "/") + ".c"
    return Extension(
        module,
        sources=[source],
        optional=True,
        extra_compile_args=["-O2"],
        py_limited_api=True,
        **options,
    )


NATIVE = native_extensions()
# The cipher's response sealing hashes with libcrypto; without it the module has the rounds only.
LIBCRYPTO = links_libcrypto()
setup(
    ext_modules=[
        c_extension(
            "kmsgate.protocol._cipher",
            define_macros=[("KMSGATE_LIBCRYPTO", "1")] if LIBCRYPTO else [],
            libraries=["crypto"] if LIBCRYPTO else [],
        ),
        *([c_extension("kmsgate.recording._ring", libraries=["z"])] if links_zlib() else []),
        # Reaches into CPython's sqlite3.Connection and the dynamic loader: CPython on Linux
        # and alikes only (store/sqlite_rows.py falls back to the sqlite3 module).
        c_extension("kmsgate.store._sqlite_rows"),
        c_extension("kmsgate.store._draft_fold"),
        c_extension("kmsgate.protocol._wire"),
        *NATIVE,
    ],
    # A wheel of the cipher alone serves every CPython from 3.11; mypyc's build is per version.
    options={} if NATIVE else {"bdist_wheel": {"py_limited_api": "cp311"}},
)
