/*
 * kmsgate.store._draft_fold: a batch of record drafts folded in one pass, for the SQLite
 * writer's raw rows (activation_fold.py falls back to its Python fold without it).
 *
 * The Python fold goes column by column in C-level loops and still spends about 10 600
 * instructions a record (docs/benchmarks.md): a tuple per record for every column and count,
 * a hash and a dict probe per count. Here each draft is read once, and runs of equal keys
 * are counted before a dict is touched: a batch is, as a rule, one node, one hour, one
 * product, one result, and a client's requests come together.
 *
 * fold(drafts, activated) -> (rows, clients, hours, products, results, protocols, days):
 *   rows      the activation rows (ACTIVATION_COLUMNS order, draft time and ids as they are)
 *   clients   {cmid: [first time, newest draft, its time, count]} (newest: the later on ties)
 *   hours     {(hour since the epoch, node): count}
 *   products  {(family, SKU name): count}
 *   results   {result: count};  protocols {protocol or None: count}
 *   days      {(day since the epoch, SKU id, cmid): SKU name of the day's first served
 *             request} (the licence report's months are made of them per key, in Python)
 */
#define PY_SSIZE_T_CLEAN
/* Stable ABI of CPython 3.11: one abi3 build, like the other extensions. */
#define Py_LIMITED_API 0x030B0000
#include <Python.h>

#define DRAFT_FIELDS 15
#define HOUR_MICROS 3600000000LL
#define DAY_MICROS 86400000000LL

/* Draft fields (store/drafts.py RecordDraft). */
enum { TIME, CMID, MACHINE, ADDRESS, APPLICATION, SKU_ID, SKU_NAME, KMS_ID, FAMILY,
       STATUS, PROTOCOL, RESULT, HRESULT, EPID, NODE };
/* ACTIVATION_COLUMNS, as draft fields. */
static const int ROW_FIELDS[] = {TIME, CMID, MACHINE, ADDRESS, SKU_ID, SKU_NAME, STATUS,
                                 PROTOCOL, RESULT, HRESULT, NODE};
#define ROW_WIDTH ((Py_ssize_t)(sizeof ROW_FIELDS / sizeof ROW_FIELDS[0]))

static long long floor_div(long long value, long long by)
{
    long long quotient = value / by;
    return (value % by != 0 && (value < 0) != (by < 0)) ? quotient - 1 : quotient;
}

/* PyLong_AsLongLong goes through a byte array for any value past 2**30 (some 200
 * instructions); PyLong_AsLong reads the digits, where a long has 64 bits. */
#if LONG_MAX >= 0x7fffffffffffffffLL
#define AS_INT64 PyLong_AsLong
#else
#define AS_INT64 PyLong_AsLongLong
#endif

/* 1 if equal (the same object, as a rule), 0 if not, -1 on error; NULL equals only NULL. */
static int same(PyObject *x, PyObject *y)
{
    if (x == y)
        return 1;
    if (x == NULL || y == NULL)
        return 0;
    return PyObject_RichCompareBool(x, y, Py_EQ);
}

static int add_count(PyObject *counts, PyObject *key, Py_ssize_t count)
{
    PyObject *seen = PyDict_GetItemWithError(counts, key);
    if (seen == NULL && PyErr_Occurred())
        return -1;
    if (seen != NULL) {
        Py_ssize_t before = PyLong_AsSsize_t(seen);
        if (before == -1 && PyErr_Occurred())
            return -1;
        count += before;
    }
    PyObject *total = PyLong_FromSsize_t(count);
    if (total == NULL)
        return -1;
    int failed = PyDict_SetItem(counts, key, total);
    Py_DECREF(total);
    return failed;
}

/* A run of equal keys, counted before its dict is touched: an object, a pair of objects,
 * or a number and an object (an hour and a node). The key's objects are borrowed from
 * drafts that outlive the pass. */
typedef enum { SINGLE, PAIR, NUMBERED } KeyShape;

typedef struct {
    PyObject *counts;
    KeyShape shape;
    long long number;
    PyObject *first, *second;
    Py_ssize_t run;
} Tally;

static int tally_flush(Tally *tally)
{
    if (tally->run == 0)
        return 0;
    PyObject *key = tally->shape == PAIR       ? PyTuple_Pack(2, tally->first, tally->second)
                    : tally->shape == NUMBERED ? Py_BuildValue("(LO)", tally->number, tally->first)
                                               : Py_NewRef(tally->first);
    if (key == NULL)
        return -1;
    int failed = add_count(tally->counts, key, tally->run);
    Py_DECREF(key);
    tally->run = 0;
    return failed;
}

static int tally_add(Tally *tally, long long number, PyObject *first, PyObject *second)
{
    if (tally->run) {
        int equal = tally->shape != NUMBERED || number == tally->number;
        if (equal)
            equal = same(tally->first, first);
        if (equal > 0 && tally->shape == PAIR)
            equal = same(tally->second, second);
        if (equal < 0)
            return -1;
        if (equal) {
            tally->run++;
            return 0;
        }
        if (tally_flush(tally) < 0)
            return -1;
    }
    tally->number = number;
    tally->first = first;
    tally->second = second;
    tally->run = 1;
    return 0;
}

/* One client's consecutive requests. */
typedef struct {
    PyObject *cmid, *newest; /* borrowed */
    long long first, newest_time;
    Py_ssize_t count;
} ClientRun;

/* PyList_SetItem of a new reference, which may be NULL (an error already set). */
static int set_item(PyObject *list, Py_ssize_t at, PyObject *value)
{
    return value == NULL ? -1 : PyList_SetItem(list, at, value);
}

static int client_merge(PyObject *clients, ClientRun *run)
{
    if (run->count == 0)
        return 0;
    PyObject *seen = PyDict_GetItemWithError(clients, run->cmid);
    if (seen == NULL) {
        if (PyErr_Occurred())
            return -1;
        PyObject *entry = Py_BuildValue("[LOLn]", run->first, run->newest, run->newest_time,
                                        run->count);
        if (entry == NULL)
            return -1;
        int failed = PyDict_SetItem(clients, run->cmid, entry);
        Py_DECREF(entry);
        run->count = 0;
        return failed;
    }
    /* Seen in an earlier run: this run's requests came later, so it wins ties. */
    long long first = PyLong_AsLongLong(PyList_GetItem(seen, 0));
    long long newest_time = PyLong_AsLongLong(PyList_GetItem(seen, 2));
    Py_ssize_t count = PyLong_AsSsize_t(PyList_GetItem(seen, 3));
    if (PyErr_Occurred())
        return -1;
    Py_ssize_t total = count + run->count;
    run->count = 0;
    if (run->first < first && set_item(seen, 0, PyLong_FromLongLong(run->first)) < 0)
        return -1;
    if (run->newest_time >= newest_time) {
        if (set_item(seen, 1, Py_NewRef(run->newest)) < 0 ||
            set_item(seen, 2, PyLong_FromLongLong(run->newest_time)) < 0)
            return -1;
    }
    return set_item(seen, 3, PyLong_FromSsize_t(total));
}

/* The state of one pass: the outputs and the runs being counted. */
typedef struct {
    PyObject *rows, *clients, *hours, *products, *results, *protocols, *days;
    Tally hour_run, product_run, result_run, protocol_run;
    ClientRun client_run;
    long long day; /* the last served request's */
    PyObject *served_sku, *served_cmid; /* the last served request's, borrowed */
    int served;
} Pass;

static int count_client(Pass *pass, long long micros, PyObject *cmid, PyObject *draft)
{
    ClientRun *run = &pass->client_run;
    if (cmid == Py_None)
        return 0;
    if (run->count) {
        int equal = same(run->cmid, cmid);
        if (equal < 0)
            return -1;
        if (equal) {
            run->count++;
            if (micros < run->first)
                run->first = micros;
            if (micros >= run->newest_time) {
                run->newest = draft;
                run->newest_time = micros;
            }
            return 0;
        }
        if (client_merge(pass->clients, run) < 0)
            return -1;
    }
    *run = (ClientRun){cmid, draft, micros, micros, 1};
    return 0;
}

/* The licence report's (day, SKU id, CMID) of a served request, the first one's name. */
static int note_served(Pass *pass, long long micros, PyObject *draft)
{
    PyObject *sku = PyTuple_GetItem(draft, SKU_ID), *cmid = PyTuple_GetItem(draft, CMID);
    if (sku == Py_None || cmid == Py_None)
        return 0;
    long long day = floor_div(micros, DAY_MICROS);
    if (pass->served && day == pass->day) {
        int equal = same(pass->served_sku, sku);
        if (equal > 0)
            equal = same(pass->served_cmid, cmid);
        if (equal != 0)
            return equal < 0 ? -1 : 0; /* the same key as the last served request's */
    }
    pass->served = 1;
    pass->day = day;
    pass->served_sku = sku;
    pass->served_cmid = cmid;
    PyObject *key = Py_BuildValue("(LOO)", day, sku, cmid);
    if (key == NULL)
        return -1;
    int failed = 0;
    PyObject *seen = PyDict_GetItemWithError(pass->days, key);
    if (seen == NULL)
        failed = PyErr_Occurred() ? -1
                                  : PyDict_SetItem(pass->days, key,
                                                   PyTuple_GetItem(draft, SKU_NAME));
    Py_DECREF(key);
    return failed;
}

static PyObject *activation_row(PyObject *draft)
{
    PyObject *row = PyTuple_New(ROW_WIDTH);
    if (row == NULL)
        return NULL;
    for (Py_ssize_t column = 0; column < ROW_WIDTH; column++) {
        PyObject *value = PyTuple_GetItem(draft, ROW_FIELDS[column]);
        if (value == NULL || PyTuple_SetItem(row, column, Py_NewRef(value)) < 0) {
            Py_DECREF(row);
            return NULL;
        }
    }
    return row;
}

static int fold_draft(Pass *pass, PyObject *draft, PyObject *activated)
{
    if (!PyTuple_Check(draft) || PyTuple_Size(draft) != DRAFT_FIELDS) {
        PyErr_SetString(PyExc_TypeError, "a record draft is a tuple of 15 fields");
        return -1;
    }
    long long micros = AS_INT64(PyTuple_GetItem(draft, TIME));
    if (micros == -1 && PyErr_Occurred())
        return -1;
    PyObject *row = activation_row(draft);
    if (row == NULL)
        return -1;
    int failed = PyList_Append(pass->rows, row);
    Py_DECREF(row);
    PyObject *result = PyTuple_GetItem(draft, RESULT);
    if (failed < 0 || count_client(pass, micros, PyTuple_GetItem(draft, CMID), draft) < 0 ||
        tally_add(&pass->hour_run, floor_div(micros, HOUR_MICROS),
                  PyTuple_GetItem(draft, NODE), NULL) < 0 ||
        tally_add(&pass->product_run, 0, PyTuple_GetItem(draft, FAMILY),
                  PyTuple_GetItem(draft, SKU_NAME)) < 0 ||
        tally_add(&pass->result_run, 0, result, NULL) < 0 ||
        tally_add(&pass->protocol_run, 0, PyTuple_GetItem(draft, PROTOCOL), NULL) < 0)
        return -1;
    int served = same(result, activated);
    if (served < 0)
        return -1;
    return served ? note_served(pass, micros, draft) : 0;
}

static PyObject *fold(PyObject *module, PyObject *args)
{
    PyObject *drafts, *activated;
    if (!PyArg_ParseTuple(args, "O!O", &PyList_Type, &drafts, &activated))
        return NULL;
    Pass pass = {0};
    pass.rows = PyList_New(0);
    pass.clients = PyDict_New();
    pass.hours = PyDict_New();
    pass.products = PyDict_New();
    pass.results = PyDict_New();
    pass.protocols = PyDict_New();
    pass.days = PyDict_New();
    PyObject *result = NULL;
    if (!pass.rows || !pass.clients || !pass.hours || !pass.products || !pass.results ||
        !pass.protocols || !pass.days)
        goto done;
    pass.hour_run = (Tally){pass.hours, NUMBERED, 0, NULL, NULL, 0};
    pass.product_run = (Tally){pass.products, PAIR, 0, NULL, NULL, 0};
    pass.result_run = (Tally){pass.results, SINGLE, 0, NULL, NULL, 0};
    pass.protocol_run = (Tally){pass.protocols, SINGLE, 0, NULL, NULL, 0};
    /* The caller's list, read by index: no draft is released while it is folded. */
    Py_ssize_t count = PyList_Size(drafts);
    for (Py_ssize_t at = 0; at < count; at++) {
        if (fold_draft(&pass, PyList_GetItem(drafts, at), activated) < 0)
            goto done;
    }
    if (client_merge(pass.clients, &pass.client_run) < 0 || tally_flush(&pass.hour_run) < 0 ||
        tally_flush(&pass.product_run) < 0 || tally_flush(&pass.result_run) < 0 ||
        tally_flush(&pass.protocol_run) < 0)
        goto done;
    result = PyTuple_Pack(7, pass.rows, pass.clients, pass.hours, pass.products, pass.results,
                          pass.protocols, pass.days);
done:
    Py_XDECREF(pass.rows);
    Py_XDECREF(pass.clients);
    Py_XDECREF(pass.hours);
    Py_XDECREF(pass.products);
    Py_XDECREF(pass.results);
    Py_XDECREF(pass.protocols);
    Py_XDECREF(pass.days);
    return result;
}

static PyMethodDef module_methods[] = {
    {"fold", fold, METH_VARARGS,
     "fold(drafts, activated) -> (rows, clients, hours, products, results, protocols, days)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "kmsgate.store._draft_fold", NULL, -1, module_methods,
};

PyMODINIT_FUNC PyInit__draft_fold(void)
{
    return PyModule_Create(&module_definition);
}
