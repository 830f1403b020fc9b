/*
 * kmsgate.protocol._cipher: Rijndael rounds (128-bit block) in C, CBC mode only.
 *
 * The key schedule stays in Python (crypto.expand_key): callers pass already expanded
 * round keys as 16 * (nrounds + 1) bytes of big-endian words.  Encryption takes the
 * encryption schedule; decryption takes the "equivalent inverse cipher" schedule
 * (round keys reversed, InvMixColumns applied to rounds 1..nrounds-1).  One block with a
 * zero IV is the bare block function.  Results are byte-for-byte those of the Python path.
 *
 * On x86-64 processors with AES-NI the rounds run on the AES instructions: they take any
 * round keys (the v6 tweak included) and any round count (v4's 11), and the two schedules
 * above are exactly the byte strings they expect.  Elsewhere the table rounds below run.
 *
 * Built with KMSGATE_LIBCRYPTO (setup.py, when OpenSSL's headers are there) the module also
 * seals a v5/v6 response in one call (seal, below).
 */
#define PY_SSIZE_T_CLEAN
/* Stable ABI of CPython 3.11 (the oldest supported): one abi3 build serves every later version. */
#define Py_LIMITED_API 0x030B0000
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AESNI_CODE 1
#else
#define HAVE_AESNI_CODE 0
#endif

#define BLOCK 16
#define MAX_ROUNDS 14 /* Rijndael with a 256-bit key; a 128-bit block never needs more */

static uint8_t sbox[256], inv_sbox[256];
static uint32_t Te[4][256], Td[4][256];

static uint8_t xtime(uint8_t a) { return (uint8_t)((a << 1) ^ ((a & 0x80) ? 0x1B : 0)); }

static uint8_t gmul(uint8_t a, uint8_t b)
{
    uint8_t p = 0;
    while (b) {
        if (b & 1)
            p ^= a;
        a = xtime(a);
        b >>= 1;
    }
    return p;
}

static uint32_t ror8(uint32_t w) { return (w >> 8) | (w << 24); }

/* Same construction as the Python module: log/antilog inverse, affine map, T-tables. */
static void build_tables(void)
{
    uint8_t exp_t[255], log_t[256] = {0};
    uint8_t e = 1;
    for (int i = 0; i < 255; i++) {
        exp_t[i] = e;
        log_t[e] = (uint8_t)i;
        e ^= xtime(e);
    }
    for (int x = 0; x < 256; x++) {
        uint8_t inv = x ? exp_t[(255 - log_t[x]) % 255] : 0;
        uint8_t s = inv;
        for (int sh = 1; sh < 5; sh++)
            s ^= (uint8_t)((inv << sh) | (inv >> (8 - sh)));
        sbox[x] = s ^ 0x63;
    }
    for (int x = 0; x < 256; x++)
        inv_sbox[sbox[x]] = (uint8_t)x;
    for (int x = 0; x < 256; x++) {
        uint8_t s = sbox[x], i = inv_sbox[x];
        Te[0][x] = ((uint32_t)gmul(s, 2) << 24) | ((uint32_t)s << 16) | ((uint32_t)s << 8) |
                   gmul(s, 3);
        Td[0][x] = ((uint32_t)gmul(i, 14) << 24) | ((uint32_t)gmul(i, 9) << 16) |
                   ((uint32_t)gmul(i, 13) << 8) | gmul(i, 11);
        for (int t = 1; t < 4; t++) {
            Te[t][x] = ror8(Te[t - 1][x]);
            Td[t][x] = ror8(Td[t - 1][x]);
        }
    }
}

static uint32_t load32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void store32(uint8_t *p, uint32_t w)
{
    p[0] = (uint8_t)(w >> 24);
    p[1] = (uint8_t)(w >> 16);
    p[2] = (uint8_t)(w >> 8);
    p[3] = (uint8_t)w;
}

#define B0(w) ((w) >> 24)
#define B1(w) (((w) >> 16) & 0xFF)
#define B2(w) (((w) >> 8) & 0xFF)
#define B3(w) ((w) & 0xFF)

static void encrypt_words(const uint32_t *rk, int nr, uint32_t s[4])
{
    uint32_t s0 = s[0] ^ rk[0], s1 = s[1] ^ rk[1], s2 = s[2] ^ rk[2], s3 = s[3] ^ rk[3];
    uint32_t t0, t1, t2, t3;
    for (int r = 1; r < nr; r++) {
        rk += 4;
        t0 = Te[0][B0(s0)] ^ Te[1][B1(s1)] ^ Te[2][B2(s2)] ^ Te[3][B3(s3)] ^ rk[0];
        t1 = Te[0][B0(s1)] ^ Te[1][B1(s2)] ^ Te[2][B2(s3)] ^ Te[3][B3(s0)] ^ rk[1];
        t2 = Te[0][B0(s2)] ^ Te[1][B1(s3)] ^ Te[2][B2(s0)] ^ Te[3][B3(s1)] ^ rk[2];
        t3 = Te[0][B0(s3)] ^ Te[1][B1(s0)] ^ Te[2][B2(s1)] ^ Te[3][B3(s2)] ^ rk[3];
        s0 = t0; s1 = t1; s2 = t2; s3 = t3;
    }
    rk += 4;
#define FINAL_E(a, b, c, d, k)                                                                \
    ((((uint32_t)sbox[B0(a)]) << 24) ^ (((uint32_t)sbox[B1(b)]) << 16) ^                      \
     (((uint32_t)sbox[B2(c)]) << 8) ^ ((uint32_t)sbox[B3(d)]) ^ (k))
    s[0] = FINAL_E(s0, s1, s2, s3, rk[0]);
    s[1] = FINAL_E(s1, s2, s3, s0, rk[1]);
    s[2] = FINAL_E(s2, s3, s0, s1, rk[2]);
    s[3] = FINAL_E(s3, s0, s1, s2, rk[3]);
#undef FINAL_E
}

static void decrypt_words(const uint32_t *rk, int nr, uint32_t s[4])
{
    uint32_t s0 = s[0] ^ rk[0], s1 = s[1] ^ rk[1], s2 = s[2] ^ rk[2], s3 = s[3] ^ rk[3];
    uint32_t t0, t1, t2, t3;
    for (int r = 1; r < nr; r++) {
        rk += 4;
        t0 = Td[0][B0(s0)] ^ Td[1][B1(s3)] ^ Td[2][B2(s2)] ^ Td[3][B3(s1)] ^ rk[0];
        t1 = Td[0][B0(s1)] ^ Td[1][B1(s0)] ^ Td[2][B2(s3)] ^ Td[3][B3(s2)] ^ rk[1];
        t2 = Td[0][B0(s2)] ^ Td[1][B1(s1)] ^ Td[2][B2(s0)] ^ Td[3][B3(s3)] ^ rk[2];
        t3 = Td[0][B0(s3)] ^ Td[1][B1(s2)] ^ Td[2][B2(s1)] ^ Td[3][B3(s0)] ^ rk[3];
        s0 = t0; s1 = t1; s2 = t2; s3 = t3;
    }
    rk += 4;
#define FINAL_D(a, b, c, d, k)                                                                \
    ((((uint32_t)inv_sbox[B0(a)]) << 24) ^ (((uint32_t)inv_sbox[B1(b)]) << 16) ^              \
     (((uint32_t)inv_sbox[B2(c)]) << 8) ^ ((uint32_t)inv_sbox[B3(d)]) ^ (k))
    s[0] = FINAL_D(s0, s3, s2, s1, rk[0]);
    s[1] = FINAL_D(s1, s0, s3, s2, rk[1]);
    s[2] = FINAL_D(s2, s1, s0, s3, rk[2]);
    s[3] = FINAL_D(s3, s2, s1, s0, rk[3]);
#undef FINAL_D
}

/* (round_keys, nrounds, iv, data), every length checked; the bytes from any buffer. Called
 * as METH_FASTCALL: PyArg_ParseTuple's format cost some 800 instructions a call, a tenth of
 * a request's decryption. */
static int parse_args(PyObject *const *args, Py_ssize_t nargs, Py_buffer *rk_buf,
                      Py_buffer *iv_buf, Py_buffer *data_buf, int *nr)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "takes 4 arguments (round keys, nrounds, iv, data), got %zd",
                     nargs);
        return -1;
    }
    long rounds = PyLong_AsLong(args[1]);
    if (rounds == -1 && PyErr_Occurred())
        return -1;
    if (rounds < 1 || rounds > MAX_ROUNDS) {
        PyErr_Format(PyExc_ValueError, "nrounds must be 1..%d, got %ld", MAX_ROUNDS, rounds);
        return -1;
    }
    *nr = (int)rounds;
    if (PyObject_GetBuffer(args[0], rk_buf, PyBUF_SIMPLE) < 0)
        return -1;
    if (PyObject_GetBuffer(args[2], iv_buf, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(rk_buf);
        return -1;
    }
    if (PyObject_GetBuffer(args[3], data_buf, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(rk_buf);
        PyBuffer_Release(iv_buf);
        return -1;
    }
    if (rk_buf->len != (Py_ssize_t)BLOCK * (*nr + 1)) {
        PyErr_Format(PyExc_ValueError, "round keys must be %d bytes for %d rounds, got %zd",
                     BLOCK * (*nr + 1), *nr, rk_buf->len);
        goto fail;
    }
    if (iv_buf->len != BLOCK) {
        PyErr_Format(PyExc_ValueError, "IV must be 16 bytes, got %zd", iv_buf->len);
        goto fail;
    }
    if (data_buf->len % BLOCK != 0) {
        PyErr_Format(PyExc_ValueError, "data must be a multiple of 16 bytes, got %zd",
                     data_buf->len);
        goto fail;
    }
    return 0;
fail:
    PyBuffer_Release(rk_buf);
    PyBuffer_Release(iv_buf);
    PyBuffer_Release(data_buf);
    return -1;
}

static int cpu_has_aesni = 0; /* what the processor offers (set at import) */
static int aesni_on = 0;      /* what runs: cpu_has_aesni unless use_aesni(False) */

#if HAVE_AESNI_CODE
__attribute__((target("aes,sse2"))) static void cbc_aesni(const uint8_t *keys, int nr,
                                                          const uint8_t *iv, const uint8_t *in,
                                                          uint8_t *out, Py_ssize_t len,
                                                          int decrypt)
{
    __m128i k[MAX_ROUNDS + 1];
    for (int r = 0; r <= nr; r++)
        k[r] = _mm_loadu_si128((const __m128i *)(keys + BLOCK * r));
    __m128i chain = _mm_loadu_si128((const __m128i *)iv);
    for (Py_ssize_t off = 0; off < len; off += BLOCK) {
        __m128i block = _mm_loadu_si128((const __m128i *)(in + off));
        __m128i s;
        if (decrypt) {
            s = _mm_xor_si128(block, k[0]);
            for (int r = 1; r < nr; r++)
                s = _mm_aesdec_si128(s, k[r]);
            s = _mm_xor_si128(_mm_aesdeclast_si128(s, k[nr]), chain);
            chain = block;
        } else {
            s = _mm_xor_si128(_mm_xor_si128(block, chain), k[0]);
            for (int r = 1; r < nr; r++)
                s = _mm_aesenc_si128(s, k[r]);
            s = _mm_aesenclast_si128(s, k[nr]);
            chain = s;
        }
        _mm_storeu_si128((__m128i *)(out + off), s);
    }
}
#endif

/* CBC over `len` bytes (a multiple of 16) on the rounds in use; `in` may equal `out`. */
static void cbc_run(const uint8_t *keys, int nr, const uint8_t *iv, const uint8_t *in,
                    uint8_t *out, Py_ssize_t len, int decrypt)
{
#if HAVE_AESNI_CODE
    if (aesni_on) {
        cbc_aesni(keys, nr, iv, in, out, len, decrypt);
        return;
    }
#endif
    uint32_t rk[4 * (MAX_ROUNDS + 1)], chain[4], s[4], c[4];
    for (int i = 0; i < 4 * (nr + 1); i++)
        rk[i] = load32(keys + 4 * i);
    for (int j = 0; j < 4; j++)
        chain[j] = load32(iv + 4 * j);
    for (Py_ssize_t off = 0; off < len; off += BLOCK) {
        for (int j = 0; j < 4; j++)
            c[j] = load32(in + off + 4 * j);
        if (decrypt) {
            memcpy(s, c, sizeof s);
            decrypt_words(rk, nr, s);
            for (int j = 0; j < 4; j++) {
                s[j] ^= chain[j];
                chain[j] = c[j]; /* kept before the block is written: in may be out */
            }
        } else {
            for (int j = 0; j < 4; j++)
                s[j] = c[j] ^ chain[j];
            encrypt_words(rk, nr, s);
            memcpy(chain, s, sizeof s);
        }
        for (int j = 0; j < 4; j++)
            store32(out + off + 4 * j, s[j]);
    }
}

static PyObject *run_cbc(PyObject *const *args, Py_ssize_t nargs, int decrypt)
{
    Py_buffer rk_buf, iv_buf, data_buf;
    int nr;
    if (parse_args(args, nargs, &rk_buf, &iv_buf, &data_buf, &nr) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, data_buf.len);
    if (out != NULL)
        cbc_run((const uint8_t *)rk_buf.buf, nr, (const uint8_t *)iv_buf.buf,
                (const uint8_t *)data_buf.buf, (uint8_t *)PyBytes_AsString(out), data_buf.len,
                decrypt);
    PyBuffer_Release(&rk_buf);
    PyBuffer_Release(&iv_buf);
    PyBuffer_Release(&data_buf);
    return out;
}

#ifdef KMSGATE_LIBCRYPTO
/*
 * A v5/v6 response sealed in one call (spec §11.4, §12.5-12.6): the Python path
 * (messages.encode_response) pays for the two hashes, the HMAC, the XOR, the padding and the
 * CBC pass in a dozen calls and copies; here they are one buffer.  SHA-256 is OpenSSL's
 * (libcrypto, the library CPython's hashlib uses), through its plain SHA256_* calls: the
 * same SHA-NI/AVX code as EVP without a provider look-up, allocation and cleansing per hash
 * (half of the sealing's time through EVP).
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_*: deprecated in 3.0, kept for exactly this */
#include <openssl/sha.h>

#define SHA256_SIZE 32
#define HMAC_BLOCK 64
#define HMAC_KEY_SIZE 16

/* The v6 HMAC key changes every ~4 hours (a time slot): its two padded starts are kept. */
static SHA256_CTX hmac_inner, hmac_outer;
static uint8_t hmac_key_kept[HMAC_KEY_SIZE];
static int hmac_key_valid = 0;

/* SHA-256 of `data`, continuing from `start` (a hash part way through) or from scratch. */
static int sha256_from(const SHA256_CTX *start, const uint8_t *data, size_t len, uint8_t *out)
{
    SHA256_CTX work;
    if (start != NULL)
        work = *start;
    else if (!SHA256_Init(&work))
        return 0;
    return SHA256_Update(&work, data, len) && SHA256_Final(out, &work);
}

static int hmac_starts(const uint8_t *key)
{
    if (hmac_key_valid && memcmp(key, hmac_key_kept, HMAC_KEY_SIZE) == 0)
        return 1;
    uint8_t inner[HMAC_BLOCK] = {0}, outer[HMAC_BLOCK];
    memcpy(inner, key, HMAC_KEY_SIZE);
    for (int i = 0; i < HMAC_BLOCK; i++) {
        outer[i] = inner[i] ^ 0x5C;
        inner[i] ^= 0x36;
    }
    hmac_key_valid = SHA256_Init(&hmac_inner) && SHA256_Update(&hmac_inner, inner, HMAC_BLOCK) &&
                     SHA256_Init(&hmac_outer) && SHA256_Update(&hmac_outer, outer, HMAC_BLOCK);
    if (hmac_key_valid)
        memcpy(hmac_key_kept, key, HMAC_KEY_SIZE);
    return hmac_key_valid;
}

static const char *sized_bytes(PyObject *obj, const char *name, Py_ssize_t want, Py_ssize_t *len)
{
    char *data;
    if (!PyBytes_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes", name);
        return NULL;
    }
    if (PyBytes_AsStringAndSize(obj, &data, len) < 0)
        return NULL;
    if (want >= 0 && *len != want) {
        PyErr_Format(PyExc_ValueError, "%s must be %zd bytes, got %zd", name, want, *len);
        return NULL;
    }
    return data;
}

/* seal(round_keys, nrounds, head, base, rnd, salt, tail, hmac_key | None) -> bytes */
static PyObject *cipher_seal(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "seal takes 8 arguments, got %zd", nargs);
        return NULL;
    }
    Py_ssize_t rk_len, head_len, base_len, rnd_len, salt_len, tail_len, key_len = 0;
    long nr = PyLong_AsLong(args[1]);
    if (nr == -1 && PyErr_Occurred())
        return NULL;
    if (nr < 1 || nr > MAX_ROUNDS) {
        PyErr_Format(PyExc_ValueError, "nrounds must be 1..%d, got %ld", MAX_ROUNDS, nr);
        return NULL;
    }
    const char *rk = sized_bytes(args[0], "round keys", BLOCK * (nr + 1), &rk_len);
    const char *head = rk ? sized_bytes(args[2], "head", BLOCK, &head_len) : NULL;
    const char *base = head ? sized_bytes(args[3], "base", -1, &base_len) : NULL;
    const char *rnd = base ? sized_bytes(args[4], "rnd", BLOCK, &rnd_len) : NULL;
    const char *salt = rnd ? sized_bytes(args[5], "salt", BLOCK, &salt_len) : NULL;
    const char *tail = salt ? sized_bytes(args[6], "tail", -1, &tail_len) : NULL;
    if (tail == NULL)
        return NULL;
    const char *key = NULL;
    if (args[7] != Py_None && (key = sized_bytes(args[7], "HMAC key", HMAC_KEY_SIZE, &key_len)) == NULL)
        return NULL;

    /* head | base | rnd ^ salt | SHA-256(rnd) | tail [| HMAC tail], then PKCS#7 padding. */
    Py_ssize_t plain_len = BLOCK + base_len + BLOCK + SHA256_SIZE + tail_len +
                           (key != NULL ? BLOCK : 0);
    Py_ssize_t padded_len = plain_len + (BLOCK - plain_len % BLOCK);
    PyObject *out = PyBytes_FromStringAndSize(NULL, padded_len);
    if (out == NULL)
        return NULL;
    uint8_t *buf = (uint8_t *)PyBytes_AsString(out), *at = buf;
    memcpy(at, head, BLOCK);
    at += BLOCK;
    memcpy(at, base, (size_t)base_len);
    at += base_len;
    for (int i = 0; i < BLOCK; i++)
        at[i] = (uint8_t)(rnd[i] ^ salt[i]);
    at += BLOCK;
    if (!sha256_from(NULL, (const uint8_t *)rnd, BLOCK, at))
        goto openssl_failed;
    at += SHA256_SIZE;
    memcpy(at, tail, (size_t)tail_len);
    at += tail_len;
    if (key != NULL) {
        uint8_t digest[SHA256_SIZE];
        if (!hmac_starts((const uint8_t *)key) ||
            !sha256_from(&hmac_inner, buf, (size_t)(at - buf), digest) ||
            !sha256_from(&hmac_outer, digest, SHA256_SIZE, digest))
            goto openssl_failed;
        memcpy(at, digest + SHA256_SIZE - BLOCK, BLOCK); /* the HMAC's last 16 bytes */
        at += BLOCK;
    }
    memset(at, (int)(padded_len - plain_len), (size_t)(padded_len - plain_len));
    static const uint8_t zero_iv[BLOCK];
    cbc_run((const uint8_t *)rk, (int)nr, zero_iv, buf, buf, padded_len, 0);
    return out;

openssl_failed:
    Py_DECREF(out);
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL's SHA-256 failed");
    return NULL;
}

static PyMethodDef seal_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))cipher_seal, METH_FASTCALL,
     "seal(enc_round_keys, nrounds, head, base, rnd, salt, tail, hmac_key) -> bytes\n"
     "A v5/v6 response's ciphertext: head | base | rnd^salt | SHA-256(rnd) | tail, then the\n"
     "v6 HMAC's last 16 bytes when hmac_key is given, PKCS#7-padded, CBC under a zero IV."},
    {NULL, NULL, 0, NULL},
};
#endif

static PyObject *cipher_cbc_encrypt(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return run_cbc(args, nargs, 0);
}

static PyObject *cipher_cbc_decrypt(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return run_cbc(args, nargs, 1);
}

static PyObject *cipher_use_aesni(PyObject *self, PyObject *arg)
{
    (void)self;
    int wanted = PyObject_IsTrue(arg);
    if (wanted < 0)
        return NULL;
    aesni_on = wanted && cpu_has_aesni;
    return PyBool_FromLong(aesni_on);
}

static PyObject *cipher_backend(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyUnicode_FromString(aesni_on ? "aes-ni" : "tables");
}

static PyMethodDef cipher_methods[] = {
    {"use_aesni", cipher_use_aesni, METH_O,
     "use_aesni(flag) -> bool\n"
     "Run the rounds on AES-NI (when the processor has it) or on tables; True if AES-NI runs."},
    {"backend", cipher_backend, METH_NOARGS,
     "backend() -> str\nThe rounds in use: 'aes-ni' or 'tables'."},
    {"cbc_encrypt", (PyCFunction)(void (*)(void))cipher_cbc_encrypt, METH_FASTCALL,
     "cbc_encrypt(enc_round_keys, nrounds, iv, data) -> bytes\n"
     "CBC-encrypt data (multiple of 16 bytes) with an expanded encryption schedule."},
    {"cbc_decrypt", (PyCFunction)(void (*)(void))cipher_cbc_decrypt, METH_FASTCALL,
     "cbc_decrypt(dec_round_keys, nrounds, iv, data) -> bytes\n"
     "CBC-decrypt data with an equivalent-inverse-cipher schedule."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef cipher_module = {
    PyModuleDef_HEAD_INIT,
    "_cipher",
    "Rijndael (128-bit block) CBC rounds over pre-expanded round keys.",
    -1,
    cipher_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__cipher(void)
{
    build_tables();
#if HAVE_AESNI_CODE
    __builtin_cpu_init();
    cpu_has_aesni = __builtin_cpu_supports("aes") && __builtin_cpu_supports("sse2");
#endif
    aesni_on = cpu_has_aesni;
    PyObject *module = PyModule_Create(&cipher_module);
#ifdef KMSGATE_LIBCRYPTO
    if (module != NULL && PyModule_AddFunctions(module, seal_methods) < 0)
        Py_CLEAR(module);
#endif
    return module;
}
