/* The sender's run of small files in one call: what ftx/smallrun.py ``py_frames`` does per file
 * (openat by name under the listed directory's descriptor, one read of size + 1 bytes, close,
 * XXH3-128 of the bytes, one SMALL_FILE frame appended to ``out``), for as many of a directory's
 * listed items in a row as are plain: a regular file listed here, of at most ``limit`` bytes,
 * read at its listed size.  The file's bytes are read straight into ``out`` at their place in
 * the frame (no copy); the two hashes are the ``xxhash`` module's functions, called from here.
 *
 * The first item that is not plain (another kind, too large, an in-tree link followed elsewhere,
 * an open or read that fails, a length other than listed) ends the call, its frame undone: the
 * caller sends it by the Python path, which says why, and calls again after it.  Same contract
 * and safety as ``source.SmallReader.read``: O_NOFOLLOW (a name swapped for a symlink is never
 * followed), O_NONBLOCK (a FIFO swapped in cannot block), O_NOATIME dropped on EPERM.
 * Optional: without it (no compiler, or FTX_PURE_PYTHON=1) ftx runs ``py_frames``.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define HEADER_SIZE 16
#define ENTRY_SIZE 36 /* manifest.ENTRY: >IBBHIqQIHH */
#define DIGEST_SIZE 16
#define SMALL_FILE 0x07
#define KIND_FILE 1

static void
put16(unsigned char *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }

static void
put32(unsigned char *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }

static void
put64(unsigned char *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }

/* frames(dir_fd, flags, items, start, stop, skip, prefix, file_kind, limit, fid, chunk_size,
 *        out, max_out, digest128, hash64) -> (next, flags, count, total, digests)
 * items[start:stop] are source.SourceItem tuples (local, wire, kind, target, mode, size, mtime_ns);
 * the call stops before ``stop``, at the first item that is not plain, or once ``out`` holds
 * ``max_out`` bytes or more.  ``next``: the first item not framed; ``flags``: the open flags
 * (O_NOATIME dropped if refused); ``count`` files framed with ids fid.., ``total`` their bytes,
 * ``digests`` the list of their XXH3-128 digests. */
static PyObject *
frames(PyObject *self, PyObject *args)
{
    int dir_fd, flags;
    PyObject *items, *prefix, *file_kind, *out, *digest128, *hash64;
    Py_ssize_t start, stop, skip, limit, max_out;
    unsigned long long fid, chunk_size;

    if (!PyArg_ParseTuple(args, "iiO!nnnSOnKKO!nOO:frames", &dir_fd, &flags, &PyList_Type, &items, &start, &stop,
                          &skip, &prefix, &file_kind, &limit, &fid, &chunk_size, &PyByteArray_Type, &out,
                          &max_out, &digest128, &hash64))
        return NULL;
    PyObject *digests = PyList_New(0);
    if (digests == NULL)
        return NULL;
    if (start < 0 || skip < 0 || limit < 0 || max_out < 0) {
        Py_DECREF(digests);
        PyErr_SetString(PyExc_ValueError, "frames: start, skip, limit and max_out must be >= 0");
        return NULL;
    }
    if (stop > PyList_GET_SIZE(items))
        stop = PyList_GET_SIZE(items);
    const char *pre = PyBytes_AS_STRING(prefix);
    Py_ssize_t pre_len = PyBytes_GET_SIZE(prefix);
    Py_ssize_t i = start, count = 0;
    long long total = 0;
    /* ``out`` grows once, to what the listed sizes ask (the frames are written at ``used``, and
     * ``out`` cut to it at the end): growing it frame by frame moved its bytes ~8 times over */
    Py_ssize_t used = PyByteArray_GET_SIZE(out), want = used, orig = used;
    Py_buffer pin;
    int pinned = 0;
    for (Py_ssize_t k = start; k < stop && want < max_out; k++) {
        PyObject *item = PyList_GET_ITEM(items, k);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 7 || PyTuple_GET_ITEM(item, 2) != file_kind
            || !PyBytes_Check(PyTuple_GET_ITEM(item, 1)))
            break;
        Py_ssize_t size = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 5));
        if (size < 0 || size > limit) {
            PyErr_Clear();
            break;
        }
        want += HEADER_SIZE + ENTRY_SIZE + PyBytes_GET_SIZE(PyTuple_GET_ITEM(item, 1)) + DIGEST_SIZE + size;
    }
    if (want + 1 > PyByteArray_GET_SIZE(out) && PyByteArray_Resize(out, want + 1) < 0)
        goto fail;

    for (; i < stop && used < max_out; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 7 || PyTuple_GET_ITEM(item, 2) != file_kind)
            break;
        PyObject *local = PyTuple_GET_ITEM(item, 0), *wire = PyTuple_GET_ITEM(item, 1);
        if (!PyBytes_Check(local) || !PyBytes_Check(wire))
            break;
        Py_ssize_t wlen = PyBytes_GET_SIZE(wire);
        const char *w = PyBytes_AS_STRING(wire);
        if (wlen <= skip || wlen > 0xFFFF)
            break;
        const char *name = w + skip;
        Py_ssize_t nlen = wlen - skip;
        /* listed here: local == prefix + name (not an in-tree link followed elsewhere) */
        if (PyBytes_GET_SIZE(local) != pre_len + nlen || memcmp(PyBytes_AS_STRING(local), pre, pre_len) != 0
            || memcmp(PyBytes_AS_STRING(local) + pre_len, name, nlen) != 0 || memchr(name, 0, nlen) != NULL)
            break;
        long long mode = PyLong_AsLongLong(PyTuple_GET_ITEM(item, 4));
        long long size = PyLong_AsLongLong(PyTuple_GET_ITEM(item, 5));
        long long mtime = PyLong_AsLongLong(PyTuple_GET_ITEM(item, 6));
        if (PyErr_Occurred()) {
            PyErr_Clear();
            break;
        }
        if (size < 0 || size > limit || fid + (unsigned long long)count > 0xFFFFFFFFULL)
            break; /* (file ids are 32 bits: past them the Python path raises) */

        Py_ssize_t at = used;
        Py_ssize_t payload = ENTRY_SIZE + wlen + DIGEST_SIZE + (Py_ssize_t)size;
        if (payload > 0xFFFFFFFFLL)
            break;
        /* room for the frame and one byte more (a file that grew shows as a longer read) */
        if (at + HEADER_SIZE + payload + 1 > PyByteArray_GET_SIZE(out)
            && PyByteArray_Resize(out, at + HEADER_SIZE + payload + 1) < 0)
            goto fail;
        unsigned char *f = (unsigned char *)PyByteArray_AS_STRING(out) + at;
        unsigned char *data = f + HEADER_SIZE + ENTRY_SIZE + wlen + DIGEST_SIZE;

        char cname[4097];
        if (nlen >= (Py_ssize_t)sizeof cname)
            break;
        memcpy(cname, name, nlen);
        cname[nlen] = 0;
        memcpy(f + HEADER_SIZE + ENTRY_SIZE, w, wlen); /* (nothing of the item is used without the GIL) */
        int fd, err = 0;
        ssize_t got = 0;
        /* ``out`` cannot be resized (by another thread) while the read fills it without the GIL
         * or the hashes read it */
        if (PyObject_GetBuffer(out, &pin, PyBUF_WRITABLE) < 0)
            goto fail;
        pinned = 1;
        for (;;) {
            Py_BEGIN_ALLOW_THREADS
            fd = openat(dir_fd, cname, flags);
#ifdef O_NOATIME
            if (fd < 0 && errno == EPERM && (flags & O_NOATIME)) { /* O_NOATIME: only for the file's owner */
                flags &= ~O_NOATIME;
                fd = openat(dir_fd, cname, flags);
            }
#endif
            if (fd < 0) {
                err = errno;
            } else {
                do {
                    got = read(fd, data, (size_t)size + 1);
                } while (got < 0 && errno == EINTR);
                if (got < 0)
                    err = errno;
                close(fd);
            }
            Py_END_ALLOW_THREADS
            if (fd >= 0 || err != EINTR)
                break;
            if (PyErr_CheckSignals() != 0) /* as os.open: Python's handlers run, then again */
                goto fail;
        }
        if (fd < 0 || got != size) { /* not as listed: the Python path says why */
            PyBuffer_Release(&pin);
            pinned = 0;
            break;
        }
        f = (unsigned char *)PyByteArray_AS_STRING(out) + at;
        data = f + HEADER_SIZE + ENTRY_SIZE + wlen + DIGEST_SIZE;
        PyObject *view = PyMemoryView_FromMemory((char *)data, (Py_ssize_t)size, PyBUF_READ);
        if (view == NULL)
            goto fail;
        PyObject *digest = PyObject_CallOneArg(digest128, view);
        Py_DECREF(view);
        if (digest == NULL)
            goto fail;
        if (!PyBytes_Check(digest) || PyBytes_GET_SIZE(digest) != DIGEST_SIZE) {
            Py_DECREF(digest);
            PyErr_SetString(PyExc_TypeError, "digest128 must return 16 bytes");
            goto fail;
        }
        unsigned char *e = f + HEADER_SIZE;
        put32(e, (uint32_t)(fid + count));
        e[4] = KIND_FILE;
        e[5] = 0;
        put16(e + 6, 0);
        put32(e + 8, (uint32_t)(mode & 07777));
        put64(e + 12, (uint64_t)mtime);
        put64(e + 20, (uint64_t)size);
        put32(e + 28, (uint32_t)chunk_size);
        put16(e + 32, (uint16_t)wlen);
        put16(e + 34, 0);
        memcpy(e + ENTRY_SIZE + wlen, PyBytes_AS_STRING(digest), DIGEST_SIZE);
        int appended = PyList_Append(digests, digest);
        Py_DECREF(digest);
        if (appended < 0)
            goto fail;
        /* the frame checksum: XXH3-64 of the payload seeded with the header's first 8 bytes */
        uint64_t seed = ((uint64_t)SMALL_FILE << 56) | (uint64_t)payload;
        PyObject *pv = PyMemoryView_FromMemory((char *)e, payload, PyBUF_READ);
        if (pv == NULL)
            goto fail;
        PyObject *pseed = PyLong_FromUnsignedLongLong(seed);
        if (pseed == NULL) {
            Py_DECREF(pv);
            goto fail;
        }
        PyObject *hargs[2] = {pv, pseed};
        PyObject *sum = PyObject_Vectorcall(hash64, hargs, 2, NULL);
        Py_DECREF(pv);
        Py_DECREF(pseed);
        if (sum == NULL)
            goto fail;
        uint64_t check = PyLong_AsUnsignedLongLong(sum);
        Py_DECREF(sum);
        if (check == (uint64_t)-1 && PyErr_Occurred())
            goto fail;
        f[0] = SMALL_FILE;
        f[1] = 0;
        put16(f + 2, 0);
        put32(f + 4, (uint32_t)payload);
        put64(f + 8, check);
        PyBuffer_Release(&pin);
        pinned = 0;
        used = at + HEADER_SIZE + payload;
        count++;
        total += size;
    }
    if (PyByteArray_Resize(out, used) < 0) /* cut to the frames made */
        goto fail;
    return Py_BuildValue("(niLLN)", i, flags, (long long)count, total, digests);

fail: /* ``out`` as it came */
    if (pinned)
        PyBuffer_Release(&pin);
    {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (PyByteArray_GET_SIZE(out) > orig)
            PyByteArray_Resize(out, orig);
        PyErr_Restore(type, value, tb);
    }
    Py_DECREF(digests);
    return NULL;
}


/* -- listing a directory ------------------------------------------------------------------ */
struct name { char *s; size_t len; };

static int
by_bytes(const void *a, const void *b)
{
    const struct name *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* tree.is_ftx_own: a receiver's own state or temporary (.ftx, .ftx-*.tmp, .ftx-*.part) */
static int
ftx_own(const char *s, size_t len)
{
    if (len == 4 && memcmp(s, ".ftx", 4) == 0)
        return 1;
    if (len < 5 || memcmp(s, ".ftx-", 5) != 0)
        return 0;
    return (len >= 4 && memcmp(s + len - 4, ".tmp", 4) == 0) || (len >= 5 && memcmp(s + len - 5, ".part", 5) == 0);
}

static void
free_names(struct name *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i].s);
    free(names);
}

static PyObject *
join2(const char *a, Py_ssize_t alen, const char *b, Py_ssize_t blen)
{
    PyObject *o = PyBytes_FromStringAndSize(NULL, alen + blen);
    if (o != NULL) {
        memcpy(PyBytes_AS_STRING(o), a, alen);
        memcpy(PyBytes_AS_STRING(o) + alen, b, blen);
    }
    return o;
}

/* tree.entry_record of a file or directory at p: kind, name length, permission bits, name (files:
 * size, mtime_ns); returns its end */
static unsigned char *
put_record(unsigned char *p, int is_file, mode_t mode, const char *name, size_t len, long long size, long long mtime)
{
    unsigned bits = is_file ? (mode & 0777) : ((mode & 0777) | 0700);
    p[0] = is_file ? 1 : 2;
    put16(p + 1, (uint16_t)len);
    put16(p + 3, (uint16_t)bits);
    memcpy(p + 5, name, len);
    p += 5 + len;
    if (is_file) {
        put64(p, (uint64_t)size);
        put64(p + 8, (uint64_t)mtime);
        p += 16;
    }
    return p;
}

/* The names of the open directory ``dir_fd`` (but "." and ".."; with ``skip_own``, but ftx's own),
 * sorted by name bytes, into *names / *count; called without the GIL.  Returns 0, an errno, or -1
 * when there are more than ``limit`` names or they would count more than ``budget`` bytes (each
 * 2 * length + 54: a name, its NUL and at least a directory's record, as tree_state counts). */
static int
read_names(int dir_fd, int skip_own, size_t limit, size_t budget, struct name **names_out, size_t *count)
{
    struct name *names = NULL;
    size_t n = 0, cap = 0, held = 0;
    int err = 0;
    int fd2 = fcntl(dir_fd, F_DUPFD_CLOEXEC, 0);
    if (fd2 < 0) {
        err = errno;
    } else {
        DIR *d = fdopendir(fd2);
        if (d == NULL) {
            err = errno;
            close(fd2);
        } else {
            rewinddir(d);
            struct dirent *de;
            for (;;) {
                errno = 0;
                de = readdir(d);
                if (de == NULL) {
                    err = errno;
                    break;
                }
                const char *s = de->d_name;
                size_t len = strlen(s);
                if ((s[0] == '.' && (s[1] == 0 || (s[1] == '.' && s[2] == 0))) || (skip_own && ftx_own(s, len)))
                    continue;
                held += 2 * len + 54;
                if (n >= limit || held > budget) {
                    err = -1;
                    break;
                }
                if (n == cap) {
                    size_t ncap = cap ? cap * 2 : 256;
                    struct name *nn = realloc(names, ncap * sizeof *names);
                    if (nn == NULL) { err = ENOMEM; break; }
                    names = nn;
                    cap = ncap;
                }
                names[n].len = len;
                names[n].s = malloc(len + 1);
                if (names[n].s == NULL) { err = ENOMEM; break; }
                memcpy(names[n].s, s, len + 1);
                n++;
            }
            rewinddir(d); /* the descriptor's offset is shared with dir_fd's: left as found */
            closedir(d);
        }
    }
    if (!err && n > 1)
        qsort(names, n, sizeof *names, by_bytes);
    *names_out = names;
    *count = n;
    return err;
}

/* lstat one entry of a held directory (EINTR retried): 0 for a regular file or a directory, with
   its size and mtime in ns (0 for a directory); -1 for anything else or an error (the caller then
   leaves the directory to the Python listing, which says why). */
static int stat_entry(int dir_fd, const char *name, struct stat *st, int *is_file, long long *size, long long *mtime)
{
    int r;
    do {
        r = fstatat(dir_fd, name, st, AT_SYMLINK_NOFOLLOW);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return -1;
    *is_file = S_ISREG(st->st_mode);
    if (!*is_file && !S_ISDIR(st->st_mode))
        return -1;
    *mtime = *is_file ? (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec : 0;
    *size = *is_file ? (long long)st->st_size : 0;
    return 0;
}

/* listing(dir_fd, local, wire, max_path, max_component, item_type, file_kind, dir_kind, update)
 *   -> list of items, or None
 * The direct entries of the open directory ``dir_fd`` sorted by name bytes, as source._listed
 * makes them: regular files and directories (lstat'ed by name under ``dir_fd``) as
 * ``item_type`` (source.SourceItem) with local/wire paths ``local + name`` / ``wire + name``,
 * each entry's listing record (tree.entry_record) fed to ``update`` in order.  None where
 * anything asks for the Python path's judgement (a symlink, a special file, a name of ftx's
 * own or too long, an entry gone since it was read): that path lists the directory again. */
static PyObject *
listing(PyObject *self, PyObject *args)
{
    int dir_fd;
    const char *local, *wire;
    Py_ssize_t local_len, wire_len, max_path, max_component;
    PyTypeObject *item_type;
    PyObject *file_kind, *dir_kind, *update;

    if (!PyArg_ParseTuple(args, "iy#y#nnO!OOO:listing", &dir_fd, &local, &local_len, &wire, &wire_len, &max_path,
                          &max_component, &PyType_Type, &item_type, &file_kind, &dir_kind, &update))
        return NULL;
    if (!PyType_IsSubtype(item_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "item_type must be a tuple type");
        return NULL;
    }
    struct name *names = NULL;
    size_t n = 0;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = read_names(dir_fd, 0, (size_t)-1, (size_t)-1, &names, &n);
    Py_END_ALLOW_THREADS
    if (err) { /* the Python path says what went wrong */
        free_names(names, n);
        Py_RETURN_NONE;
    }
    PyObject *items = PyList_New(0), *rec = NULL;
    size_t rec_cap = 65536, rec_len = 0;
    unsigned char *recs = malloc(rec_cap + 8192);
    if (items == NULL || recs == NULL)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        const char *s = names[i].s;
        Py_ssize_t len = (Py_ssize_t)names[i].len;
        if (len > max_component || wire_len + len > max_path || local_len + len > 4096 || ftx_own(s, len))
            goto python; /* (the Python listing skips these, with a warning) */
        struct stat st;
        int is_file;
        long long size, mtime;
        if (stat_entry(dir_fd, s, &st, &is_file, &size, &mtime) < 0)
            goto python;
        PyObject *item = item_type->tp_alloc(item_type, 7);
        if (item == NULL)
            goto fail;
        PyObject *l = join2(local, local_len, s, len), *w = join2(wire, wire_len, s, len);
        PyObject *mode = PyLong_FromUnsignedLong(st.st_mode), *sz = PyLong_FromLongLong(size);
        PyObject *mt = PyLong_FromLongLong(mtime), *empty = PyBytes_FromStringAndSize(NULL, 0);
        PyObject *kind = is_file ? file_kind : dir_kind;
        Py_INCREF(kind);
        PyTuple_SET_ITEM(item, 0, l);
        PyTuple_SET_ITEM(item, 1, w);
        PyTuple_SET_ITEM(item, 2, kind);
        PyTuple_SET_ITEM(item, 3, empty);
        PyTuple_SET_ITEM(item, 4, mode);
        PyTuple_SET_ITEM(item, 5, sz);
        PyTuple_SET_ITEM(item, 6, mt);
        if (!l || !w || !mode || !sz || !mt || !empty || PyList_Append(items, item) < 0) {
            Py_DECREF(item);
            goto fail;
        }
        Py_DECREF(item);
        rec_len = put_record(recs + rec_len, is_file, st.st_mode, s, len, size, mtime) - recs;
        if (rec_len >= rec_cap || i + 1 == n) {
            PyObject *view = PyMemoryView_FromMemory((char *)recs, (Py_ssize_t)rec_len, PyBUF_READ);
            if (view == NULL)
                goto fail;
            rec = PyObject_CallOneArg(update, view);
            Py_DECREF(view);
            if (rec == NULL)
                goto fail;
            Py_CLEAR(rec);
            rec_len = 0;
        }
    }
    free(recs);
    free_names(names, n);
    return items;

python:
    free(recs);
    free_names(names, n);
    Py_DECREF(items);
    Py_RETURN_NONE;
nomem:
    PyErr_NoMemory();
fail:
    free(recs);
    free_names(names, n);
    Py_XDECREF(items);
    return NULL;
}

/* dir_digest(dir_fd, limit, budget, update) -> entry count, -1 or None
 * The receiver's listing of a destination directory (tree_state._listing_digest): its direct
 * entries but ftx's own, sorted by name bytes, each one's record (tree.entry_record) fed to
 * ``update`` in that order; the count is returned.  -1: not comparable -- more than ``limit``
 * entries, or the names and records would hold more than ``budget`` bytes (each entry counted
 * as in tree_state: name, record and an overhead of 48).  None where the Python path must judge
 * (a symlink, a special file, an entry gone since it was read, an error): it lists again. */
static PyObject *
dir_digest(PyObject *self, PyObject *args)
{
    int dir_fd;
    Py_ssize_t limit, budget;
    PyObject *update;

    if (!PyArg_ParseTuple(args, "innO:dir_digest", &dir_fd, &limit, &budget, &update))
        return NULL;
    struct name *names = NULL;
    size_t n = 0, exact = 0, rec_len = 0;
    unsigned char *recs = NULL;
    int err, result = 0; /* result: 0 count, -1 not comparable, 1 the Python path */
    Py_BEGIN_ALLOW_THREADS
    err = read_names(dir_fd, 1, (size_t)limit, (size_t)budget, &names, &n);
    if (err == -1) {
        err = 0;
        result = -1;
    }
    if (!err && !result) {
        size_t need = 0;
        for (size_t i = 0; i < n; i++)
            need += 21 + names[i].len;
        recs = malloc(need ? need : 1);
        if (recs == NULL)
            err = ENOMEM;
        for (size_t i = 0; !err && i < n; i++) {
            const char *s = names[i].s;
            size_t len = names[i].len;
            struct stat st;
            int r;
            do {
                r = fstatat(dir_fd, s, &st, AT_SYMLINK_NOFOLLOW);
            } while (r < 0 && errno == EINTR);
            int is_file = r == 0 && S_ISREG(st.st_mode);
            if (r < 0 || len > 0xffff || (!is_file && !S_ISDIR(st.st_mode))) {
                result = 1;
                break;
            }
            exact += 2 * len + 54 + (is_file ? 16 : 0); /* as tree_state counts it */
            if (exact > (size_t)budget) {
                result = -1;
                break;
            }
            rec_len = put_record(recs + rec_len, is_file, st.st_mode, s, len, (long long)st.st_size,
                                 (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec) - recs;
        }
    }
    Py_END_ALLOW_THREADS
    free_names(names, n);
    if (err == ENOMEM) {
        free(recs);
        return PyErr_NoMemory();
    }
    if (err || result == 1) {
        free(recs);
        Py_RETURN_NONE;
    }
    if (result == -1) {
        free(recs);
        return PyLong_FromLong(-1);
    }
    if (rec_len) {
        PyObject *view = PyMemoryView_FromMemory((char *)recs, (Py_ssize_t)rec_len, PyBUF_READ);
        PyObject *r = view ? PyObject_CallOneArg(update, view) : NULL;
        Py_XDECREF(view);
        if (r == NULL) {
            free(recs);
            return NULL;
        }
        Py_DECREF(r);
    }
    free(recs);
    return PyLong_FromSize_t(n);
}

/* -- prewalk: a tree's directories listed ahead, without the GIL ---------------------------------
 * prewalk(root, max_entries, max_depth, max_wire, max_local, stop)
 *   -> list of (rel, dev, ino, count, records, files, file_bytes, subdirs)
 * The directories of the tree at ``root`` (followed: a named argument), depth first, each reached
 * from its parent's descriptor with O_NOFOLLOW | O_DIRECTORY (never through a symlink), listed and
 * lstat'ed as ``listing`` does, the whole walk without the GIL (a thread runs it while the sender
 * starts up: source.Prewalk).  Per directory: its path relative to ``root`` (b"" for the root), its
 * st_dev and st_ino, its entry count, the listing records of its entries in name order
 * (tree.entry_record: the CHECK_DIR digest is XXH3-128 over them), how many are regular files and
 * their bytes, and its subdirectories as (name, st_mode) in name order.  A directory holding
 * anything the Python listing must judge (a symlink, a special file, a name of ftx's own or too
 * long: ``max_wire`` / ``max_local`` bound rel + "/" + name) is left out, and not descended into;
 * so are directories deeper than ``max_depth`` and, once more than ``max_entries`` entries were
 * listed in all, every directory after it (the walk stops): the sender lists those itself.
 * ``stop``: a writable buffer whose first byte, once not 0, ends the walk at the next directory
 * (the sender needs what is listed now: it lists the rest itself). */
struct sub { char *name; size_t len; unsigned mode; };
struct pdir {
    char *rel; size_t rel_len;
    unsigned long long dev, ino, file_bytes;
    size_t count, files, nsubs, rec_len;
    unsigned char *recs;
    struct sub *subs;
};
struct frame { int fd; size_t dir; size_t next; };

static void
free_pdir(struct pdir *d)
{
    for (size_t i = 0; i < d->nsubs; i++)
        free(d->subs[i].name);
    free(d->subs);
    free(d->recs);
    free(d->rel);
    memset(d, 0, sizeof *d);
}

/* List the open directory ``fd`` into ``d`` (whose rel is set).  1: listed; 0: left to Python. */
static int
list_dir(int fd, struct pdir *d, size_t max_wire, size_t max_local, size_t root_len)
{
    struct name *names = NULL;
    size_t n = 0;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return 0;
    d->dev = (unsigned long long)st.st_dev;
    d->ino = (unsigned long long)st.st_ino;
    if (read_names(fd, 0, (size_t)-1, (size_t)-1, &names, &n)) {
        free_names(names, n);
        return 0;
    }
    size_t need = 0;
    for (size_t i = 0; i < n; i++)
        need += 21 + names[i].len;
    d->recs = malloc(need ? need : 1);
    d->subs = malloc((n ? n : 1) * sizeof *d->subs);
    if (d->recs == NULL || d->subs == NULL)
        goto python;
    for (size_t i = 0; i < n; i++) {
        const char *s = names[i].s;
        size_t len = names[i].len;
        size_t rel = d->rel_len + (d->rel_len ? 1 : 0) + len; /* rel + "/" + name */
        if (len > 255 || rel + 1 > max_wire || root_len + 1 + rel > max_local || ftx_own(s, len))
            goto python;
        int is_file;
        long long size, mtime;
        if (stat_entry(fd, s, &st, &is_file, &size, &mtime) < 0)
            goto python;
        d->rec_len = put_record(d->recs + d->rec_len, is_file, st.st_mode, s, len, size, mtime) - d->recs;
        if (is_file) {
            d->files++;
            d->file_bytes += (unsigned long long)size;
        } else {
            struct sub *b = &d->subs[d->nsubs];
            b->name = names[i].s; /* taken */
            b->len = len;
            b->mode = (unsigned)st.st_mode;
            names[i].s = NULL;
            d->nsubs++;
        }
    }
    d->count = n;
    free_names(names, n);
    return 1;
python:
    free_names(names, n);
    return 0;
}

static PyObject *
prewalk(PyObject *self, PyObject *args)
{
    const char *root;
    Py_ssize_t root_len, max_entries, max_depth, max_wire, max_local;
    Py_buffer stop_buf;
    if (!PyArg_ParseTuple(args, "y#nnnnw*:prewalk", &root, &root_len, &max_entries, &max_depth, &max_wire,
                          &max_local, &stop_buf))
        return NULL;
    if (stop_buf.len < 1) {
        PyBuffer_Release(&stop_buf);
        PyErr_SetString(PyExc_ValueError, "stop must hold a byte");
        return NULL;
    }
    volatile unsigned char *stop = (volatile unsigned char *)stop_buf.buf;
    struct pdir *dirs = NULL;
    struct frame *stack = NULL;
    size_t ndirs = 0, cap = 0, depth = 0, entries = 0;
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    stack = malloc(((size_t)max_depth + 1) * sizeof *stack);
    int fd = stack ? open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (fd >= 0) {
        dirs = calloc(16, sizeof *dirs);
        cap = 16;
        if (dirs == NULL || (dirs[0].rel = malloc(1)) == NULL) {
            nomem = 1;
            close(fd);
        } else if (!list_dir(fd, &dirs[0], (size_t)max_wire, (size_t)max_local, (size_t)root_len)
                   || dirs[0].count > (size_t)max_entries) {
            free_pdir(&dirs[0]);
            close(fd);
        } else {
            ndirs = 1;
            entries = dirs[0].count;
            stack[0].fd = fd; stack[0].dir = 0; stack[0].next = 0;
            depth = 1;
        }
    }
    while (depth > 0) {
        struct frame *f = &stack[depth - 1];
        struct pdir *d = &dirs[f->dir];
        if (f->next >= d->nsubs || entries > (size_t)max_entries || nomem || depth > (size_t)max_depth || *stop) {
            close(f->fd);
            depth--;
            continue;
        }
        struct sub *b = &d->subs[f->next++];
        int cfd;
        do {
            cfd = openat(f->fd, b->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        } while (cfd < 0 && errno == EINTR);
        if (cfd < 0)
            continue;
        if (ndirs == cap) {
            struct pdir *nd = realloc(dirs, 2 * cap * sizeof *dirs);
            if (nd == NULL) { nomem = 1; close(cfd); continue; }
            memset(nd + cap, 0, cap * sizeof *nd);
            dirs = nd;
            cap *= 2;
            d = &dirs[f->dir];
            b = &d->subs[f->next - 1];
        }
        struct pdir *c = &dirs[ndirs];
        c->rel_len = d->rel_len + (d->rel_len ? 1 : 0) + b->len;
        c->rel = malloc(c->rel_len + 1);
        if (c->rel == NULL) { nomem = 1; close(cfd); continue; }
        if (d->rel_len) {
            memcpy(c->rel, d->rel, d->rel_len);
            c->rel[d->rel_len] = '/';
        }
        memcpy(c->rel + c->rel_len - b->len, b->name, b->len);
        if (!list_dir(cfd, c, (size_t)max_wire, (size_t)max_local, (size_t)root_len)) {
            free_pdir(c); /* left to the Python listing, and so is everything below it */
            close(cfd);
            continue;
        }
        entries += c->count;
        if (entries > (size_t)max_entries) { /* over the bound: this one and all after it are the sender's */
            free_pdir(c);
            close(cfd);
            continue;
        }
        ndirs++;
        stack[depth].fd = cfd; stack[depth].dir = ndirs - 1; stack[depth].next = 0;
        depth++;
    }
    free(stack);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&stop_buf);
    PyObject *out = nomem ? NULL : PyList_New(0);
    for (size_t i = 0; out != NULL && i < ndirs; i++) {
        struct pdir *d = &dirs[i];
        PyObject *subs = PyTuple_New((Py_ssize_t)d->nsubs);
        for (size_t j = 0; subs != NULL && j < d->nsubs; j++) {
            PyObject *t = Py_BuildValue("(y#I)", d->subs[j].name, (Py_ssize_t)d->subs[j].len, d->subs[j].mode);
            if (t == NULL) { Py_CLEAR(subs); break; }
            PyTuple_SET_ITEM(subs, (Py_ssize_t)j, t);
        }
        PyObject *t = subs == NULL ? NULL :
            Py_BuildValue("(y#KKny#nKN)", d->rel, (Py_ssize_t)d->rel_len, d->dev, d->ino, (Py_ssize_t)d->count,
                          (const char *)d->recs, (Py_ssize_t)d->rec_len, (Py_ssize_t)d->files, d->file_bytes, subs);
        if (t == NULL || PyList_Append(out, t) < 0)
            Py_CLEAR(out);
        Py_XDECREF(t);
    }
    for (size_t i = 0; i < ndirs; i++)
        free_pdir(&dirs[i]);
    free(dirs);
    if (nomem)
        return PyErr_NoMemory();
    return out;
}

static PyMethodDef methods[] = {
    {"frames", frames, METH_VARARGS, "A run of small files of one listed directory as SMALL_FILE frames."},
    {"listing", listing, METH_VARARGS, "A directory's files and subdirectories as source items, sorted by name."},
    {"prewalk", prewalk, METH_VARARGS, "A tree's directories listed ahead (digest records), without the GIL."},
    {"dir_digest", dir_digest, METH_VARARGS, "A destination directory's listing records fed in name order; its count."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_smallread", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__smallread(void)
{
    return PyModule_Create(&module);
}
