/*
 * kmsgate.protocol._wire: the common KMS exchange's byte layout, in C.
 *
 * Each function mirrors a pure-Python reference (rpc, ndr, messages) for the common case
 * and returns None for anything else, so the reference alone decides every refusal and
 * every error. What it returns equals what the reference builds, byte for byte
 * (tests/protocol/test_wire.py compares them on the captured vectors and on fuzzed input).
 * The Python path held objects for each header, array and field a request passes through:
 * about 2.5 µs of a kept-alive request's 8 in the serving process.
 */
#define PY_SSIZE_T_CLEAN
/* Stable ABI of CPython 3.11, as _cipher.c: one abi3 build serves every later version. */
#define Py_LIMITED_API 0x030B0000
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 16
#define REQUEST_HEAD (HEADER_SIZE + 8) /* header, alloc_hint, context id, opnum */
#define RESPONSE_HEAD (HEADER_SIZE + 8) /* header, alloc_hint, context id, cancel count, pad */
#define PFC_FIRST_FRAG 0x01
#define PFC_LAST_FRAG 0x02
#define PFC_OBJECT_UUID 0x80
#define PTYPE_REQUEST 0
#define PTYPE_RESPONSE 2
#define DREP_LITTLE_ENDIAN 0x10
#define MAX_FRAG_LENGTH 0xFFFF
#define MAX_KMS_MESSAGE 4096 /* ndr.MAX_KMS_MESSAGE */
#define RESPONSE_REFERENT 0x00020000u /* ndr.RESPONSE_REFERENT */
#define BASE_REQUEST_SIZE 236
#define MACHINE_NAME_AT 108
#define MACHINE_NAME_SIZE 128
#define GUID_SIZE 16

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)v);
    put16(p + 2, (uint16_t)(v >> 16));
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

/* A GUID's bytes_le <-> bytes (the UUID's big-endian order): the first three fields swap. */
static void swap_guid(const uint8_t *in, uint8_t *out)
{
    static const uint8_t order[GUID_SIZE] = {3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15};
    for (int i = 0; i < GUID_SIZE; i++)
        out[i] = in[order[i]];
}

static int bytes_argument(PyObject *arg, const char *what, const uint8_t **data, Py_ssize_t *size)
{
    char *raw;
    if (!PyBytes_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes", what);
        return 0;
    }
    if (PyBytes_AsStringAndSize(arg, &raw, size) < 0)
        return 0;
    *data = (const uint8_t *)raw;
    return 1;
}

static int argument_count(Py_ssize_t nargs, Py_ssize_t wanted, const char *name)
{
    if (nargs == wanted)
        return 1;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", name, wanted, nargs);
    return 0;
}

/* A tuple that steals its items; NULL (and every item released) if one of them is NULL. */
static PyObject *tuple_of(Py_ssize_t count, PyObject **items)
{
    PyObject *tuple = NULL;
    for (Py_ssize_t i = 0; i < count; i++)
        if (items[i] == NULL)
            goto failed;
    if ((tuple = PyTuple_New(count)) == NULL)
        goto failed;
    for (Py_ssize_t i = 0; i < count; i++)
        PyTuple_SetItem(tuple, i, items[i]); /* steals, cannot fail on a new tuple */
    return tuple;
failed:
    for (Py_ssize_t i = 0; i < count; i++)
        Py_XDECREF(items[i]);
    return NULL;
}

/* rpc.checked_frag_length of a PDU's first bytes (bytes or bytearray) that pass its checks. */
static PyObject *wire_frag_length(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *p = (const uint8_t *)view.buf;
    long length = -1;
    if (view.len >= HEADER_SIZE && p[0] == 5 && p[1] <= 1 && p[4] == DREP_LITTLE_ENDIAN &&
        get16(p + 8) >= HEADER_SIZE)
        length = get16(p + 8);
    PyBuffer_Release(&view);
    if (length < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(length);
}

/*
 * rpc.decode_request_pdu, FragmentReassembler.add and ndr.unwrap_request for a whole
 * single-fragment request, without an object UUID, for opnum 0 on a bound context.
 */
static PyObject *wire_request_message(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    const uint8_t *p;
    Py_ssize_t size;
    if (!argument_count(nargs, 3, "request_message") || !bytes_argument(args[0], "pdu", &p, &size))
        return NULL;
    long ndr32_context = PyLong_AsLong(args[1]), ndr64_context = PyLong_AsLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    /* rpc._check_header and _check_whole: version 5.0 or 5.1, little-endian ASCII IEEE. */
    if (size < REQUEST_HEAD || p[0] != 5 || p[1] > 1 || p[2] != PTYPE_REQUEST ||
        p[4] != DREP_LITTLE_ENDIAN || get16(p + 8) != size || get16(p + 10) != 0)
        Py_RETURN_NONE;
    uint8_t flags = p[3];
    if ((flags & (PFC_FIRST_FRAG | PFC_LAST_FRAG)) != (PFC_FIRST_FRAG | PFC_LAST_FRAG) ||
        flags & PFC_OBJECT_UUID)
        Py_RETURN_NONE;
    uint32_t call_id = get32(p + 12);
    uint16_t context_id = get16(p + 20), opnum = get16(p + 22);
    int wide; /* the session's order: the NDR32 context first */
    if (context_id == ndr32_context)
        wide = 0;
    else if (context_id == ndr64_context)
        wide = 1;
    else
        Py_RETURN_NONE;
    if (opnum != 0)
        Py_RETURN_NONE;
    const uint8_t *stub = p + REQUEST_HEAD;
    uint64_t stub_len = (uint64_t)(size - REQUEST_HEAD), word = wide ? 8 : 4;
    if (stub_len < 2 * word)
        Py_RETURN_NONE;
    uint64_t length = wide ? get64(stub) : get32(stub);
    uint64_t conformance = wide ? get64(stub + word) : get32(stub + word);
    if (length != conformance || length > stub_len - 2 * word || length > MAX_KMS_MESSAGE)
        Py_RETURN_NONE;
    PyObject *ndr64 = wide ? Py_True : Py_False;
    Py_INCREF(ndr64);
    PyObject *items[4] = {
        PyLong_FromUnsignedLong(call_id),
        PyLong_FromLong(context_id),
        ndr64,
        PyBytes_FromStringAndSize((const char *)stub + 2 * word, (Py_ssize_t)length),
    };
    return tuple_of(4, items);
}

/*
 * messages.KmsRequest.from_bytes's fields: the struct's, but the client machine id in the
 * UUID's big-endian byte order and the machine name decoded up to its first NUL code unit.
 */
static PyObject *wire_base_request(PyObject *self, PyObject *arg)
{
    (void)self;
    const uint8_t *p;
    Py_ssize_t size;
    if (!bytes_argument(arg, "data", &p, &size))
        return NULL;
    if (size < BASE_REQUEST_SIZE)
        Py_RETURN_NONE;
    uint8_t cmid[GUID_SIZE];
    swap_guid(p + 64, cmid);
    const uint8_t *name = p + MACHINE_NAME_AT;
    Py_ssize_t name_size = MACHINE_NAME_SIZE;
    for (Py_ssize_t at = 0; at < MACHINE_NAME_SIZE; at += 2)
        if (name[at] == 0 && name[at + 1] == 0) {
            name_size = at;
            break;
        }
    int little_endian = -1;
    PyObject *items[13] = {
        PyLong_FromLong(get16(p)),
        PyLong_FromLong(get16(p + 2)),
        PyLong_FromUnsignedLong(get32(p + 4)),
        PyLong_FromUnsignedLong(get32(p + 8)),
        PyLong_FromUnsignedLong(get32(p + 12)),
        PyBytes_FromStringAndSize((const char *)p + 16, GUID_SIZE),
        PyBytes_FromStringAndSize((const char *)p + 32, GUID_SIZE),
        PyBytes_FromStringAndSize((const char *)p + 48, GUID_SIZE),
        PyBytes_FromStringAndSize((const char *)cmid, GUID_SIZE),
        PyLong_FromUnsignedLong(get32(p + 80)),
        PyLong_FromUnsignedLongLong(get64(p + 84)),
        PyBytes_FromStringAndSize((const char *)p + 92, GUID_SIZE),
        PyUnicode_DecodeUTF16((const char *)name, name_size, "replace", &little_endian),
    };
    return tuple_of(13, items);
}

/* A bytes argument of exactly a GUID's 16 bytes, or NULL with the error set. */
static const uint8_t *guid_argument(PyObject *arg, const char *what, const char *wrong_size)
{
    const uint8_t *p;
    Py_ssize_t size;
    if (!bytes_argument(arg, what, &p, &size))
        return NULL;
    if (size != GUID_SIZE) {
        PyErr_SetString(PyExc_ValueError, wrong_size);
        return NULL;
    }
    return p;
}

/*
 * uuid.UUID(bytes=raw) built as uuids.uuid_from_int builds it: the instance allocated and
 * its two slots set through their own descriptors, without UUID.__init__'s argument checks.
 * From Python that takes object.__new__ and int.from_bytes, each a generic call: ~0.8 µs
 * of a kept-alive request's ~30, for the CMID alone. Set up at import (uuid_setup); absent
 * from the module when the uuid module's layout is not the one expected.
 */
static PyObject *uuid_class, *int_member, *safe_member, *safe_unknown, *sixty_four;
static allocfunc uuid_alloc;
static descrsetfunc set_int, set_safe;
static descrgetfunc get_int;

static PyObject *wire_uuid_from_bytes(PyObject *self, PyObject *arg)
{
    (void)self;
    const uint8_t *p = guid_argument(arg, "raw", "bytes is not a 16-char string");
    if (p == NULL)
        return NULL;
    uint64_t high = 0, low = 0;
    for (int at = 0; at < 8; at++) {
        high = high << 8 | p[at];
        low = low << 8 | p[at + 8];
    }
    PyObject *number = PyLong_FromUnsignedLongLong(low);
    if (number != NULL && high != 0) {
        PyObject *top = PyLong_FromUnsignedLongLong(high), *shifted = NULL;
        if (top != NULL)
            shifted = PyNumber_Lshift(top, sixty_four);
        Py_XDECREF(top);
        PyObject *whole = shifted == NULL ? NULL : PyNumber_Or(shifted, number);
        Py_XDECREF(shifted);
        Py_DECREF(number);
        number = whole;
    }
    if (number == NULL)
        return NULL;
    PyObject *value = uuid_alloc((PyTypeObject *)uuid_class, 0);
    if (value == NULL || set_int(int_member, value, number) < 0 ||
        set_safe(safe_member, value, safe_unknown) < 0) {
        Py_XDECREF(value);
        value = NULL;
    }
    Py_DECREF(number);
    return value;
}

static uint64_t top_half(PyObject *top)
{
#if ULONG_MAX == UINT64_MAX
    return PyLong_AsUnsignedLong(top);
#else
    return PyLong_AsUnsignedLongLong(top);
#endif
}

/*
 * A uuid.UUID's 128-bit value into out[16], big-endian: UUID.bytes without int.to_bytes's
 * generic method call (~700 instructions for a response's CMID, against ~1 000). -1 with an
 * error set for what is not a UUID, or a value outside 0 .. 2**128-1 (the slot set around
 * __init__).
 */
static int uuid_value(PyObject *value, uint8_t *out)
{
    if (!PyObject_TypeCheck(value, (PyTypeObject *)uuid_class)) {
        PyErr_SetString(PyExc_TypeError, "a uuid.UUID is required");
        return -1;
    }
    PyObject *number = get_int(int_member, value, uuid_class);
    if (number == NULL)
        return -1;
    int ok = -1;
    if (PyLong_Check(number)) {
        uint64_t low = PyLong_AsUnsignedLongLongMask(number);
        PyObject *top = PyNumber_Rshift(number, sixty_four);
        /* Negative or past 128 bits: the top part raises OverflowError here. (Not
           PyLong_AsUnsignedLongLong: on 3.11 it goes through a byte array, 3x the cost.) */
        uint64_t high = top == NULL ? 0 : top_half(top);
        Py_XDECREF(top);
        if (top != NULL && !(high == (uint64_t)-1 && PyErr_Occurred()) &&
            !(low == (uint64_t)-1 && PyErr_Occurred())) {
            for (int at = 7; at >= 0; at--) {
                out[at] = (uint8_t)high;
                out[at + 8] = (uint8_t)low;
                high >>= 8;
                low >>= 8;
            }
            ok = 0;
        } else if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_SetString(PyExc_ValueError, "a UUID's int is 0 .. 2**128-1");
        }
    } else {
        PyErr_SetString(PyExc_TypeError, "a UUID's int is an int");
    }
    Py_DECREF(number);
    return ok;
}

static PyObject *wire_uuid_bytes(PyObject *self, PyObject *arg)
{
    (void)self;
    uint8_t out[GUID_SIZE];
    if (uuid_value(arg, out) < 0)
        return NULL;
    return PyBytes_FromStringAndSize((const char *)out, GUID_SIZE);
}

static PyObject *wire_uuid_bytes_le(PyObject *self, PyObject *arg)
{
    (void)self;
    uint8_t raw[GUID_SIZE], out[GUID_SIZE];
    if (uuid_value(arg, raw) < 0)
        return NULL;
    swap_guid(raw, out);
    return PyBytes_FromStringAndSize((const char *)out, GUID_SIZE);
}

/* A slot's setter, from the class's own member descriptor of that name; NULL if not one. */
static descrsetfunc member_setter(PyObject *attributes, const char *name, PyObject **member)
{
    *member = PyMapping_GetItemString(attributes, name);
    if (*member == NULL)
        return NULL;
    PyObject *kind = PyObject_GetAttrString(*member, "__class__");
    PyObject *kind_name = kind == NULL ? NULL : PyObject_GetAttrString(kind, "__name__");
    int is_member = kind_name != NULL && PyUnicode_CompareWithASCIIString(kind_name,
                                                                         "member_descriptor") == 0;
    Py_XDECREF(kind_name);
    Py_XDECREF(kind);
    return is_member ? (descrsetfunc)PyType_GetSlot(Py_TYPE(*member), Py_tp_descr_set) : NULL;
}

static int uuid_setup(void)
{
    PyObject *module = PyImport_ImportModule("uuid");
    if (module == NULL)
        return -1;
    uuid_class = PyObject_GetAttrString(module, "UUID");
    PyObject *safety = PyObject_GetAttrString(module, "SafeUUID");
    Py_DECREF(module);
    if (uuid_class == NULL || safety == NULL || !PyType_Check(uuid_class)) {
        Py_XDECREF(safety);
        return -1;
    }
    safe_unknown = PyObject_GetAttrString(safety, "unknown");
    Py_DECREF(safety);
    PyObject *attributes = PyObject_GetAttrString(uuid_class, "__dict__");
    if (safe_unknown == NULL || attributes == NULL) {
        Py_XDECREF(attributes);
        return -1;
    }
    set_int = member_setter(attributes, "int", &int_member);
    set_safe = set_int == NULL ? NULL : member_setter(attributes, "is_safe", &safe_member);
    Py_DECREF(attributes);
    get_int = set_int == NULL ? NULL
                              : (descrgetfunc)PyType_GetSlot(Py_TYPE(int_member), Py_tp_descr_get);
    uuid_alloc = (allocfunc)PyType_GetSlot((PyTypeObject *)uuid_class, Py_tp_alloc);
    sixty_four = PyLong_FromLong(64);
    return set_int != NULL && set_safe != NULL && get_int != NULL && uuid_alloc != NULL &&
                   sixty_four != NULL
               ? 0
               : -1;
}

/*
 * rpc.encode_response_pdu(call_id, context_id, ndr.wrap_response(message, syntax)): the
 * response PDU carrying a KMS response message; None where the reference would refuse.
 */
static PyObject *wire_response_pdu(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    const uint8_t *message;
    Py_ssize_t message_len;
    if (!argument_count(nargs, 4, "response_pdu") ||
        !bytes_argument(args[3], "message", &message, &message_len))
        return NULL;
    unsigned long long call_id = PyLong_AsUnsignedLongLong(args[0]);
    unsigned long long context_id = PyLong_AsUnsignedLongLong(args[1]);
    int wide = PyObject_IsTrue(args[2]);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t word = wide ? 8 : 4;
    Py_ssize_t body = 3 * word + message_len + 4, pad = -body & 3;
    Py_ssize_t total = RESPONSE_HEAD + body + pad;
    if (call_id > 0xFFFFFFFFu || context_id > 0xFFFFu || total > MAX_FRAG_LENGTH)
        Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AsString(out);
    memset(o, 0, (size_t)total);
    o[0] = 5;
    o[2] = PTYPE_RESPONSE;
    o[3] = PFC_FIRST_FRAG | PFC_LAST_FRAG;
    o[4] = DREP_LITTLE_ENDIAN;
    put16(o + 8, (uint16_t)total);
    put32(o + 12, (uint32_t)call_id);
    put32(o + 16, (uint32_t)(body + pad)); /* alloc_hint: the stub's length */
    put16(o + 20, (uint16_t)context_id);
    uint8_t *s = o + RESPONSE_HEAD;
    if (wide) {
        put64(s, (uint64_t)message_len);
        put64(s + 8, RESPONSE_REFERENT);
        put64(s + 16, (uint64_t)message_len);
    } else {
        put32(s, (uint32_t)message_len);
        put32(s + 4, RESPONSE_REFERENT);
        put32(s + 8, (uint32_t)message_len);
    }
    memcpy(s + 3 * word, message, (size_t)message_len);
    /* The return value (0: success) and the padding stay zero. */
    return out;
}

/* An int the reference packs as unsigned (struct's H, I or Q) within 0..max: 1 and *out set,
 * else 0 with no error (the reference then raises its own). Not PyLong_AsUnsignedLongLong:
 * on 3.11 it goes through a byte array for any value past 30 bits (a FILETIME). */
static int unsigned_field(PyObject *arg, unsigned long long max, unsigned long long *out)
{
    if (!PyLong_Check(arg))
        return 0;
#if ULONG_MAX >= 0xFFFFFFFFFFFFFFFFULL
    unsigned long long value = PyLong_AsUnsignedLong(arg);
#else
    unsigned long long value = PyLong_AsUnsignedLongLong(arg);
#endif
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear(); /* negative or past 64 bits */
        return 0;
    }
    *out = value;
    return value <= max;
}

/*
 * messages.KmsResponse.to_bytes (version, ePID field, CMID in GUID order, time, three counts)
 * in one buffer, where Python packs two structs, reads the UUID's bytes_le and joins three
 * parts. None for a field the reference's struct refuses, or a CMID that is not a UUID.
 */
static PyObject *wire_response_base(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    const uint8_t *epid;
    Py_ssize_t epid_len;
    if (!argument_count(nargs, 8, "response_base") ||
        !bytes_argument(args[2], "epid field", &epid, &epid_len))
        return NULL;
    unsigned long long minor, major, when, count, activation, renewal;
    if (!unsigned_field(args[0], 0xFFFF, &minor) || !unsigned_field(args[1], 0xFFFF, &major) ||
        !PyObject_TypeCheck(args[3], (PyTypeObject *)uuid_class) ||
        !unsigned_field(args[4], 0xFFFFFFFFFFFFFFFFULL, &when) ||
        !unsigned_field(args[5], 0xFFFFFFFF, &count) ||
        !unsigned_field(args[6], 0xFFFFFFFF, &activation) ||
        !unsigned_field(args[7], 0xFFFFFFFF, &renewal))
        Py_RETURN_NONE;
    uint8_t cmid[GUID_SIZE];
    if (uuid_value(args[3], cmid) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, 4 + epid_len + GUID_SIZE + 20);
    if (out == NULL)
        return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AsString(out);
    put16(o, (uint16_t)minor);
    put16(o + 2, (uint16_t)major);
    memcpy(o + 4, epid, (size_t)epid_len);
    o += 4 + epid_len;
    swap_guid(cmid, o);
    put64(o + GUID_SIZE, (uint64_t)when);
    put32(o + GUID_SIZE + 8, (uint32_t)count);
    put32(o + GUID_SIZE + 12, (uint32_t)activation);
    put32(o + GUID_SIZE + 16, (uint32_t)renewal);
    return out;
}

static PyMethodDef wire_methods[] = {
    {"frag_length", wire_frag_length, METH_O,
     "frag_length(data) -> int | None\nThe frag_length of the PDU data starts with, when its\n"
     "common header passes the reference's checks; else None."},
    {"request_message", (PyCFunction)(void (*)(void))wire_request_message, METH_FASTCALL,
     "request_message(pdu, ndr32_context, ndr64_context) -> (call_id, context_id, ndr64,\n"
     "message) | None\nThe KMS message of a whole single-fragment request (opnum 0, bound\n"
     "context; -1 for an unbound one), else None."},
    {"base_request", wire_base_request, METH_O,
     "base_request(data) -> tuple | None\nThe 236-byte base request's fields, the CMID in\n"
     "big-endian order and the machine name decoded; None when data is shorter."},
    {"uuid_from_bytes", wire_uuid_from_bytes, METH_O,
     "uuid_from_bytes(raw) -> uuid.UUID\nuuid.UUID(bytes=raw) for 16 big-endian bytes, without\n"
     "UUID.__init__'s argument checks."},
    {"uuid_bytes", wire_uuid_bytes, METH_O,
     "uuid_bytes(value) -> bytes\nvalue.bytes of a uuid.UUID (its 16 big-endian bytes)."},
    {"uuid_bytes_le", wire_uuid_bytes_le, METH_O,
     "uuid_bytes_le(value) -> bytes\nvalue.bytes_le of a uuid.UUID (a GUID's wire order)."},
    {"response_pdu", (PyCFunction)(void (*)(void))wire_response_pdu, METH_FASTCALL,
     "response_pdu(call_id, context_id, ndr64, message) -> bytes | None\nThe response PDU\n"
     "around a KMS response message; None when it exceeds a fragment."},
    {"response_base", (PyCFunction)(void (*)(void))wire_response_base, METH_FASTCALL,
     "response_base(minor, major, epid_field, cmid, time, count, activation, renewal)\n"
     "-> bytes | None\nA KMS response's base message; None where the reference decides."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef wire_module = {
    PyModuleDef_HEAD_INIT,
    "_wire",
    "The common KMS exchange's byte layout in C; None wherever the Python reference decides.",
    -1,
    wire_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__wire(void)
{
    PyObject *module = PyModule_Create(&wire_module);
    /* Without the expected uuid layout, the UUID functions are left out: the caller's own
       Python path builds and reads UUIDs then. */
    if (module != NULL && uuid_setup() < 0) {
        PyErr_Clear();
        if (PyObject_DelAttrString(module, "uuid_from_bytes") < 0 ||
            PyObject_DelAttrString(module, "uuid_bytes") < 0 ||
            PyObject_DelAttrString(module, "uuid_bytes_le") < 0 ||
            PyObject_DelAttrString(module, "response_base") < 0)
            Py_CLEAR(module);
    }
    return module;
}
