/* A whole small file in one call (link_new), or a run of them in one directory (link_run): what
 * ftx/fileops.py ``py_link_new`` does in five Python calls (nameless O_TMPFILE open in the held
 * directory, write, fchmod if needed, futimens, linkat of the descriptor -- AT_EMPTY_PATH where
 * allowed, else through /proc/self/fd -- close), with the GIL released around the system calls.
 *
 * Same contract as the Python version: True once the file is linked at ``name``; False (nothing
 * done) where the directory's file system has no O_TMPFILE (EOPNOTSUPP, EISDIR, EINVAL); any
 * other failure raises OSError with its errno (FileExistsError when ``name`` exists), and the
 * nameless file vanishes with its descriptor.  Optional: without it (no compiler, or
 * FTX_PURE_PYTHON=1) ftx runs the Python version.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef O_TMPFILE
#define FTX_NO_TMPFILE 1
#endif

/* linkat(fd, "", AT_EMPTY_PATH) links the open file itself, without resolving /proc/self/fd/N (a
 * path walk less: ~1.5 us of a ~16 us file).  It needs CAP_DAC_READ_SEARCH (before Linux 6.10,
 * which also lets the file's opener): without it, ENOENT, and once the /proc link then works the
 * process uses /proc from then on.  A hint shared by threads: a stale read costs one more try. */
static int empty_path = 1;

#ifndef FTX_NO_TMPFILE

/* Link the open nameless file ``fd`` at ``name`` in ``dir_fd``: 0, or the errno (EEXIST: taken). */
static int
link_open_file(int fd, int dir_fd, const char *name)
{
    int tried = 0;
    char proc[40];

#ifdef AT_EMPTY_PATH
    if (empty_path) {
        if (linkat(fd, "", dir_fd, name, AT_EMPTY_PATH) == 0)
            return 0;
        if (errno != ENOENT && errno != EPERM)
            return errno;
        tried = 1;
    }
#endif
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, proc, dir_fd, name, AT_SYMLINK_FOLLOW) < 0)
        return errno;
    if (tried)
        empty_path = 0; /* /proc links what AT_EMPTY_PATH would not: not allowed here */
    return 0;
}

/* One small file: 1 linked at ``name``; 0 nothing done, the file system has no O_TMPFILE;
 * -1 failed with *err; -2 a signal handler raised (the Python exception is set). */
static int
one_file(int dir_fd, const char *name, const char *buf, Py_ssize_t left, int create, int mode,
         long long mtime_ns, int *err)
{
    int fd;
    struct timespec ts[2];

    *err = 0;
    ts[0].tv_sec = (time_t)(mtime_ns / 1000000000LL);
    ts[0].tv_nsec = (long)(mtime_ns % 1000000000LL);
    if (ts[0].tv_nsec < 0) { /* floor division, as os.utime(ns=...) */
        ts[0].tv_sec -= 1;
        ts[0].tv_nsec += 1000000000L;
    }
    ts[1] = ts[0];

    for (;;) { /* EINTR (a signal during an open on NFS or FUSE): Python's handlers run, then again, as os.open */
        Py_BEGIN_ALLOW_THREADS
        fd = openat(dir_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, (mode_t)create);
        if (fd < 0)
            *err = errno;
        Py_END_ALLOW_THREADS
        if (fd >= 0 || *err != EINTR)
            break;
        if (PyErr_CheckSignals() != 0)
            return -2;
    }
    if (fd < 0) {
        if (*err == EOPNOTSUPP || *err == EISDIR || *err == EINVAL) {
            *err = 0;
            return 0;
        }
        return -1;
    }
    while (left > 0) { /* short writes continue where they stopped; EINTR lets Python's handlers run */
        Py_ssize_t n;
        Py_BEGIN_ALLOW_THREADS
        n = write(fd, buf, (size_t)left);
        if (n < 0)
            *err = errno;
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (*err == EINTR) {
                if (PyErr_CheckSignals() == 0)
                    continue;
                close(fd);
                return -2;
            }
            close(fd);
            return -1;
        }
        if (n == 0) {
            *err = EIO;
            close(fd);
            return -1;
        }
        buf += n;
        left -= n;
    }
    Py_BEGIN_ALLOW_THREADS
    if (create != (mode & 0777) && fchmod(fd, (mode_t)(mode & 0777)) < 0)
        *err = errno;
    else if (futimens(fd, ts) < 0)
        *err = errno;
    else
        *err = link_open_file(fd, dir_fd, name);
    close(fd);
    Py_END_ALLOW_THREADS
    return *err ? -1 : 1;
}
#endif

static PyObject *
link_new(PyObject *self, PyObject *args)
{
    int dir_fd, create, mode;
    long long mtime_ns;
    const char *name;
    Py_buffer data;

    if (!PyArg_ParseTuple(args, "iyy*iiL:link_new", &dir_fd, &name, &data, &create, &mode, &mtime_ns))
        return NULL;
#ifdef FTX_NO_TMPFILE
    PyBuffer_Release(&data);
    Py_RETURN_FALSE;
#else
    int err, r = one_file(dir_fd, name, (const char *)data.buf, data.len, create, mode, mtime_ns, &err);
    PyBuffer_Release(&data);
    if (r == 1)
        Py_RETURN_TRUE;
    if (r == 0)
        Py_RETURN_FALSE;
    if (r == -2)
        return NULL;
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
#endif
}

/* link_run(dir_fd, names, datas, modes, mtimes, umask) -> (done, failures, exc)
 *
 * A run of small files in one directory: ``link_new`` for each, in order, with the creation mode
 * computed as fileops.creation_mode does (``umask`` -1: unknown, create 0600 then fchmod).
 * ``failures``: a list of (index, errno) of the files that failed (EEXIST: something is at the name);
 * the others up to ``done`` are linked.  ``done`` < len(names): processing stopped at that index,
 * nothing done for it or after it -- the file system has no O_TMPFILE (``exc`` None: use a
 * temporary), or a signal handler raised ``exc`` (re-raise it). */
static PyObject *
link_run(PyObject *self, PyObject *args)
{
    int dir_fd, umask_;
    PyObject *names, *datas, *modes, *mtimes;

    if (!PyArg_ParseTuple(args, "iO!O!O!O!i:link_run", &dir_fd, &PyList_Type, &names, &PyList_Type, &datas,
                          &PyList_Type, &modes, &PyList_Type, &mtimes, &umask_))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(names);
    if (PyList_GET_SIZE(datas) != n || PyList_GET_SIZE(modes) != n || PyList_GET_SIZE(mtimes) != n) {
        PyErr_SetString(PyExc_ValueError, "link_run: lists of different lengths");
        return NULL;
    }
    PyObject *failures = PyList_New(0);
    if (failures == NULL)
        return NULL;
    Py_ssize_t i = 0;
    PyObject *exc = Py_None;
    Py_INCREF(exc);
#ifndef FTX_NO_TMPFILE
    for (; i < n; i++) {
        PyObject *nm = PyList_GET_ITEM(names, i);
        if (!PyBytes_Check(nm)) {
            PyErr_SetString(PyExc_TypeError, "link_run: names must be bytes");
            goto error;
        }
        const char *name = PyBytes_AS_STRING(nm);
        if ((Py_ssize_t)strlen(name) != PyBytes_GET_SIZE(nm)) {
            PyErr_SetString(PyExc_ValueError, "link_run: embedded null byte");
            goto error;
        }
        int mode = (int)PyLong_AsLong(PyList_GET_ITEM(modes, i));
        long long mtime_ns = PyLong_AsLongLong(PyList_GET_ITEM(mtimes, i));
        if (PyErr_Occurred())
            goto error;
        int m = mode & 0777;
        int create = (umask_ >= 0 && !(m & umask_)) ? m : 0600;
        Py_buffer data;
        if (PyObject_GetBuffer(PyList_GET_ITEM(datas, i), &data, PyBUF_SIMPLE) < 0)
            goto error;
        int err, r = one_file(dir_fd, name, (const char *)data.buf, data.len, create, mode, mtime_ns, &err);
        PyBuffer_Release(&data);
        if (r == 1)
            continue;
        if (r == 0)
            break;
        if (r == -2) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            if (tb != NULL)
                PyException_SetTraceback(value, tb);
            Py_XDECREF(type);
            Py_XDECREF(tb);
            Py_DECREF(exc);
            exc = value != NULL ? value : Py_None;
            if (value == NULL)
                Py_INCREF(exc);
            break;
        }
        PyObject *f = Py_BuildValue("(ni)", i, err);
        if (f == NULL || PyList_Append(failures, f) < 0) {
            Py_XDECREF(f);
            goto error;
        }
        Py_DECREF(f);
    }
#endif
    {
        PyObject *out = Py_BuildValue("(nNN)", i, failures, exc);
        return out;
    }
error:
    Py_DECREF(failures);
    Py_DECREF(exc);
    return NULL;
}

static PyObject *
use_empty_path(PyObject *self, PyObject *args)
{
    int on, was = empty_path;

    if (!PyArg_ParseTuple(args, "p:use_empty_path", &on))
        return NULL;
    empty_path = on;
    return PyBool_FromLong(was);
}

static PyMethodDef methods[] = {
    {"link_new", link_new, METH_VARARGS,
     "link_new(dir_fd, name, data, create_mode, mode, mtime_ns) -> bool: a whole small file, "
     "nameless then linked at name (see ftx/fileops.py py_link_new)."},
    {"use_empty_path", use_empty_path, METH_VARARGS,
     "use_empty_path(on) -> bool: whether to link with AT_EMPTY_PATH first (else /proc/self/fd); the "
     "previous setting.  For tests: it turns itself off where the process may not."},
    {"link_run", link_run, METH_VARARGS,
     "link_run(dir_fd, names, datas, modes, mtimes, umask) -> (done, failures, exc): link_new for a run "
     "of small files in one directory (see ftx/fileops.py py_link_run)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "ftx._smallfile", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__smallfile(void)
{
    return PyModule_Create(&module);
}
