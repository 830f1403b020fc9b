/*
 * kmsgate.recording._ring: RecordRing.append's copy into the shared ring, in C.
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
    if ((uintptr_t)ring.buf % ALIGN) {
        PyErr_SetString(PyExc_ValueError, "the ring's buffer is not 8-byte aligned");
        goto done;
    }
    uint64_t *words = (uint64_t *)ring.buf;
    uint8_t *data = (uint8_t *)ring.buf + HEADER_BYTES;
    uint64_t capacity = words[WORD_CAPACITY], size = (uint64_t)payload.len;
    uint64_t need = (ENTRY_HEADER + size + ALIGN - 1) & ~(uint64_t)(ALIGN - 1);
    if (ring.len < HEADER_BYTES || capacity % ALIGN || capacity > (uint64_t)ring.len - HEADER_BYTES ||
        size == 0 || need > capacity) {
        PyErr_SetString(PyExc_ValueError, "not a ring, or an entry it can never hold");
        goto done;
    }
    uint64_t head_count = __atomic_load_n(&words[WORD_HEAD_COUNT], __ATOMIC_ACQUIRE);
    uint64_t head_pos = __atomic_load_n(&words[WORD_HEAD_POS], __ATOMIC_ACQUIRE);
    uint64_t offset = tail % capacity;
    uint64_t skip = offset + need > capacity ? capacity - offset : 0;
    if (count - head_count >= words[WORD_MAX_ENTRIES] || tail + skip + need - head_pos > capacity) {
        result = PyLong_FromLong(0);
        goto done;
    }
    if (skip) {
        put32(data + offset, WRAP);
        put32(data + offset + 4, 0);
        offset = 0;
    }
    put32(data + offset, (uint32_t)size);
    put32(data + offset + 4, (uint32_t)crc32(0L, payload.buf, (uInt)size));
    memcpy(data + offset + ENTRY_HEADER, payload.buf, (size_t)size);
    tail += skip + need;
    __atomic_store_n(&words[WORD_TAIL_COUNT], (uint64_t)(count + 1), __ATOMIC_RELEASE);
    __atomic_store_n(&words[WORD_TAIL_POS], (uint64_t)tail, __ATOMIC_RELEASE);
    result = PyLong_FromUnsignedLongLong(tail);
done:
    PyBuffer_Release(&payload);
    PyBuffer_Release(&ring);
    return result;
}

static PyMethodDef ring_methods[] = {
    {"append", (PyCFunction)(void (*)(void))ring_append, METH_FASTCALL,
     "append(ring, tail, count, payload) -> int\nAppend one entry; the new tail, or 0 when the\n"
     "ring has no room for it now."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ring_module = {
    PyModuleDef_HEAD_INIT, "_ring", "RecordRing.append's copy into the shared ring, in C.",
    -1, ring_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ring(void) { return PyModule_Create(&ring_module); }
