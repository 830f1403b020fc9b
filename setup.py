"""Builds the optional C block-cipher accelerator; kmsgate falls back to pure Python without it."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kmsgate.protocol._cipher",
            sources=["src/kmsgate/protocol/_cipher.c"],
            optional=True,
            extra_compile_args=["-O2"],
            # Built against the stable ABI (Py_LIMITED_API in the source): one wheel per platform.
            py_limited_api=True,
        )
    ],
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
