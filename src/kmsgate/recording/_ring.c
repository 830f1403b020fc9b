/*
 * kmsgate.recording._ring: RecordRing.append's copy into the shared ring, in C, and a record
 * draft encoded straight into it in marshal's format 2 (marshal.dumps would build the bytes
 * first: 0.43 µs a draft; this encoder takes None, bytes, str and 64-bit ints, and leaves any
 * other value to marshal, so the entry is always marshal.dumps(draft, 2) byte for byte).
 *
 * The same bytes as ring.py's Python path (tests/store/test_record_ring.py compares them):
 * an 8-byte entry header (length, zlib's CRC-32 of the payload), the payload, padding to 8
 * bytes, a WRAP header where an entry would not fit before the end. The producer's count is
 * stored before its position, each with one release store, so a consumer that follows the
 * position never sees an entry before its bytes. Called for every record a host answers:
 * the Python path's struct, memoryview and slice objects cost 0.6 µs an entry, this 0.1.
 */
#define PY_SSIZE_T_CLEAN
/* Stable ABI of CPython 3.11 (the buffer protocol joined it then): one abi3 build. */
#define Py_LIMITED_API 0x030B0000
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <zlib.h>

/* ring.py's layout: a header of 8-byte words, then the entries. */
#define HEADER_BYTES 4096
#define WORD_CAPACITY 1
#define WORD_MAX_ENTRIES 2
#define WORD_TAIL_POS 8
#define WORD_TAIL_COUNT 9
#define WORD_HEAD_POS 16
#define WORD_HEAD_COUNT 17
#define ENTRY_HEADER 8
#define ALIGN 8
#define WRAP 0xFFFFFFFFu

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* marshal's format 2, as marshal.dumps(value, 2) writes a record draft's values. */
#define TYPE_NONE 'N'
#define TYPE_INT 'i'
#define TYPE_LONG 'l'
#define TYPE_STRING 's'
#define TYPE_UNICODE 'u'
#define TYPE_TUPLE '('

/* 15-bit digits of a magnitude, as marshal writes an int beyond 32 bits. */
static int long_digits(unsigned long long magnitude)
{
    int digits = 0;
    for (; magnitude; magnitude >>= 15)
        digits++;
    return digits;
}

/* The marshalled size of one value; -1 (no exception) for a value this encoder leaves to
 * marshal itself: other types or subclasses, ints beyond 64 bits, text with surrogates. */
static Py_ssize_t value_size(PyObject *value)
{
    if (value == Py_None)
        return 1;
    if (PyBytes_CheckExact(value))
        return 5 + PyBytes_Size(value);
    if (PyUnicode_CheckExact(value)) {
        Py_ssize_t size;
        if (PyUnicode_AsUTF8AndSize(value, &size) == NULL) {
            PyErr_Clear(); /* surrogates: marshal's "surrogatepass" takes them */
            return -1;
        }
        return 5 + size;
    }
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow)
            return -1;
        if (number >= -2147483648LL && number <= 2147483647LL)
            return 5;
        unsigned long long magnitude = number < 0 ? 0ULL - (unsigned long long)number
                                                  : (unsigned long long)number;
        return 5 + 2 * long_digits(magnitude);
    }
    return -1;
}

static uint8_t *write_sized(uint8_t *at, char type, const void *data, Py_ssize_t size)
{
    *at = (uint8_t)type;
    put32(at + 1, (uint32_t)size);
    memcpy(at + 5, data, (size_t)size);
    return at + 5 + size;
}

/* Writes what value_size measured (the checks passed there). */
static uint8_t *write_value(uint8_t *at, PyObject *value)
{
    if (value == Py_None) {
        *at = TYPE_NONE;
        return at + 1;
    }
    if (PyBytes_CheckExact(value))
        return write_sized(at, TYPE_STRING, PyBytes_AsString(value), PyBytes_Size(value));
    if (PyUnicode_CheckExact(value)) {
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(value, &size);
        return write_sized(at, TYPE_UNICODE, text, size);
    }
    int overflow;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (number >= -2147483648LL && number <= 2147483647LL) {
        *at = TYPE_INT;
        put32(at + 1, (uint32_t)number);
        return at + 5;
    }
    unsigned long long magnitude = number < 0 ? 0ULL - (unsigned long long)number
                                              : (unsigned long long)number;
    int digits = long_digits(magnitude);
    *at = TYPE_LONG;
    put32(at + 1, (uint32_t)(number < 0 ? -digits : digits));
    at += 5;
    for (; magnitude; magnitude >>= 15, at += 2) {
        at[0] = (uint8_t)(magnitude & 0xFF);
        at[1] = (uint8_t)((magnitude >> 8) & 0x7F);
    }
    return at;
}

/* The marshalled size of a draft (a tuple of such values); -1 when marshal must do it. */
static Py_ssize_t draft_size(PyObject *draft)
{
    if (!PyTuple_CheckExact(draft))
        return -1;
    Py_ssize_t size = 5, count = PyTuple_Size(draft);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t item = value_size(PyTuple_GetItem(draft, i));
        if (item < 0)
            return -1;
        size += item;
    }
    return size;
}

static void write_draft(uint8_t *at, PyObject *draft)
{
    Py_ssize_t count = PyTuple_Size(draft);
    *at = TYPE_TUPLE;
    put32(at + 1, (uint32_t)count);
    at += 5;
    for (Py_ssize_t i = 0; i < count; i++)
        at = write_value(at, PyTuple_GetItem(draft, i));
}

/*
 * Room for an entry of `size` bytes at the producer's `tail`: where its header goes (a WRAP
 * marker written first when it would cross the end), or NULL when the ring is full now.
 */
static uint8_t *entry_room(uint64_t *words, uint8_t *data, uint64_t capacity, uint64_t *tail,
                           uint64_t count, uint64_t size)
{
    uint64_t need = (ENTRY_HEADER + size + ALIGN - 1) & ~(uint64_t)(ALIGN - 1);
    uint64_t head_count = __atomic_load_n(&words[WORD_HEAD_COUNT], __ATOMIC_ACQUIRE);
    uint64_t head_pos = __atomic_load_n(&words[WORD_HEAD_POS], __ATOMIC_ACQUIRE);
    uint64_t offset = *tail % capacity;
    uint64_t skip = offset + need > capacity ? capacity - offset : 0;
    if (count - head_count >= words[WORD_MAX_ENTRIES] || *tail + skip + need - head_pos > capacity)
        return NULL;
    if (skip) {
        put32(data + offset, WRAP);
        put32(data + offset + 4, 0);
        offset = 0;
    }
    *tail += skip + need;
    return data + offset;
}

/* The entry's header over its written payload, then count and position published. */
static void publish(uint64_t *words, uint8_t *entry, uint64_t size, uint64_t tail, uint64_t count)
{
    put32(entry, (uint32_t)size);
    put32(entry + 4, (uint32_t)crc32(0L, entry + ENTRY_HEADER, (uInt)size));
    __atomic_store_n(&words[WORD_TAIL_COUNT], (uint64_t)(count + 1), __ATOMIC_RELEASE);
    __atomic_store_n(&words[WORD_TAIL_POS], (uint64_t)tail, __ATOMIC_RELEASE);
}

/* The ring's header words and entries, once the buffer proves to hold one; NULL (error set). */
static uint64_t *ring_words(Py_buffer *ring, uint8_t **data, uint64_t *capacity)
{
    if ((uintptr_t)ring->buf % ALIGN) {
        PyErr_SetString(PyExc_ValueError, "the ring's buffer is not 8-byte aligned");
        return NULL;
    }
    uint64_t *words = (uint64_t *)ring->buf;
    if (ring->len < HEADER_BYTES || words[WORD_CAPACITY] % ALIGN ||
        words[WORD_CAPACITY] > (uint64_t)ring->len - HEADER_BYTES) {
        PyErr_SetString(PyExc_ValueError, "not a ring");
        return NULL;
    }
    *data = (uint8_t *)ring->buf + HEADER_BYTES;
    *capacity = words[WORD_CAPACITY];
    return words;
}

/*
 * append(ring, tail, count, payload) -> int: the producer's new tail once the entry is in,
 * 0 when the ring has no room for it now. `ring` is the whole writable buffer (header and
 * entries) whose header RecordRing checked; `tail` and `count` are the producer's own copies.
 */
static PyObject *ring_append(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "append takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    unsigned long long tail = PyLong_AsUnsignedLongLong(args[1]);
    unsigned long long count = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer ring, payload;
    if (PyObject_GetBuffer(args[0], &ring, PyBUF_WRITABLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[3], &payload, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&ring);
        return NULL;
    }
    PyObject *result = NULL;
    uint8_t *data;
    uint64_t capacity, size = (uint64_t)payload.len, position = tail;
    uint64_t *words = ring_words(&ring, &data, &capacity);
    if (words == NULL)
        goto done;
    if (size == 0 || ENTRY_HEADER + size > capacity) {
        PyErr_SetString(PyExc_ValueError, "an entry the ring can never hold");
        goto done;
    }
    uint8_t *entry = entry_room(words, data, capacity, &position, count, size);
    if (entry != NULL) {
        memcpy(entry + ENTRY_HEADER, payload.buf, (size_t)size);
        publish(words, entry, size, position, count);
    }
    result = PyLong_FromUnsignedLongLong(entry != NULL ? position : 0);
done:
    PyBuffer_Release(&payload);
    PyBuffer_Release(&ring);
    return result;
}

/*
 * append_draft(ring, tail, count, draft, max_payload) -> int: append(ring, tail, count,
 * marshal.dumps(draft, 2)) with the draft encoded straight into the ring; 0 when the ring has
 * no room now, -1 when marshal itself must encode it (a value of another type, or larger than
 * max_payload: the caller's path then says why).
 */
static PyObject *ring_append_draft(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "append_draft takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    unsigned long long tail = PyLong_AsUnsignedLongLong(args[1]);
    unsigned long long count = PyLong_AsUnsignedLongLong(args[2]);
    long long max_payload = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t size = draft_size(args[3]);
    if (size < 0 || size > max_payload)
        return PyLong_FromLong(-1);
    Py_buffer ring;
    if (PyObject_GetBuffer(args[0], &ring, PyBUF_WRITABLE) < 0)
        return NULL;
    PyObject *result = NULL;
    uint8_t *data;
    uint64_t capacity, position = tail;
    uint64_t *words = ring_words(&ring, &data, &capacity);
    if (words != NULL) {
        if (ENTRY_HEADER + (uint64_t)size > capacity) {
            result = PyLong_FromLong(-1);
        } else {
            uint8_t *entry = entry_room(words, data, capacity, &position, count, (uint64_t)size);
            if (entry != NULL) {
                write_draft(entry + ENTRY_HEADER, args[3]);
                publish(words, entry, (uint64_t)size, position, count);
            }
            result = PyLong_FromUnsignedLongLong(entry != NULL ? position : 0);
        }
    }
    PyBuffer_Release(&ring);
    return result;
}

static PyMethodDef ring_methods[] = {
    {"append_draft", (PyCFunction)(void (*)(void))ring_append_draft, METH_FASTCALL,
     "append_draft(ring, tail, count, draft, max_payload) -> int\nappend() of\n"
     "marshal.dumps(draft, 2), encoded in place; -1 when marshal must encode it."},
    {"append", (PyCFunction)(void (*)(void))ring_append, METH_FASTCALL,
     "append(ring, tail, count, payload) -> int\nAppend one entry; the new tail, or 0 when the\n"
     "ring has no room for it now."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ring_module = {
    PyModuleDef_HEAD_INIT, "_ring", "RecordRing's appends into the shared ring, in C.",
    -1, ring_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ring(void) { return PyModule_Create(&ring_module); }
