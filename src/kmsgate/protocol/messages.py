"""KMS request/response messages (v4, v5, v6): the dataclasses and their codecs."""

from __future__ import annotations

import codecs
import hmac
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kmsgate.protocol import crypto, wire
from kmsgate.protocol.crypto import xor_bytes
from kmsgate.protocol.errors import KmsMessageError, LocalProtocolError, VerificationError
from kmsgate.uuids import UuidCache, uuid_bytes_le, uuid_from_bytes, uuid_from_bytes_le

RandomBytes = Callable[[int], bytes]

SUPPORTED_VERSIONS: Final = (4, 5, 6)
BASE_REQUEST_SIZE: Final = 236
V4_REQUEST_SIZE: Final = 252
V5_REQUEST_SIZE: Final = 260
MACHINE_NAME_UNITS: Final = 64
MAX_EPID_BYTES: Final = 128
HWID_SIZE: Final = 8

_BASE_REQUEST: Final = struct.Struct("<HHIII16s16s16s16sIQ16s128s")
_RESPONSE_TAIL: Final = struct.Struct("<16sQIII")
_VERSION: Final = struct.Struct("<HH")
NIL_UUID: Final = uuid.UUID(int=0)

# Application, SKU and KMS ids (and the usual nil previous CMID) repeat across a fleet.
_shared_uuids: Final = UuidCache(4096, little_endian=True)
# The C layout of a base request (protocol/wire.py), or None.
_base_request: Final = wire.base_request
# A CMID is new in nearly every request: its UUID built in C when the extension is there.
_cmid_uuid: Final = wire.uuid_from_bytes or uuid_from_bytes
# A UUID's bytes_le (the wire's GUID order), read in C when the extension is there.
_guid_le: Final = wire.uuid_bytes_le or uuid_bytes_le
# A response's base message in one C call, or None (then the structs below build it).
_response_base: Final = wire.response_base


@dataclass(init=False, unsafe_hash=True, slots=True)
class KmsRequest:
    """The 236-byte base request a KMS client sends (spec §9)."""

    major_version: Final[int]
    application_id: Final[uuid.UUID]
    sku_id: Final[uuid.UUID]
    kms_counted_id: Final[uuid.UUID]
    client_machine_id: Final[uuid.UUID]
    required_client_count: Final[int]
    request_time: Final[int]
    machine_name: Final[str]
    minor_version: Final[int]
    is_client_vm: Final[int]
    license_status: Final[int]
    grace_time: Final[int]
    previous_client_machine_id: Final[uuid.UUID]

    def __init__(
        self,
        major_version: int,
        application_id: uuid.UUID,
        sku_id: uuid.UUID,
        kms_counted_id: uuid.UUID,
        client_machine_id: uuid.UUID,
        required_client_count: int,
        request_time: int,
        machine_name: str,
        minor_version: int = 0,
        is_client_vm: int = 0,
        license_status: int = 2,
        grace_time: int = 43200,
        previous_client_machine_id: uuid.UUID = NIL_UUID,
    ) -> None:
        self.major_version = major_version
        self.application_id = application_id
        self.sku_id = sku_id
        self.kms_counted_id = kms_counted_id
        self.client_machine_id = client_machine_id
        self.required_client_count = required_client_count
        self.request_time = request_time
        self.machine_name = machine_name
        self.minor_version = minor_version
        self.is_client_vm = is_client_vm
        self.license_status = license_status
        self.grace_time = grace_time
        self.previous_client_machine_id = previous_client_machine_id

    def to_bytes(self) -> bytes:
        """Encode as the 236-byte base request."""
        name = self.machine_name.encode("utf-16-le")
        if len(name) >= 2 * MACHINE_NAME_UNITS:
            raise LocalProtocolError("machine name must fit 63 UTF-16 code units")
        return _BASE_REQUEST.pack(
            self.minor_version,
            self.major_version,
            self.is_client_vm,
            self.license_status,
            self.grace_time,
            _guid_le(self.application_id),
            _guid_le(self.sku_id),
            _guid_le(self.kms_counted_id),
            _guid_le(self.client_machine_id),
            self.required_client_count,
            self.request_time,
            _guid_le(self.previous_client_machine_id),
            name,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KmsRequest:
        """Decode a 236-byte base request (a KmsRequest, whatever `cls`)."""
        fields = _base_request(data) if _base_request is not None else None
        if fields is not None:
            (minor, major, vm, status, grace, app, sku, kms, cmid, count, when, prev, name) = fields
            # The class by name, not `cls`: compiled, a direct constructor call; `cls(...)` is
            # a generic call that parses 13 arguments (~1 900 instructions a request).
            return KmsRequest(
                major,
                _shared_uuids.get(app),
                _shared_uuids.get(sku),
                _shared_uuids.get(kms),
                _cmid_uuid(cmid),  # big-endian already
                count,
                when,
                name,
                minor,
                vm,
                status,
                grace,
                _shared_uuids.get(prev),
            )
        if len(data) < BASE_REQUEST_SIZE:
            raise KmsMessageError(f"base request needs {BASE_REQUEST_SIZE} bytes, got {len(data)}")
        (minor, major, vm, status, grace, app, sku, kms, cmid, count, when, prev, raw_name) = (
            _BASE_REQUEST.unpack_from(data)
        )
        # Positional, in field order: a compiled call binds them directly.
        return KmsRequest(
            major,
            _shared_uuids.get(app),
            _shared_uuids.get(sku),
            _shared_uuids.get(kms),
            uuid_from_bytes_le(cmid),
            count,
            when,
            _utf16z(raw_name),
            minor,
            vm,
            status,
            grace,
            _shared_uuids.get(prev),
        )


@dataclass(init=False, unsafe_hash=True, slots=True)
class KmsResponse:
    """The base response a KMS host returns (spec §10)."""

    major_version: Final[int]
    epid: Final[str]
    client_machine_id: Final[uuid.UUID]
    response_time: Final[int]
    current_client_count: Final[int]
    activation_interval: Final[int]
    renewal_interval: Final[int]
    minor_version: Final[int]

    def __init__(
        self,
        major_version: int,
        epid: str,
        client_machine_id: uuid.UUID,
        response_time: int,
        current_client_count: int,
        activation_interval: int,
        renewal_interval: int,
        minor_version: int = 0,
    ) -> None:
        self.major_version = major_version
        self.epid = epid
        self.client_machine_id = client_machine_id
        self.response_time = response_time
        self.current_client_count = current_client_count
        self.activation_interval = activation_interval
        self.renewal_interval = renewal_interval
        self.minor_version = minor_version

    def to_bytes(self) -> bytes:
        """Encode as 44 + P bytes, P being the ePID's UTF-16 size with its NUL."""
        if _response_base is not None:
            encoded = _response_base(
                self.minor_version,
                self.major_version,
                _epid_field(self.epid),
                self.client_machine_id,
                self.response_time,
                self.current_client_count,
                self.activation_interval,
                self.renewal_interval,
            )
            if encoded is not None:
                return encoded
        return (
            _VERSION.pack(self.minor_version, self.major_version)
            + _epid_field(self.epid)
            + _RESPONSE_TAIL.pack(
                _guid_le(self.client_machine_id),
                self.response_time,
                self.current_client_count,
                self.activation_interval,
                self.renewal_interval,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[KmsResponse, int]:
        """Decode a base response; return it and its length (44 + P)."""
        if len(data) < 8:
            raise VerificationError("size", "response too short for its version and ePID size")
        minor, major = _VERSION.unpack_from(data)
        (pid_size,) = struct.unpack_from("<I", data, 4)
        if pid_size > MAX_EPID_BYTES or pid_size % 2 or pid_size < 2:
            raise VerificationError("pid_length", f"ePID size {pid_size} is not valid")
        end = 8 + pid_size + _RESPONSE_TAIL.size
        if len(data) < end:
            raise VerificationError("size", f"base response needs {end} bytes, got {len(data)}")
        raw_epid = data[8 : 8 + pid_size]
        units = [raw_epid[i : i + 2] for i in range(0, pid_size, 2)]
        if units[-1] != b"\x00\x00" or b"\x00\x00" in units[:-1]:
            raise VerificationError("pid_length", "ePID is not exactly NUL-terminated")
        cmid, when, count, activation, renewal = _RESPONSE_TAIL.unpack_from(data, 8 + pid_size)
        response = cls(
            major_version=major,
            minor_version=minor,
            epid=raw_epid[:-2].decode("utf-16-le", "replace"),
            client_machine_id=uuid_from_bytes_le(cmid),
            response_time=when,
            current_client_count=count,
            activation_interval=activation,
            renewal_interval=renewal,
        )
        return response, end


# A host answers with a handful of ePIDs: each is encoded once. A plain dict, not
# functools.lru_cache: its call cost ~470 instructions a request more than a dict lookup.
_EPID_FIELDS: Final[dict[str, bytes]] = {}
_EPID_FIELDS_LIMIT: Final = 256


def _epid_field(epid: str) -> bytes:
    """The ePID's size then its NUL-terminated UTF-16LE text."""
    field = _EPID_FIELDS.get(epid)
    if field is None:
        encoded = epid.encode("utf-16-le") + b"\x00\x00"
        if len(encoded) > MAX_EPID_BYTES:
            raise LocalProtocolError(f"ePID of {len(encoded)} bytes exceeds {MAX_EPID_BYTES}")
        if len(_EPID_FIELDS) >= _EPID_FIELDS_LIMIT:  # clients' own ePIDs (a relay): bounded
            _EPID_FIELDS.clear()
        field = _EPID_FIELDS[epid] = struct.pack("<I", len(encoded)) + encoded
    return field


_utf16le_decode: Final = codecs.utf_16_le_decode


def _utf16z(raw: bytes) -> str:
    """UTF-16LE text up to its first NUL code unit (a zero byte pair at an even offset)."""
    end = raw.find(b"\x00\x00")
    while end > 0 and end % 2:
        end = raw.find(b"\x00\x00", end + 1)
    # The codec itself: bytes.decode("utf-16-le") looks the codec up by name on every call,
    # which costs three times the decoding of a machine name.
    return _utf16le_decode(raw[:end] if end >= 0 else raw, "replace", True)[0]


@dataclass(init=False, unsafe_hash=True, slots=True)
class DecodedRequest:
    """A request message as a host sees it: fields plus what the reply needs."""

    request: Final[KmsRequest]
    major_version: Final[int]
    message: Final[bytes]
    salt: Final[bytes | None]
    mac_valid: Final[bool]

    def __init__(
        self,
        request: KmsRequest,
        major_version: int,
        message: bytes,
        salt: bytes | None = None,
        mac_valid: bool = True,
    ) -> None:
        self.request = request
        self.major_version = major_version
        self.message = message
        self.salt = salt
        self.mac_valid = mac_valid


def message_version(message: bytes) -> tuple[int, int]:
    """The (major, minor) version in a KMS message's first 4 bytes."""
    if len(message) < 4:
        raise KmsMessageError(f"KMS message of {len(message)} bytes has no version")
    # Two little-endian u16s read byte by byte: no struct call and tuple for every request.
    return message[2] | message[3] << 8, message[0] | message[1] << 8


def decode_request(message: bytes) -> DecodedRequest:
    """Decode (and for v5/v6 decrypt) a request message; invalid ones raise KmsMessageError."""
    major, minor = message_version(message)
    if major not in SUPPORTED_VERSIONS or minor != 0:
        raise KmsMessageError(f"unsupported KMS protocol version {major}.{minor}")
    if major == 4:
        if len(message) < V4_REQUEST_SIZE:
            raise KmsMessageError(f"v4 request needs {V4_REQUEST_SIZE} bytes, got {len(message)}")
        base = message[:BASE_REQUEST_SIZE]
        mac = message[BASE_REQUEST_SIZE:V4_REQUEST_SIZE]
        valid = hmac.compare_digest(crypto.kms_v4_mac(base), mac)
        return DecodedRequest(KmsRequest.from_bytes(base), 4, message, None, valid)
    if len(message) < V5_REQUEST_SIZE:
        raise KmsMessageError(f"v{major} request needs {V5_REQUEST_SIZE} bytes, got {len(message)}")
    cipher = crypto.cipher_for_version(major)
    # One CBC pass with a zero IV over IV+ciphertext yields D(IV) (the salt) then the plaintext.
    plain = cipher.cbc_decrypt(bytes(16), message[4:V5_REQUEST_SIZE])
    salt, body = plain[:16], plain[16:]
    if body[BASE_REQUEST_SIZE:] != b"\x04\x04\x04\x04":
        raise KmsMessageError(f"v{major} request does not decrypt to valid padding")
    request = KmsRequest.from_bytes(body)
    if (request.major_version, request.minor_version) != (major, minor):
        raise KmsMessageError(
            f"inner version {request.major_version}.{request.minor_version} "
            f"differs from outer {major}.{minor}"
        )
    return DecodedRequest(request, major, message, salt)


def encode_request(request: KmsRequest, iv: bytes = bytes(16)) -> bytes:
    """Encode a request message; v5/v6 are encrypted under the client-chosen `iv`."""
    base = request.to_bytes()
    version = _VERSION.pack(request.minor_version, request.major_version)
    if request.major_version == 4:
        return base + crypto.kms_v4_mac(base)
    if len(iv) != 16:
        raise LocalProtocolError("a v5/v6 request IV is 16 bytes")
    cipher = crypto.cipher_for_version(request.major_version)
    return version + iv + cipher.cbc_encrypt(iv, crypto.pkcs7_pad(base))


def encode_response(
    decoded: DecodedRequest,
    response: KmsResponse,
    *,
    random_bytes: RandomBytes,
    hwid: bytes = bytes(HWID_SIZE),
) -> bytes:
    """Build the response message for `decoded` (MAC, or encryption with fresh salts)."""
    base = response.to_bytes()
    major = decoded.major_version
    if major == 4:
        return base + crypto.kms_v4_mac(base)
    salt = decoded.salt
    if salt is None:
        raise LocalProtocolError("v5/v6 responses need the request's decrypted salt")
    if major == 5:
        rnd = random_bytes(16)
        head, tail = salt, b""
    else:
        if len(hwid) != HWID_SIZE:
            raise LocalProtocolError("HWID is 8 bytes")
        # One draw for both: the random source is an interpreted call per draw.
        fresh = random_bytes(32)
        rnd, head = fresh[:16], fresh[16:]
        if head == salt:  # a v6 client flags IV == salt as an emulator
            head = xor_bytes(head, b"\x01" + bytes(15))
        tail = hwid + salt
    sealed = crypto.seal_response(major, head, base, rnd, salt, tail, response.response_time)
    return decoded.message[:4] + sealed
