/*
 * kmsgate.store._sqlite_rows: a batch's activation rows bound and stepped in C, on the
 * sqlite3 module's own connection and library.
 *
 * Through the sqlite3 module a row's eleven values cost about 5 000 instructions more than
 * SQLite's own work (docs/benchmarks.md): a type dispatch per value, and SQLite's copy of
 * every text (SQLITE_TRANSIENT). Here each value is bound where it lies (SQLITE_STATIC: the
 * caller's tuples live until the statement has stepped) to one statement of several rows,
 * prepared once for a whole batch.
 *
 * No SQLite headers or library of its own: attach() resolves the few calls it makes from the
 * library the sqlite3 module itself was linked with (dlsym through _sqlite3's handle), so a
 * connection's handle is always used by the SQLite that opened it. The handle is the first
 * field after the object header of CPython's sqlite3.Connection (3.11 to 3.14);
 * sqlite_rows.py checks that before trusting it (a limit set through the module and read
 * back here).
 */
#define PY_SSIZE_T_CLEAN
/* Stable ABI of CPython 3.11: one abi3 build, like the other extensions. */
#define Py_LIMITED_API 0x030B0000
#include <Python.h>
#include <dlfcn.h>

/* PyLong_AsLongLong goes through a byte array for any value past 2**30 (some 200
 * instructions); PyLong_AsLong reads the digits, where a long has 64 bits. */
#if LONG_MAX >= 0x7fffffffffffffffLL
#define AS_INT64 PyLong_AsLong
#else
#define AS_INT64 PyLong_AsLongLong
#endif

typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
typedef void (*destructor_fn)(void *);

#define SQLITE_OK 0
#define SQLITE_DONE 101
#define SQLITE_PREPARE_PERSISTENT 0x01
#define SQLITE_STATIC ((destructor_fn)0)

static int (*prepare_v3)(sqlite3 *, const char *, int, unsigned int, sqlite3_stmt **,
                         const char **);
static int (*bind_text)(sqlite3_stmt *, int, const char *, int, destructor_fn);
static int (*bind_blob)(sqlite3_stmt *, int, const void *, int, destructor_fn);
static int (*bind_int64)(sqlite3_stmt *, int, long long);
static int (*bind_double)(sqlite3_stmt *, int, double);
static int (*bind_null)(sqlite3_stmt *, int);
static int (*bind_parameter_count)(sqlite3_stmt *);
static int (*clear_bindings)(sqlite3_stmt *);
static int (*step)(sqlite3_stmt *);
static int (*reset)(sqlite3_stmt *);
static int (*finalize)(sqlite3_stmt *);
static int (*extended_errcode)(sqlite3 *);
static const char *(*errmsg)(sqlite3 *);
static int (*limit)(sqlite3 *, int, int);
static int attached;

static PyObject *error_of; /* (extended result code, message) -> the exception to raise */

static int resolve(void *library, const char *name, void **slot)
{
    *slot = dlsym(library, name);
    if (*slot == NULL) {
        PyErr_Format(PyExc_ImportError, "%s not found in the sqlite3 module's library", name);
        return -1;
    }
    return 0;
}

/* attach(path of the _sqlite3 extension module, error_of): use the SQLite that module was
 * linked with, and raise what error_of(code, message) makes of SQLite's errors. */
static PyObject *attach(PyObject *module, PyObject *args)
{
    PyObject *path, *errors;
    if (!PyArg_ParseTuple(args, "UO:attach", &path, &errors))
        return NULL;
    if (!PyCallable_Check(errors)) {
        PyErr_SetString(PyExc_TypeError, "error_of must be callable");
        return NULL;
    }
    const char *file = PyUnicode_AsUTF8AndSize(path, NULL);
    if (file == NULL)
        return NULL;
    void *library = dlopen(file, RTLD_NOW | RTLD_NOLOAD);
    if (library == NULL) {
        PyErr_Format(PyExc_ImportError, "%s is not loaded: %s", file, dlerror());
        return NULL;
    }
    int failed = resolve(library, "sqlite3_prepare_v3", (void **)&prepare_v3) ||
                 resolve(library, "sqlite3_bind_text", (void **)&bind_text) ||
                 resolve(library, "sqlite3_bind_blob", (void **)&bind_blob) ||
                 resolve(library, "sqlite3_bind_int64", (void **)&bind_int64) ||
                 resolve(library, "sqlite3_bind_double", (void **)&bind_double) ||
                 resolve(library, "sqlite3_bind_null", (void **)&bind_null) ||
                 resolve(library, "sqlite3_bind_parameter_count",
                         (void **)&bind_parameter_count) ||
                 resolve(library, "sqlite3_clear_bindings", (void **)&clear_bindings) ||
                 resolve(library, "sqlite3_step", (void **)&step) ||
                 resolve(library, "sqlite3_reset", (void **)&reset) ||
                 resolve(library, "sqlite3_finalize", (void **)&finalize) ||
                 resolve(library, "sqlite3_extended_errcode", (void **)&extended_errcode) ||
                 resolve(library, "sqlite3_errmsg", (void **)&errmsg) ||
                 resolve(library, "sqlite3_limit", (void **)&limit);
    /* The module stays loaded as long as sqlite3 does: this handle's reference is harmless. */
    if (failed)
        return NULL;
    Py_INCREF(errors);
    Py_XDECREF(error_of);
    error_of = errors;
    attached = 1;
    Py_RETURN_NONE;
}

static sqlite3 *handle_of(PyObject *connection)
{
    return *(sqlite3 **)((char *)connection + sizeof(PyObject));
}

static PyObject *fail(sqlite3 *db)
{
    PyObject *error = PyObject_CallFunction(error_of, "is", extended_errcode(db), errmsg(db));
    if (error != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(error), error);
        Py_DECREF(error);
    }
    return NULL;
}

/* limit_of(connection, limit id): the limit as SQLite reports it for the handle found. */
static PyObject *limit_of(PyObject *module, PyObject *args)
{
    PyObject *connection;
    int which;
    if (!PyArg_ParseTuple(args, "Oi:limit_of", &connection, &which))
        return NULL;
    if (!attached) {
        PyErr_SetString(PyExc_RuntimeError, "attach() first");
        return NULL;
    }
    sqlite3 *db = handle_of(connection);
    if (db == NULL) {
        PyErr_SetString(PyExc_ValueError, "the connection is closed");
        return NULL;
    }
    return PyLong_FromLong(limit(db, which, -1));
}

/* How a column's value is bound: as it is, or converted to the text the store keeps. */
#define KIND_VALUE 'v'
#define KIND_TIME 't' /* microseconds since the epoch: UtcDateTime's text, 26 characters */
#define KIND_ID 'h'   /* 16 bytes (or None): Uuid's 32 hex digits */
#define TIME_TEXT 26
#define ID_TEXT 32
#define MAX_WIDTH 64
/* datetime.min and datetime.max (years 1 to 9999) in microseconds since 1970. */
#define MIN_MICROS (-62135596800000000LL)
#define MAX_MICROS (253402300799999999LL)

typedef struct {
    PyObject_HEAD
    PyObject *connection; /* kept alive with the statement: its handle must outlive it */
    sqlite3 *db;
    sqlite3_stmt *statement;
    int rows;  /* rows a step inserts */
    int width; /* values a row binds */
    char kinds[MAX_WIDTH];
    int row_text; /* bytes of converted text a row needs */
    char *text;   /* converted values of one step: bound in place until it is done */
} RowStatement;

static void put_digits(char *at, long long value, int digits)
{
    for (at += digits; digits--; value /= 10)
        *--at = (char)('0' + value % 10);
}

/* The proleptic Gregorian date of a day number (days since 1970-01-01). */
static void civil_date(long long days, long long *year, int *month, int *day)
{
    days += 719468;
    long long era = (days >= 0 ? days : days - 146096) / 146097;
    long long of_era = days - era * 146097;
    long long year_of_era = (of_era - of_era / 1460 + of_era / 36524 - of_era / 146096) / 365;
    long long of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    long long shifted = (5 * of_year + 2) / 153;
    *day = (int)(of_year - (153 * shifted + 2) / 5 + 1);
    *month = (int)(shifted < 10 ? shifted + 3 : shifted - 9);
    *year = year_of_era + era * 400 + (*month <= 2);
}

/* "YYYY-MM-DD HH:MM:SS.ffffff", naive UTC, as the store's UtcDateTime keeps times on SQLite. */
static int time_text(PyObject *value, char *at)
{
    if (!PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "a time must be an int of microseconds");
        return -1;
    }
    long long micros = AS_INT64(value);
    if (micros == -1 && PyErr_Occurred())
        return -1;
    if (micros < MIN_MICROS || micros > MAX_MICROS) {
        PyErr_SetString(PyExc_ValueError, "a time beyond years 1 to 9999");
        return -1;
    }
    long long seconds = micros >= 0 ? micros / 1000000 : -((-micros + 999999) / 1000000);
    long long days = seconds >= 0 ? seconds / 86400 : -((-seconds + 86399) / 86400);
    long long of_day = seconds - days * 86400, year;
    int month, day;
    civil_date(days, &year, &month, &day);
    put_digits(at, year, 4);
    at[4] = '-';
    put_digits(at + 5, month, 2);
    at[7] = '-';
    put_digits(at + 8, day, 2);
    at[10] = ' ';
    put_digits(at + 11, of_day / 3600, 2);
    at[13] = ':';
    put_digits(at + 14, of_day / 60 % 60, 2);
    at[16] = ':';
    put_digits(at + 17, of_day % 60, 2);
    at[19] = '.';
    put_digits(at + 20, micros - seconds * 1000000, 6);
    return 0;
}

static int id_text(PyObject *value, char *at)
{
    static const char hex[] = "0123456789abcdef";
    char *bytes;
    Py_ssize_t size;
    if (!PyBytes_Check(value) || PyBytes_AsStringAndSize(value, &bytes, &size) < 0 ||
        size != 16) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "an id must be 16 bytes or None");
        return -1;
    }
    for (int i = 0; i < 16; i++) {
        at[2 * i] = hex[(unsigned char)bytes[i] >> 4];
        at[2 * i + 1] = hex[(unsigned char)bytes[i] & 15];
    }
    return 0;
}

static int RowStatement_init(RowStatement *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"connection", "sql", "rows", "width", "kinds", NULL};
    PyObject *connection;
    const char *sql, *kinds = NULL;
    Py_ssize_t size, kinds_size = 0;
    int rows, width;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Os#ii|s#:RowStatement", keywords,
                                     &connection, &sql, &size, &rows, &width, &kinds,
                                     &kinds_size))
        return -1;
    if (!attached) {
        PyErr_SetString(PyExc_RuntimeError, "attach() first");
        return -1;
    }
    if (self->statement != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "already prepared");
        return -1;
    }
    if (rows < 1 || width < 1 || width > MAX_WIDTH || rows > 100000 || size > INT_MAX - 1) {
        PyErr_SetString(PyExc_ValueError, "rows and width out of range");
        return -1;
    }
    if (kinds != NULL && kinds_size != width) {
        PyErr_SetString(PyExc_ValueError, "kinds must name every column");
        return -1;
    }
    int row_text = 0;
    for (int column = 0; column < width; column++) {
        char kind = kinds == NULL ? KIND_VALUE : kinds[column];
        if (kind != KIND_VALUE && kind != KIND_TIME && kind != KIND_ID) {
            PyErr_SetString(PyExc_ValueError, "a column's kind is one of v, t, h");
            return -1;
        }
        self->kinds[column] = kind;
        row_text += kind == KIND_TIME ? TIME_TEXT : kind == KIND_ID ? ID_TEXT : 0;
    }
    char *text = NULL;
    if (row_text && (text = PyMem_Malloc((size_t)row_text * (size_t)rows)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    sqlite3 *db = handle_of(connection);
    if (db == NULL) {
        PyErr_SetString(PyExc_ValueError, "the connection is closed");
        return -1;
    }
    sqlite3_stmt *statement = NULL;
    if (prepare_v3(db, sql, (int)size + 1, SQLITE_PREPARE_PERSISTENT, &statement, NULL) !=
        SQLITE_OK) {
        PyMem_Free(text);
        fail(db);
        return -1;
    }
    if (statement == NULL || bind_parameter_count(statement) != rows * width) {
        PyMem_Free(text);
        finalize(statement);
        PyErr_SetString(PyExc_ValueError, "the statement does not take rows * width values");
        return -1;
    }
    self->text = text;
    self->row_text = row_text;
    Py_INCREF(connection);
    self->connection = connection;
    self->db = db;
    self->statement = statement;
    self->rows = rows;
    self->width = width;
    return 0;
}

static void release(RowStatement *self)
{
    if (self->statement != NULL) {
        finalize(self->statement);
        self->statement = NULL;
    }
    PyMem_Free(self->text);
    self->text = NULL;
    Py_CLEAR(self->connection);
}

static void RowStatement_dealloc(RowStatement *self)
{
    PyTypeObject *type = Py_TYPE((PyObject *)self);
    release(self);
    freefunc free_slot = (freefunc)PyType_GetSlot(type, Py_tp_free);
    free_slot(self);
    Py_DECREF(type);
}

static int bind_value(sqlite3_stmt *statement, int index, PyObject *value)
{
    if (value == Py_None)
        return bind_null(statement, index);
    if (PyUnicode_Check(value)) {
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(value, &size);
        if (text == NULL)
            return -1;
        if (size > INT_MAX) {
            PyErr_SetString(PyExc_OverflowError, "text too long for SQLite");
            return -1;
        }
        return bind_text(statement, index, text, (int)size, SQLITE_STATIC);
    }
    if (PyLong_Check(value)) {
        long long number = AS_INT64(value);
        if (number == -1 && PyErr_Occurred())
            return -1;
        return bind_int64(statement, index, number);
    }
    if (PyFloat_Check(value))
        return bind_double(statement, index, PyFloat_AsDouble(value));
    if (PyBytes_Check(value)) {
        Py_ssize_t size = PyBytes_Size(value);
        if (size > INT_MAX) {
            PyErr_SetString(PyExc_OverflowError, "bytes too long for SQLite");
            return -1;
        }
        return bind_blob(statement, index, PyBytes_AsString(value), (int)size, SQLITE_STATIC);
    }
    PyErr_SetString(PyExc_TypeError, "cannot bind a value of this type");
    return -1;
}

/* insert(rows): step the statement over a list of row tuples, `rows` at a time. */
static PyObject *RowStatement_insert(RowStatement *self, PyObject *list)
{
    sqlite3_stmt *statement = self->statement;
    if (statement == NULL) {
        PyErr_SetString(PyExc_ValueError, "the statement is closed");
        return NULL;
    }
    if (handle_of(self->connection) != self->db) {
        PyErr_SetString(PyExc_ValueError, "the connection was closed");
        return NULL;
    }
    if (!PyList_CheckExact(list)) {
        PyErr_SetString(PyExc_TypeError, "rows must be a list");
        return NULL;
    }
    Py_ssize_t count = PyList_Size(list);
    if (count % self->rows) {
        PyErr_Format(PyExc_ValueError, "%zd rows are not steps of %d", count, self->rows);
        return NULL;
    }
    /* A tuple of the rows holds every bound value alive until the step is done, whatever
     * happens to the list while the GIL is released. */
    PyObject *rows = PyList_AsTuple(list);
    if (rows == NULL)
        return NULL;
    PyObject *result = NULL;
    for (Py_ssize_t start = 0; start < count; start += self->rows) {
        int index = 1;
        char *text = self->text;
        for (Py_ssize_t at = start; at < start + self->rows; at++) {
            PyObject *row = PyTuple_GetItem(rows, at);
            if (!PyTuple_Check(row) || PyTuple_Size(row) != self->width) {
                PyErr_Format(PyExc_ValueError, "row %zd is not a tuple of %d values", at,
                             self->width);
                goto done;
            }
            for (int column = 0; column < self->width; column++, index++) {
                PyObject *value = PyTuple_GetItem(row, column);
                char kind = self->kinds[column];
                int code;
                if (kind == KIND_VALUE || value == Py_None) {
                    code = kind == KIND_TIME ? -1 : bind_value(statement, index, value);
                    if (kind == KIND_TIME)
                        PyErr_SetString(PyExc_ValueError, "a time may not be None");
                } else {
                    int length = kind == KIND_TIME ? TIME_TEXT : ID_TEXT;
                    code = (kind == KIND_TIME ? time_text(value, text) : id_text(value, text));
                    if (code == 0)
                        code = bind_text(statement, index, text, length, SQLITE_STATIC);
                    text += length;
                }
                if (code < 0)
                    goto done;
                if (code != SQLITE_OK) {
                    fail(self->db);
                    goto done;
                }
            }
        }
        int stepped, code;
        Py_BEGIN_ALLOW_THREADS
        stepped = step(statement);
        /* After a failed step, reset gives the error's own code and leaves its message. */
        code = reset(statement);
        Py_END_ALLOW_THREADS
        if (code != SQLITE_OK) {
            fail(self->db);
            goto done;
        }
        if (stepped != SQLITE_DONE) {
            PyErr_Format(PyExc_ValueError, "the statement answered %d, not done", stepped);
            goto done;
        }
    }
    result = Py_None;
    Py_INCREF(result);
done:
    /* No binding may point at the caller's values once they can go. */
    clear_bindings(statement);
    if (result == NULL)
        reset(statement);
    Py_DECREF(rows);
    return result;
}

static PyObject *RowStatement_close(RowStatement *self, PyObject *unused)
{
    release(self);
    Py_RETURN_NONE;
}

static PyMethodDef RowStatement_methods[] = {
    {"insert", (PyCFunction)RowStatement_insert, METH_O,
     "Insert a list of row tuples, a multiple of the statement's rows."},
    {"close", (PyCFunction)RowStatement_close, METH_NOARGS, "Finalize the statement."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot RowStatement_slots[] = {
    {Py_tp_doc, "An INSERT of `rows` rows of `width` values, prepared on a sqlite3 connection."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, RowStatement_init},
    {Py_tp_dealloc, RowStatement_dealloc},
    {Py_tp_methods, RowStatement_methods},
    {0, NULL},
};

static PyType_Spec RowStatement_spec = {
    "kmsgate.store._sqlite_rows.RowStatement",
    sizeof(RowStatement),
    0,
    Py_TPFLAGS_DEFAULT,
    RowStatement_slots,
};

static PyMethodDef module_methods[] = {
    {"attach", attach, METH_VARARGS, "Resolve SQLite's calls from the _sqlite3 module's library."},
    {"limit_of", limit_of, METH_VARARGS, "sqlite3_limit(handle, id, -1) of a connection."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "kmsgate.store._sqlite_rows", NULL, -1, module_methods,
};

PyMODINIT_FUNC PyInit__sqlite_rows(void)
{
    PyObject *module = PyModule_Create(&module_definition);
    if (module == NULL)
        return NULL;
    PyObject *type = PyType_FromSpec(&RowStatement_spec);
    if (type == NULL || PyModule_AddObjectRef(module, "RowStatement", type) < 0) {
        Py_XDECREF(type);
        Py_DECREF(module);
        return NULL;
    }
    Py_DECREF(type);
    return module;
}
