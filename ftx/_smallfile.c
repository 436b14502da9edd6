/* A whole small file in one call: what ftx/fileops.py ``py_link_new`` does in five Python
 * calls (nameless O_TMPFILE open in the held directory, write, fchmod if needed, futimens,
 * linkat through /proc/self/fd, close), with the GIL released once around the system calls.
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
#include <sys/stat.h>
#include <unistd.h>

#ifndef O_TMPFILE
#define FTX_NO_TMPFILE 1
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
    int fd, err = 0;
    const char *buf = (const char *)data.buf;
    Py_ssize_t left = data.len;
    struct timespec ts[2];
    char proc[40];

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
            err = errno;
        Py_END_ALLOW_THREADS
        if (fd >= 0 || err != EINTR)
            break;
        if (PyErr_CheckSignals() != 0) {
            PyBuffer_Release(&data);
            return NULL;
        }
    }
    if (fd < 0) {
        PyBuffer_Release(&data);
        if (err == EOPNOTSUPP || err == EISDIR || err == EINVAL)
            Py_RETURN_FALSE;
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    while (left > 0) { /* short writes continue where they stopped; EINTR lets Python's handlers run */
        Py_ssize_t n;
        Py_BEGIN_ALLOW_THREADS
        n = write(fd, buf, (size_t)left);
        if (n < 0)
            err = errno;
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (err == EINTR && PyErr_CheckSignals() == 0)
                continue;
            goto fail;
        }
        if (n == 0) {
            err = EIO;
            goto fail;
        }
        buf += n;
        left -= n;
    }
    PyBuffer_Release(&data);
    data.obj = NULL;
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    Py_BEGIN_ALLOW_THREADS
    if (create != (mode & 0777) && fchmod(fd, (mode_t)(mode & 0777)) < 0)
        err = errno;
    else if (futimens(fd, ts) < 0)
        err = errno;
    else if (linkat(AT_FDCWD, proc, dir_fd, name, AT_SYMLINK_FOLLOW) < 0)
        err = errno;
    close(fd);
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_TRUE;

fail:
    if (data.obj != NULL)
        PyBuffer_Release(&data);
    close(fd);
    if (PyErr_Occurred()) /* a signal handler raised */
        return NULL;
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
#endif
}

static PyMethodDef methods[] = {
    {"link_new", link_new, METH_VARARGS,
     "link_new(dir_fd, name, data, create_mode, mode, mtime_ns) -> bool: a whole small file, "
     "nameless then linked at name (see ftx/fileops.py py_link_new)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "ftx._smallfile", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__smallfile(void)
{
    return PyModule_Create(&module);
}
