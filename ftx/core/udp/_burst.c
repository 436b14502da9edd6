/*
 * Optional accelerator for the two per-datagram loops of the UDP transport
 * (ftx/core/udp/burst.py has the reference implementation in Python and
 * documents the functions; both must give the same results).
 *
 * In Python each datagram costs about 0.7 us on each side however it is
 * written (see burst.py), which caps a 1452-byte-datagram transfer near
 * 550 MB/s on this class of machine.  Here the loops run in C; the XXH3-64
 * checksums still come from the xxhash package, called once per datagram.
 *
 * Layout of a full CHUNK packet (protocol.md, sections 14.2 and 14.6):
 *   0 type  1 version  2 dest conn ID (8)  10 packet number (8)
 *   18 frame type  19 file id (4)  23 chunk index (8)  31 chunk length (4)
 *   35 offset in chunk (4)  39 chunk checksum (8)  47 data length (2)
 *   49 data ...  then XXH3-64 of everything before it (8), all big-endian.
 * With hasher None the trailer is 0 (built) or must be 0 (scanned): datagrams that
 * are sealed after building, or were opened before scanning, need no checksum and
 * cost no call into Python each.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "chunk_packet.h"

#define T_DATA 0x03
#define VERSION 1
#define F_CHUNK 0x04
#define F_STREAM 0x03
#define MAX_STREAM_OFFSET ((1ull << 62) - 1)
#define HDR 49
#define TRL 8

static void put_be(unsigned char *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

static uint64_t get_be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* hasher(memoryview of p[0:len]) as an unsigned 64-bit integer (0 when hasher is None: no
   checksum, the AEAD protects the datagram); -1 with an exception set on error */
static int call_hash(PyObject *hasher, const unsigned char *p, Py_ssize_t len, uint64_t *out)
{
    if (hasher == Py_None) {
        *out = 0;
        return 0;
    }
    PyObject *view = PyMemoryView_FromMemory((char *)p, len, PyBUF_READ);
    if (view == NULL)
        return -1;
    PyObject *r = PyObject_CallOneArg(hasher, view);
    Py_DECREF(view);
    if (r == NULL)
        return -1;
    unsigned long long h = PyLong_AsUnsignedLongLong(r);
    Py_DECREF(r);
    if (h == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint64_t)h;
    return 0;
}

static PyObject *build_chunk_burst(PyObject *self, PyObject *args)
{
    Py_buffer out, data;
    Py_ssize_t mss, off, nbytes;
    unsigned long long dcid, pn, index, csum;
    unsigned long fid, clen;
    PyObject *hasher;
    if (!PyArg_ParseTuple(args, "w*nKKkKkKy*nnO:build_chunk_burst", &out, &mss, &dcid, &pn, &fid, &index,
                          &clen, &csum, &data, &off, &nbytes, &hasher))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t room = mss - HDR - TRL;
    /* (each comparison is written so that no sum can overflow) */
    if (room <= 0 || nbytes <= 0 || off < 0 || off > data.len || nbytes > data.len - off ||
        fid > 0xFFFFFFFFul || clen > 0xFFFFFFFFul || (unsigned long long)off > clen ||
        (unsigned long long)nbytes > clen - (unsigned long long)off) {
        PyErr_SetString(PyExc_ValueError, "build_chunk_burst: arguments out of range");
        goto done;
    }
    Py_ssize_t n = (nbytes + room - 1) / room;
    Py_ssize_t last = nbytes - (n - 1) * room;
    if (out.len != (n - 1) * mss + HDR + last + TRL) {
        PyErr_SetString(PyExc_ValueError, "build_chunk_burst: buffer size does not match");
        goto done;
    }
    unsigned char *base = (unsigned char *)out.buf;
    const unsigned char *src = (const unsigned char *)data.buf + off;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char *p = base + i * mss;
        Py_ssize_t dlen = i == n - 1 ? last : room;
        ftx_chunk_packet_header(p, T_DATA, dcid, pn + (uint64_t)i, fid, index, clen, (uint64_t)(off + i * room), csum,
                                (uint64_t)dlen);
        memcpy(p + HDR, src + i * room, (size_t)dlen);
        uint64_t h;
        if (call_hash(hasher, p, HDR + dlen, &h) < 0)
            goto done;
        put_be(p + HDR + dlen, h, 8);
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&data);
    return result;
}

struct run {
    Py_ssize_t first, count;
    uint64_t pn, fid, index, clen, csum, off;
};

static int close_run(PyObject *runs, struct run *r)
{
    if (r->count == 0)
        return 0;
    PyObject *t = Py_BuildValue("(nnKKKKKK)", r->first, r->count, (unsigned long long)r->pn,
                                (unsigned long long)r->fid, (unsigned long long)r->index,
                                (unsigned long long)r->clen, (unsigned long long)r->csum,
                                (unsigned long long)r->off);
    if (t == NULL)
        return -1;
    int rc = PyList_Append(runs, t);
    Py_DECREF(t);
    r->count = 0;
    return rc;
}

static PyObject *scan_chunk_burst(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t seg;
    unsigned long long cid;
    PyObject *hasher;
    if (!PyArg_ParseTuple(args, "y*nKO:scan_chunk_burst", &view, &seg, &cid, &hasher))
        return NULL;
    PyObject *runs = NULL, *others = NULL, *result = NULL;
    Py_ssize_t room = seg - HDR - TRL, garbage = 0;
    if (room <= 0 || view.len % seg) {
        PyErr_SetString(PyExc_ValueError, "scan_chunk_burst: not whole segments of a CHUNK packet's size");
        goto done;
    }
    runs = PyList_New(0);
    others = PyList_New(0);
    if (runs == NULL || others == NULL)
        goto done;
    struct run r = {0};
    const unsigned char *base = (const unsigned char *)view.buf;
    for (Py_ssize_t at = 0; at < view.len; at += seg) {
        const unsigned char *p = base + at;
        uint64_t h;
        if (call_hash(hasher, p, seg - TRL, &h) < 0)
            goto done;
        if (h != get_be(p + seg - TRL, 8)) {
            garbage++;
            if (close_run(runs, &r) < 0)
                goto done;
            continue;
        }
        if (p[0] != T_DATA || p[1] != VERSION || get_be(p + 2, 8) != cid || p[18] != F_CHUNK ||
            get_be(p + 47, 2) != (uint64_t)room) {
            PyObject *o = PyLong_FromSsize_t(at);
            if (o == NULL || close_run(runs, &r) < 0 || PyList_Append(others, o) < 0) {
                Py_XDECREF(o);
                goto done;
            }
            Py_DECREF(o);
            continue;
        }
        uint64_t pn = get_be(p + 10, 8), fid = get_be(p + 19, 4), index = get_be(p + 23, 8);
        uint64_t clen = get_be(p + 31, 4), off = get_be(p + 35, 4), csum = get_be(p + 39, 8);
        if (r.count && pn > r.pn && pn - r.pn == (uint64_t)r.count && fid == r.fid && index == r.index &&
            clen == r.clen &&
            csum == r.csum && off == r.off + (uint64_t)(r.count * room)) {
            r.count++;
            continue;
        }
        if (close_run(runs, &r) < 0)
            goto done;
        r.first = at;
        r.count = 1;
        r.pn = pn;
        r.fid = fid;
        r.index = index;
        r.clen = clen;
        r.csum = csum;
        r.off = off;
    }
    if (close_run(runs, &r) < 0)
        goto done;
    result = Py_BuildValue("(OOn)", runs, others, garbage);
done:
    Py_XDECREF(runs);
    Py_XDECREF(others);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *gather(PyObject *self, PyObject *args)
{
    Py_buffer view, dest;
    Py_ssize_t seg, first, count, dest_off;
    if (!PyArg_ParseTuple(args, "y*nnnw*n:gather", &view, &seg, &first, &count, &dest, &dest_off))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t room = seg - HDR - TRL;
    if (room <= 0 || first < 0 || count < 0 || first > view.len || count > (view.len - first) / seg ||
        dest_off < 0 || dest_off > dest.len || count > (dest.len - dest_off) / room) {
        PyErr_SetString(PyExc_ValueError, "gather: arguments out of range");
        goto done;
    }
    const unsigned char *src = (const unsigned char *)view.buf + first + HDR;
    unsigned char *dst = (unsigned char *)dest.buf + dest_off;
    for (Py_ssize_t i = 0; i < count; i++)
        memcpy(dst + i * room, src + i * seg, (size_t)room);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    PyBuffer_Release(&dest);
    return result;
}

/* ranges.write_varint: 7 bits a byte, low first, 0x80 on all but the last */
static Py_ssize_t put_varint(unsigned char *p, uint64_t v)
{
    Py_ssize_t n = 0;
    while (v >= 0x80) {
        p[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (unsigned char)v;
    return n;
}

static Py_ssize_t varint_size(uint64_t v)
{
    Py_ssize_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static PyObject *build_stream_burst(PyObject *self, PyObject *args)
{
    Py_buffer out, data;
    Py_ssize_t seg, n, step, rel;
    unsigned long long dcid, pn, first;
    PyObject *hasher;
    if (!PyArg_ParseTuple(args, "w*nKKKnny*nO:build_stream_burst", &out, &seg, &dcid, &pn, &first, &step, &n, &data,
                          &rel, &hasher))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t vo = varint_size(first), vl = varint_size((uint64_t)(step > 0 ? step : 0));
    if (n <= 0 || step <= 0 || rel < 0 || first > (1ull << 62) || rel > data.len || n > (data.len - rel) / step ||
        varint_size(first + (unsigned long long)(n - 1) * (unsigned long long)step) != vo ||
        seg != 18 + 1 + vo + vl + step + TRL || out.len != n * seg) {
        PyErr_SetString(PyExc_ValueError, "build_stream_burst: arguments out of range");
        goto done;
    }
    unsigned char *base = (unsigned char *)out.buf;
    const unsigned char *src = (const unsigned char *)data.buf + rel;
    for (Py_ssize_t k = 0; k < n; k++) {
        unsigned char *p = base + k * seg, *q = p + 18;
        p[0] = T_DATA;
        p[1] = VERSION;
        put_be(p + 2, dcid, 8);
        put_be(p + 10, pn + (uint64_t)k, 8);
        *q++ = F_STREAM;
        q += put_varint(q, first + (uint64_t)(k * step));
        q += put_varint(q, (uint64_t)step);
        memcpy(q, src + k * step, (size_t)step);
        uint64_t h;
        if (call_hash(hasher, p, seg - TRL, &h) < 0)
            goto done;
        put_be(p + seg - TRL, h, 8);
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&data);
    return result;
}

/* A STREAM frame that fills the payload p[0:len] (burst.py py_stream_frame): 1 and its data
   start and offset, or 0 */
static int stream_frame(const unsigned char *p, Py_ssize_t len, uint64_t *soff, Py_ssize_t *start,
                        Py_ssize_t *length)
{
    if (len <= 4 || p[0] != F_STREAM)
        return 0;
    uint64_t v = 0;
    int shift = 0;
    Py_ssize_t i = 1;
    for (;;) {
        if (i >= len)
            return 0;
        unsigned char b = p[i++];
        if (shift >= 63 && b)  /* the Python reference's offset is then beyond MAX_STREAM_OFFSET */
            return 0;
        if (shift && shift < 63 && ((uint64_t)(b & 0x7F) >> (64 - shift)))
            return 0;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80))
            break;
        if (i > 10)  /* ten bytes and still going */
            return 0;
        shift += 7;
    }
    if (i >= len)
        return 0;
    Py_ssize_t l = p[i++];
    if (l & 0x80) {
        if (i >= len || p[i] & 0x80)
            return 0;
        l = (l & 0x7F) | ((Py_ssize_t)p[i++] << 7);
    }
    if (!l || i + l != len || v > MAX_STREAM_OFFSET || (uint64_t)l > MAX_STREAM_OFFSET - v)
        return 0;
    *soff = v;
    *start = i;
    *length = l;
    return 1;
}

static PyObject *scan_stream_runs(PyObject *self, PyObject *args)
{
    Py_buffer view;
    PyObject *offsets;
    Py_ssize_t plain;
    unsigned long long largest;
    int any;
    if (!PyArg_ParseTuple(args, "y*O!npK:scan_stream_runs", &view, &PyList_Type, &offsets, &plain, &any, &largest))
        return NULL;
    PyObject *runs = NULL, *result = NULL;
    Py_ssize_t count = PyList_GET_SIZE(offsets), plen = plain - 18 - TRL;
    if (plen < 0) {
        PyErr_SetString(PyExc_ValueError, "scan_stream_runs: datagrams too small");
        goto done;
    }
    runs = PyList_New(0);
    if (runs == NULL)
        goto done;
    const unsigned char *base = (const unsigned char *)view.buf;
    Py_ssize_t i = 0;
    while (i < count) {
        Py_ssize_t at = PyLong_AsSsize_t(PyList_GET_ITEM(offsets, i));
        if (at == -1 && PyErr_Occurred())
            goto done;
        if (at < 0 || at > view.len - plain) {
            PyErr_SetString(PyExc_ValueError, "scan_stream_runs: offset out of range");
            goto done;
        }
        const unsigned char *p = base + at;
        uint64_t pn = get_be(p + 10, 8), soff;
        Py_ssize_t start, length;
        if (!stream_frame(p + 18, plen, &soff, &start, &length) || (any && pn <= largest)) {
            PyObject *t = Py_BuildValue("(nnKLLO)", i, (Py_ssize_t)1, (unsigned long long)pn, -1LL, -1LL, Py_None);
            if (t == NULL || PyList_Append(runs, t) < 0) {
                Py_XDECREF(t);
                goto done;
            }
            Py_DECREF(t);
            i++;
            continue;
        }
        /* how far the run goes: packet numbers and stream offsets following on */
        Py_ssize_t j = i + 1;
        uint64_t end = soff + (uint64_t)length, s2;
        Py_ssize_t st2, l2;
        while (j < count) {
            Py_ssize_t a2 = PyLong_AsSsize_t(PyList_GET_ITEM(offsets, j));
            if (a2 == -1 && PyErr_Occurred())
                goto done;
            if (a2 < 0 || a2 > view.len - plain) {
                PyErr_SetString(PyExc_ValueError, "scan_stream_runs: offset out of range");
                goto done;
            }
            const unsigned char *p2 = base + a2;
            /* (a run stops at packet number 2^64 - 1: pn + 1 must not wrap to 0, as in Python) */
            if (pn + (uint64_t)(j - i) < pn || get_be(p2 + 10, 8) != pn + (uint64_t)(j - i) ||
                !stream_frame(p2 + 18, plen, &s2, &st2, &l2) ||
                s2 != end)
                break;
            end += (uint64_t)l2;
            j++;
        }
        PyObject *joined = Py_None;
        Py_INCREF(joined);
        if (j - i > 1) {  /* the data of the run, joined */
            Py_DECREF(joined);
            joined = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(end - soff));
            if (joined == NULL)
                goto done;
            char *dst = PyBytes_AS_STRING(joined);
            for (Py_ssize_t k = i; k < j; k++) {
                const unsigned char *pk = base + PyLong_AsSsize_t(PyList_GET_ITEM(offsets, k)) + 18;
                uint64_t o3;
                Py_ssize_t s3, l3;
                stream_frame(pk, plen, &o3, &s3, &l3);
                memcpy(dst, pk + s3, (size_t)l3);
                dst += l3;
            }
        }
        PyObject *t = Py_BuildValue("(nnKKKN)", i, j - i, (unsigned long long)pn, (unsigned long long)soff,
                                    (unsigned long long)end, joined);
        if (t == NULL || PyList_Append(runs, t) < 0) {
            Py_XDECREF(t);
            goto done;
        }
        Py_DECREF(t);
        i = j;
    }
    result = Py_NewRef(runs);
done:
    Py_XDECREF(runs);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"build_stream_burst", build_stream_burst, METH_VARARGS, "See ftx.core.udp.burst.build_stream_burst."},
    {"scan_stream_runs", scan_stream_runs, METH_VARARGS, "See ftx.core.udp.burst.scan_stream_runs."},
    {"build_chunk_burst", build_chunk_burst, METH_VARARGS, "See ftx.core.udp.burst.build_chunk_burst."},
    {"scan_chunk_burst", scan_chunk_burst, METH_VARARGS, "See ftx.core.udp.burst.scan_chunk_burst."},
    {"gather", gather, METH_VARARGS, "See ftx.core.udp.burst.gather."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_burst", "C loops for ftx.core.udp.burst", -1, methods};

PyMODINIT_FUNC PyInit__burst(void)
{
    PyObject *m = PyModule_Create(&module);
    /* 2: hasher None (burst.py checks it: an extension built from an older _burst.c is not used);
       3: build_stream_burst and scan_stream_runs (burst.py keeps the Python ones for a VERSION 2 build) */
    if (m != NULL && PyModule_AddIntConstant(m, "VERSION", 3) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
