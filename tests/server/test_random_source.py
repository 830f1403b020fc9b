"""BufferedRandom: the kernel's bytes in order, none handed out twice, none shared by a fork."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from kmsgate.server.random_source import BufferedRandom


class CountingRead:
    """A read() that returns the next bytes of one known stream, and counts its calls."""

    def __init__(self) -> None:
        self.stream = os.urandom(1 << 16)
        self.at = 0
        self.calls = 0

    def __call__(self, size: int) -> bytes:
        self.calls += 1
        out = self.stream[self.at : self.at + size]
        self.at += size
        return out


def test_slices_follow_the_stream_without_reuse() -> None:
    read = CountingRead()
    source = BufferedRandom(read, chunk=64)
    taken = b"".join(source(16) for _ in range(40))
    # Each chunk is handed out whole before the next is read: the output is the stream.
    assert taken == read.stream[: len(taken)]
    assert read.calls == 40 * 16 // 64


def test_a_chunk_too_short_for_the_next_slice_is_not_stitched() -> None:
    read = CountingRead()
    source = BufferedRandom(read, chunk=40)
    first, second, third = source(16), source(16), source(16)
    assert first + second == read.stream[:32]
    assert third == read.stream[40:56]  # the 8-byte tail of the first chunk is skipped


def test_a_request_larger_than_a_chunk_reads_directly() -> None:
    read = CountingRead()
    source = BufferedRandom(read, chunk=32)
    assert len(source(100)) == 100 and read.calls == 1
    assert source(16) == read.stream[100:116]


def test_discard_forgets_the_rest_of_the_chunk() -> None:
    read = CountingRead()
    source = BufferedRandom(read, chunk=64)
    source(16)
    source.discard()
    assert source(16) == read.stream[64:80]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_does_not_repeat_its_parents_bytes() -> None:
    # In a fresh interpreter: forking the test runner itself (threads, xdist) is unsafe.
    code = textwrap.dedent(
        """
        import os
        from kmsgate.server.random_source import BufferedRandom

        source = BufferedRandom()
        source(16)  # the buffer now holds 4 080 bytes not yet handed out
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write_end, source(16))
            os._exit(0)
        os.waitpid(pid, 0)
        child = os.read(read_end, 16)
        parent = source(16)
        print(child.hex(), parent.hex())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    child, parent = result.stdout.split()
    assert len(child) == len(parent) == 32
    assert child != parent
