"""Micro-benchmark of kmsgate.protocol.crypto: pure Python, C tables, AES-NI (run by hand).

Usage: .venv/bin/python bench/bench_crypto.py [--loops N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from kmsgate.protocol import crypto, rijndael

MAX_LOOPS = 1_000_000


def per_call_us(fn: Callable[[], object], loops: int, repeats: int = 5) -> float:
    """Best of `repeats` runs, in microseconds per call (best run is least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / loops * 1e6


def bench(accelerated: bool, loops: int) -> dict[str, float]:
    """Time the v6, v5 and v4 hot paths with the given backend."""
    v6 = crypto.RijndaelCipher(crypto.V6_KEY, crypto.V6_ROUND_KEY_TWEAKS, accelerated=accelerated)
    v5 = crypto.RijndaelCipher(crypto.V5_KEY, accelerated=accelerated)
    v4 = crypto.RijndaelCipher(crypto.V4_KEY, accelerated=accelerated)
    block = bytes(range(16))
    iv = bytes(16)
    data = bytes(range(256))
    mac_input = bytes(range(236)) + b"\x80" + bytes(3)  # what kms_v4_mac feeds the cipher

    def cbc_pair() -> bytes:
        return v6.cbc_decrypt(iv, v6.cbc_encrypt(iv, data))

    def v5_cbc_pair() -> bytes:
        return v5.cbc_decrypt(iv, v5.cbc_encrypt(iv, data))

    def v4_mac() -> bytes:
        return v4.cbc_encrypt(iv, mac_input)[-16:]

    return {
        "v6 block encrypt": per_call_us(lambda: v6.encrypt_block(block), loops),
        "v6 block decrypt": per_call_us(lambda: v6.decrypt_block(block), loops),
        "v6 CBC 256 B enc+dec": per_call_us(cbc_pair, max(1, loops // 16)),
        "v5 CBC 256 B enc+dec": per_call_us(v5_cbc_pair, max(1, loops // 16)),
        "v4 MAC 240 B": per_call_us(v4_mac, max(1, loops // 16)),
    }


def main() -> None:
    """Print µs per operation for each available backend."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loops", type=int, default=20_000, help="block loops (CBC: /16)")
    args = parser.parse_args()
    loops = max(1, min(args.loops, MAX_LOOPS))

    results = {"python": bench(False, loops)}
    accelerator = rijndael._ACCEL
    if accelerator is None:
        print("C extension not available: pure Python only")
    else:
        in_use = accelerator.backend() == "aes-ni"
        try:
            for aesni in (False, True):
                if accelerator.use_aesni(aesni) == aesni:
                    results[f"c {accelerator.backend()}"] = bench(True, loops)
                else:
                    print("this processor has no AES-NI: C tables only")
        finally:
            accelerator.use_aesni(in_use)

    backends = list(results)
    print(f"{'operation':<24}" + "".join(f"{b:>12}" for b in backends) + "   (µs/op)")
    for op in results["python"]:
        row = "".join(f"{results[b][op]:>12.2f}" for b in backends)
        print(f"{op:<24}{row}")


if __name__ == "__main__":
    main()
