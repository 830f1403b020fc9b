"""The strict client's checks on a KMS response (spec §12.8): Check, verify_response."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from kmsgate.protocol import crypto
from kmsgate.protocol.crypto import xor_bytes
from kmsgate.protocol.errors import ProtocolError, VerificationError
from kmsgate.protocol.messages import (
    HWID_SIZE,
    DecodedRequest,
    KmsRequest,
    KmsResponse,
    decode_request,
    message_version,
)


@dataclass(frozen=True, slots=True)
class Check:
    """One verification a strict client made on a response."""

    name: str
    passed: bool
    detail: str = ""
    fatal: bool = True


@dataclass(frozen=True, slots=True)
class VerifiedResponse:
    """A decoded response with every check made on it."""

    response: KmsResponse
    checks: tuple[Check, ...]
    hwid: bytes | None = None

    @property
    def ok(self) -> bool:
        return all(check.passed or not check.fatal for check in self.checks)

    def raise_for_failure(self) -> None:
        """Raise VerificationError for the first failed fatal check."""
        for check in self.checks:
            if check.fatal and not check.passed:
                raise VerificationError(check.name, check.detail)


def _check(name: str, passed: bool, detail: str = "", fatal: bool = True) -> Check:
    """A check result whose detail explains only a failure."""
    return Check(name, passed, "" if passed else detail, fatal)


def _parse_tail(plain: bytes, start: int, count: int) -> bytes:
    if len(plain) < start + count:
        raise VerificationError("size", f"plaintext ends before byte {start + count}")
    return plain[start : start + count]


def sent_request(request: KmsRequest, request_message: bytes) -> DecodedRequest:
    """What the client already knows of its own request: no need to decrypt it again."""
    major = request.major_version
    salt = None
    if major in (5, 6):
        salt = crypto.cipher_for_version(major).decrypt_block(request_message[4:20])
    return DecodedRequest(request, major, request_message, salt)


def verify_response(
    request_message: bytes, response_message: bytes, *, sent: DecodedRequest | None = None
) -> VerifiedResponse:
    """Decode a response message and run every check of spec §12.8 against our request.

    `sent` (from `sent_request`) spares decrypting our own request again.
    """
    if sent is None:
        sent = decode_request(request_message)
    major, minor = message_version(response_message)
    if major == 4:
        response, base_len = KmsResponse.from_bytes(response_message)
        mac = _parse_tail(response_message, base_len, 16)
        checks = [
            _check("mac", hmac.compare_digest(crypto.kms_v4_mac(response_message[:base_len]), mac)),
            _check(
                "size",
                len(response_message) == base_len + 16,
                f"message is {len(response_message)} bytes, expected {base_len + 16}",
                fatal=False,
            ),
        ]
        return VerifiedResponse(response, _common_checks(sent, major, minor, response, checks))
    if major not in (5, 6):
        raise VerificationError("version", f"response has unsupported version {major}.{minor}")
    body = response_message[4:]
    if not body or len(body) % 16:
        raise VerificationError("decryption", f"ciphertext of {len(body)} bytes is not blocks")
    cipher = crypto.cipher_for_version(major)
    try:
        plain = crypto.pkcs7_unpad(cipher.cbc_decrypt(bytes(16), body))
    except ProtocolError as exc:
        raise VerificationError("decryption", str(exc)) from exc
    response_iv = plain[:16]
    response, base_len = KmsResponse.from_bytes(plain[16:])
    at = 16 + base_len
    random_xor_salt = _parse_tail(plain, at, 16)
    digest = _parse_tail(plain, at + 16, 32)
    salt = sent.salt or b""
    checks = [
        _check("hash", hmac.compare_digest(crypto.sha256(xor_bytes(random_xor_salt, salt)), digest))
    ]
    hwid = None
    if major == 5:
        checks.append(_check("ivs", response_iv == salt, "response IV differs from request salt"))
        expected = at + 48
    else:
        hwid = _parse_tail(plain, at + 48, HWID_SIZE)
        xor_salts = _parse_tail(plain, at + 56, 16)
        mac = _parse_tail(plain, at + 72, 16)
        checks.append(_check("ivs", xor_salts == salt, "XorSalts differ from the request salt"))
        checks.append(
            _check("iv_not_suspicious", response_iv != salt, "response IV equals salt", fatal=False)
        )
        signed = plain[: at + 72]
        hmac_ok = any(
            hmac.compare_digest(crypto.v6_hmac(response.response_time, signed, offset), mac)
            for offset in (0, -1, 1)
        )
        checks.append(_check("hmac", hmac_ok, "HMAC matches no time slot"))
        expected = at + 88
    padded = 4 + expected + 16 - expected % 16
    checks.append(
        _check(
            "size",
            len(response_message) == padded,
            f"message is {len(response_message)} bytes, expected {padded}",
            fatal=False,
        )
    )
    return VerifiedResponse(response, _common_checks(sent, major, minor, response, checks), hwid)


def _common_checks(
    sent: DecodedRequest, major: int, minor: int, response: KmsResponse, checks: list[Check]
) -> tuple[Check, ...]:
    request = sent.request
    version_ok = (
        (major, minor)
        == (response.major_version, response.minor_version)
        == (request.major_version, request.minor_version)
    )
    return (
        _check("version", version_ok, f"response version {major}.{minor}"),
        _check(
            "time_stamp", response.response_time == request.request_time, "not the request time"
        ),
        _check(
            "client_machine_id",
            response.client_machine_id == request.client_machine_id,
            f"response CMID {response.client_machine_id}",
        ),
        # Windows refuses to activate below its N-count policy (0xC004F038).
        _check(
            "client_count",
            response.current_client_count >= request.required_client_count,
            f"count {response.current_client_count} below N {request.required_client_count}",
        ),
        *checks,
    )
