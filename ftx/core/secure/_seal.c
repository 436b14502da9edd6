/*
 * Optional accelerator for sealing and opening bursts of UDP packets
 * (ftx/core/secure/datagrams.py has the reference loops in Python and documents
 * the layout; both must give the same bytes).
 *
 * In Python each datagram costs about 1 us of interpreter work around the AEAD
 * call (slices, the nonce, the call itself) on top of the cipher; here the loop
 * and the AEAD (OpenSSL's EVP interface, AES-256-GCM or ChaCha20-Poly1305) run in
 * C, one cipher context per burst.  The keys come from keys.Direction.
 *
 * seal_burst(out, src, src_seg, size, dst_seg, first_pn, ptype, cipher, key, iv)
 *   src: checksummed DATA datagrams of src_seg bytes (the last may be shorter),
 *   size bytes in all; out: the same datagrams sealed, dst_seg = src_seg + 8 bytes
 *   each: header (type byte replaced by ptype) as AAD, then ciphertext, then tag.
 *
 * open_burst(view, seg, cid, phase_bit, min_pn, out, cipher, key, iv)
 *   view: datagrams of seg bytes; out: each opened as a checksummed DATA datagram
 *   of seg - 8 bytes with a zero trailer (ones when it did not open).  Datagrams
 *   this loop cannot decide (not SEALED, another key phase, pn below min_pn,
 *   another connection) are left for the caller: their offsets in view are
 *   returned.  Returns (bytes of out used, failed opens, [offsets left]).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/crypto.h>
#include <stdint.h>
#include <string.h>

#include "../udp/chunk_packet.h"

#define HDR 18
#define TAG 16
#define TRL 8
#define T_DATA 0x03
#define T_SEALED 0x04

/* The ciphers, fetched from the default provider once: EVP_aes_256_gcm() is fetched again on
   every context set-up (OpenSSL 3), which took half of a set-up's 0.45 us. */
static EVP_CIPHER *fetched[3];

static const EVP_CIPHER *cipher_of(int id)
{
    static const char *names[3] = {NULL, "AES-256-GCM", "ChaCha20-Poly1305"};
    if (id < 1 || id > 2)
        return NULL;
    if (fetched[id] == NULL)
        fetched[id] = EVP_CIPHER_fetch(NULL, names[id], NULL);
    return fetched[id];
}

/* The tag, read or set through the provider's parameters: EVP_CIPHER_CTX_ctrl turns each call
   into these and looks the cipher's IV length up on the way (~20 ns a datagram). */
static int get_tag(EVP_CIPHER_CTX *ctx, unsigned char *tag)
{
    OSSL_PARAM p[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, TAG),
                       OSSL_PARAM_construct_end()};
    return EVP_CIPHER_CTX_get_params(ctx, p);
}

static int set_tag(EVP_CIPHER_CTX *ctx, const unsigned char *tag)
{
    OSSL_PARAM p[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, (void *)tag, TAG),
                       OSSL_PARAM_construct_end()};
    return EVP_CIPHER_CTX_set_params(ctx, p);
}

static EVP_CIPHER_CTX *context(int id, const unsigned char *key, Py_ssize_t keylen, int enc)
{
    const EVP_CIPHER *c = cipher_of(id);
    if (c == NULL || keylen != 32) {
        PyErr_SetString(PyExc_ValueError, "_seal: unknown cipher or bad key");
        return NULL;
    }
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL || !EVP_CipherInit_ex(ctx, c, NULL, NULL, NULL, enc) ||
        !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL) ||
        !EVP_CipherInit_ex(ctx, NULL, NULL, key, NULL, enc)) {
        EVP_CIPHER_CTX_free(ctx);
        PyErr_SetString(PyExc_RuntimeError, "_seal: cipher set-up failed");
        return NULL;
    }
    return ctx;
}

static void nonce_of(unsigned char *nonce, const unsigned char *iv, uint64_t pn)
{
    memcpy(nonce, iv, 12);
    for (int i = 0; i < 8; i++)
        nonce[11 - i] ^= (unsigned char)(pn >> (8 * i));
}

static uint64_t get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)v;
        v >>= 8;
    }
}

static PyObject *seal_burst(PyObject *self, PyObject *args)
{
    Py_buffer out, src, key, iv;
    Py_ssize_t src_seg, size, dst_seg;
    unsigned long long pn;
    int ptype, cid;
    if (!PyArg_ParseTuple(args, "w*y*nnnKiiy*y*:seal_burst", &out, &src, &src_seg, &size, &dst_seg, &pn, &ptype,
                          &cid, &key, &iv))
        return NULL;
    PyObject *result = NULL;
    EVP_CIPHER_CTX *ctx = NULL;
    Py_ssize_t n = src_seg > HDR + TRL ? (size + src_seg - 1) / src_seg : 0;
    if (n == 0 || size > src.len || dst_seg != src_seg + TAG - TRL || iv.len != 12 ||
        out.len != size + n * (TAG - TRL) || size - (n - 1) * src_seg < HDR + TRL) {
        PyErr_SetString(PyExc_ValueError, "seal_burst: arguments out of range");
        goto done;
    }
    ctx = context(cid, key.buf, key.len, 1);
    if (ctx == NULL)
        goto done;
    const unsigned char *s = src.buf;
    unsigned char *d = out.buf;
    unsigned char nonce[12];
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len = i == n - 1 ? size - i * src_seg : src_seg; /* this datagram, with its trailer */
        Py_ssize_t plen = len - HDR - TRL;
        const unsigned char *p = s + i * src_seg;
        unsigned char *q = d + i * dst_seg;
        int m;
        memcpy(q, p, HDR);
        q[0] = (unsigned char)ptype;
        nonce_of(nonce, iv.buf, pn + (uint64_t)i);
        if (!EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 1) || !EVP_CipherUpdate(ctx, NULL, &m, q, HDR) ||
            !EVP_CipherUpdate(ctx, q + HDR, &m, p + HDR, (int)plen) ||
            !EVP_CipherFinal_ex(ctx, q + HDR + m, &m) ||
            !get_tag(ctx, q + HDR + plen)) {
            PyErr_SetString(PyExc_RuntimeError, "seal_burst: encryption failed");
            goto done;
        }
    }
    result = PyLong_FromSsize_t(n);
done:
    EVP_CIPHER_CTX_free(ctx);
    PyBuffer_Release(&out);
    PyBuffer_Release(&src);
    PyBuffer_Release(&key);
    PyBuffer_Release(&iv);
    return result;
}

/*
 * seal_chunk_burst(mss, dcid, first_pn, ptype, fid, index, clen, csum, data, off, nbytes, cipher, key, iv)
 *   A new bytearray: the burst of SEALED CHUNK packets (protocol.md 14.6 and 14.13) that
 *   carries data[off:off + nbytes] (bytes off... of the chunk), in datagrams of mss bytes,
 *   each but the last full -- the same bytes as burst.build_chunk_burst (no checksum) then
 *   seal_burst, without a plaintext burst in between: each datagram's frames are laid out in
 *   place and encrypted there while they are in the cache.  The buffer is not zeroed first:
 *   every byte of it is written.
 */
#define CHUNK_HDR 31

static PyObject *seal_chunk_burst(PyObject *self, PyObject *args)
{
    Py_buffer data, key, iv;
    Py_ssize_t mss, off, nbytes;
    unsigned long long dcid, pn, index, csum;
    unsigned long fid, clen;
    int ptype, cid;
    if (!PyArg_ParseTuple(args, "nKKikKkKy*nniy*y*:seal_chunk_burst", &mss, &dcid, &pn, &ptype, &fid, &index,
                          &clen, &csum, &data, &off, &nbytes, &cid, &key, &iv))
        return NULL;
    PyObject *result = NULL, *out = NULL;
    EVP_CIPHER_CTX *ctx = NULL;
    Py_ssize_t room = mss - HDR - CHUNK_HDR - TAG;
    /* (each comparison is written so that no sum can overflow) */
    if (room <= 0 || nbytes <= 0 || off < 0 || off > data.len || nbytes > data.len - off || iv.len != 12 ||
        fid > 0xFFFFFFFFul || clen > 0xFFFFFFFFul || (unsigned long long)off > clen ||
        (unsigned long long)nbytes > clen - (unsigned long long)off || nbytes / room > 4096 ||
        pn > UINT64_MAX - 4097) {
        PyErr_SetString(PyExc_ValueError, "seal_chunk_burst: arguments out of range");
        goto done;
    }
    Py_ssize_t n = (nbytes + room - 1) / room;
    Py_ssize_t last = nbytes - (n - 1) * room;
    out = PyByteArray_FromStringAndSize(NULL, (n - 1) * mss + HDR + CHUNK_HDR + last + TAG);
    if (out == NULL)
        goto done;
    ctx = context(cid, key.buf, key.len, 1);
    if (ctx == NULL)
        goto done;
    unsigned char *base = (unsigned char *)PyByteArray_AS_STRING(out);
    const unsigned char *src = (const unsigned char *)data.buf + off;
    unsigned char nonce[12];
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char *q = base + i * mss;
        unsigned char *fh = q + HDR;
        Py_ssize_t dlen = i == n - 1 ? last : room;
        int m;
        ftx_chunk_packet_header(q, ptype, dcid, pn + (uint64_t)i, fid, index, clen, (uint64_t)(off + i * room), csum,
                                (uint64_t)dlen);
        memcpy(fh + CHUNK_HDR, src + i * room, (size_t)dlen);
        nonce_of(nonce, iv.buf, pn + (uint64_t)i);
        /* the frames encrypted in place, in one call: split in two (the 31-byte header, then
           the data) the AEAD leaves its fast bulk path and the whole took twice as long */
        if (!EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 1) || !EVP_CipherUpdate(ctx, NULL, &m, q, HDR) ||
            !EVP_CipherUpdate(ctx, fh, &m, fh, (int)(CHUNK_HDR + dlen)) ||
            !EVP_CipherFinal_ex(ctx, fh + m, &m) ||
            !get_tag(ctx, q + HDR + CHUNK_HDR + dlen)) {
            PyErr_SetString(PyExc_RuntimeError, "seal_chunk_burst: encryption failed");
            goto done;
        }
    }
    result = out;
    out = NULL;
done:
    Py_XDECREF(out);
    EVP_CIPHER_CTX_free(ctx);
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    PyBuffer_Release(&iv);
    return result;
}

static PyObject *open_burst(PyObject *self, PyObject *args)
{
    Py_buffer view, cid, out, key, iv;
    Py_ssize_t seg;
    int bit, cipher;
    unsigned long long min_pn;
    if (!PyArg_ParseTuple(args, "y*ny*iKw*iy*y*:open_burst", &view, &seg, &cid, &bit, &min_pn, &out, &cipher,
                          &key, &iv))
        return NULL;
    PyObject *result = NULL, *left = NULL;
    EVP_CIPHER_CTX *ctx = NULL;
    Py_ssize_t oseg = seg - TAG + TRL;
    if (seg < HDR + TAG || view.len % seg || cid.len != 8 || iv.len != 12 || out.len < view.len / seg * oseg) {
        PyErr_SetString(PyExc_ValueError, "open_burst: arguments out of range");
        goto done;
    }
    ctx = context(cipher, key.buf, key.len, 0);
    if (ctx == NULL)
        goto done;
    left = PyList_New(0);
    if (left == NULL)
        goto done;
    const unsigned char *v = view.buf;
    unsigned char *o = out.buf;
    unsigned char nonce[12];
    Py_ssize_t k = 0, bad = 0, count = view.len / seg;
    for (Py_ssize_t i = 0; i < count; i++, k += oseg) {
        const unsigned char *p = v + i * seg;
        unsigned char *q = o + k;
        uint64_t pn = get_be64(p + 10);
        memcpy(q, p, HDR);
        q[0] = T_DATA;
        if ((p[0] & 0xFE) != T_SEALED || p[1] != 1 || (p[0] & 1) != bit || pn < min_pn || memcmp(p + 2, cid.buf, 8)) {
            memset(q + oseg - TRL, 0xFF, TRL);
            PyObject *off = PyLong_FromSsize_t(i * seg);
            if (off == NULL || PyList_Append(left, off) < 0) {
                Py_XDECREF(off);
                goto done;
            }
            Py_DECREF(off);
            continue;
        }
        int m, ok;
        Py_ssize_t clen = seg - HDR - TAG;
        nonce_of(nonce, iv.buf, pn);
        ok = EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 0) && EVP_CipherUpdate(ctx, NULL, &m, p, HDR) &&
             EVP_CipherUpdate(ctx, q + HDR, &m, p + HDR, (int)clen) &&
             set_tag(ctx, p + seg - TAG) && EVP_CipherFinal_ex(ctx, q + HDR + m, &m) > 0;
        put_be64(q + oseg - TRL, ok ? 0 : UINT64_MAX);
        bad += !ok;
    }
    result = Py_BuildValue("nnO", k, bad, left);
done:
    Py_XDECREF(left);
    EVP_CIPHER_CTX_free(ctx);
    PyBuffer_Release(&view);
    PyBuffer_Release(&cid);
    PyBuffer_Release(&out);
    PyBuffer_Release(&key);
    PyBuffer_Release(&iv);
    return result;
}

static PyMethodDef methods[] = {
    {"seal_burst", seal_burst, METH_VARARGS, "Seal a burst of checksummed DATA datagrams."},
    {"seal_chunk_burst", seal_chunk_burst, METH_VARARGS, "Build and seal a burst of CHUNK packets."},
    {"open_burst", open_burst, METH_VARARGS, "Open a burst of SEALED datagrams."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_seal", "C loops for ftx.core.secure.datagrams", -1,
                                    methods};

PyMODINIT_FUNC PyInit__seal(void)
{
    PyObject *m = PyModule_Create(&module);
    /* the libcrypto these loops run on: its AES-GCM sets their speed (benchmarks/bench_udp.py --seal-loops) */
    if (m != NULL && PyModule_AddStringConstant(m, "openssl_version", OpenSSL_version(OPENSSL_VERSION)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
