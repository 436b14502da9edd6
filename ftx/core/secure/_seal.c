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
 * ``cipher`` is the wire code of the AEAD (keys.CIPHERS: OpenSSL's EVP with the key given),
 * or a bound ``encrypt_into`` / ``decrypt_into`` of cryptography's AEAD object for the same
 * key, called once a datagram from this loop: cryptography brings its own libcrypto, whose
 * AES-GCM may be far faster in bulk (VAES/AVX-512) than the system one these loops link,
 * while each call costs more (datagrams.py BULK_AEAD_FROM picks by datagram size).  Both
 * give the same bytes: same AEAD, key, nonce and AAD.
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

/* The AEAD of one burst: an EVP context, or a Python callable (cryptography's
   encrypt_into / decrypt_into for this key; ``cipher`` above). */
struct aead {
    EVP_CIPHER_CTX *ctx;
    PyObject *fn; /* borrowed */
};

/* cryptography's InvalidTag: what fn raises for a datagram that does not open */
static PyObject *invalid_tag;

static int aead_init(struct aead *a, PyObject *cipher, const Py_buffer *key, int enc)
{
    a->ctx = NULL;
    a->fn = NULL;
    if (PyCallable_Check(cipher)) {
        if (invalid_tag == NULL) {
            PyObject *mod = PyImport_ImportModule("cryptography.exceptions");
            if (mod == NULL)
                return -1;
            invalid_tag = PyObject_GetAttrString(mod, "InvalidTag");
            Py_DECREF(mod);
            if (invalid_tag == NULL)
                return -1;
        }
        a->fn = cipher;
        return 0;
    }
    int id = PyLong_Check(cipher) ? (int)PyLong_AsLong(cipher) : -1;
    if (id == -1 && PyErr_Occurred())
        return -1;
    a->ctx = context(id, key->buf, key->len, enc);
    return a->ctx == NULL ? -1 : 0;
}

/* fn(nonce, in[0:inlen], aad[0:HDR], out[0:outlen]): a new reference, or NULL with an exception */
static PyObject *aead_call(PyObject *fn, const unsigned char *nonce, const unsigned char *aad,
                           const unsigned char *in, Py_ssize_t inlen, unsigned char *out, Py_ssize_t outlen)
{
    PyObject *args[4] = {PyBytes_FromStringAndSize((const char *)nonce, 12),
                         PyMemoryView_FromMemory((char *)in, inlen, PyBUF_READ),
                         PyMemoryView_FromMemory((char *)aad, HDR, PyBUF_READ),
                         PyMemoryView_FromMemory((char *)out, outlen, PyBUF_WRITE)};
    PyObject *r = NULL;
    if (args[0] != NULL && args[1] != NULL && args[2] != NULL && args[3] != NULL)
        r = PyObject_Vectorcall(fn, args, 4, NULL);
    for (int i = 0; i < 4; i++)
        Py_XDECREF(args[i]);
    return r;
}

/* Seal: aad[0:HDR] authenticated, in[0:inlen] encrypted to out[0:inlen] (in == out: in
   place), the tag at out + inlen.  0, or -1 with an exception set. */
static int aead_seal(struct aead *a, const unsigned char *nonce, const unsigned char *aad, const unsigned char *in,
                     Py_ssize_t inlen, unsigned char *out)
{
    if (a->fn != NULL) {
        PyObject *r = aead_call(a->fn, nonce, aad, in, inlen, out, inlen + TAG);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    int m;
    if (!EVP_CipherInit_ex(a->ctx, NULL, NULL, NULL, nonce, 1) || !EVP_CipherUpdate(a->ctx, NULL, &m, aad, HDR) ||
        !EVP_CipherUpdate(a->ctx, out, &m, in, (int)inlen) || !EVP_CipherFinal_ex(a->ctx, out + m, &m) ||
        !get_tag(a->ctx, out + inlen)) {
        PyErr_SetString(PyExc_RuntimeError, "_seal: encryption failed");
        return -1;
    }
    return 0;
}

/* Seal plaintext in two pieces: out[0:head] (laid out there already, encrypted in place), then
   src[0:n] (encrypted from where it is to out + head: no copy of the data first); the tag at
   out + head + n.  head is a multiple of the AES block (16), so that the second piece starts
   on a block and the AEAD stays on its bulk path (a piece ending mid-block, e.g. after the
   31-byte chunk header, took it off the bulk path: the whole took twice as long).  With a
   callable the data is copied in and sealed in place in one call.  0, or -1 with an exception. */
static int aead_seal2(struct aead *a, const unsigned char *nonce, const unsigned char *aad, unsigned char *out,
                      Py_ssize_t head, const unsigned char *src, Py_ssize_t n)
{
    if (a->fn != NULL) {
        memcpy(out + head, src, (size_t)n);
        return aead_seal(a, nonce, aad, out, head + n, out);
    }
    int m;
    if (!EVP_CipherInit_ex(a->ctx, NULL, NULL, NULL, nonce, 1) || !EVP_CipherUpdate(a->ctx, NULL, &m, aad, HDR) ||
        !EVP_CipherUpdate(a->ctx, out, &m, out, (int)head) ||
        (n > 0 && !EVP_CipherUpdate(a->ctx, out + head, &m, src, (int)n)) ||
        !EVP_CipherFinal_ex(a->ctx, out + head + n, &m) || !get_tag(a->ctx, out + head + n)) {
        PyErr_SetString(PyExc_RuntimeError, "_seal: encryption failed");
        return -1;
    }
    return 0;
}

/* Open: in[0:inlen] is ciphertext then tag (inlen >= TAG), aad[0:HDR]; the plaintext to
   out[0:inlen - TAG].  1 if it authenticates, 0 if not (out then holds garbage), -1 with an
   exception set (not an authentication failure: out of memory, a bad argument). */
static int aead_open(struct aead *a, const unsigned char *nonce, const unsigned char *aad, const unsigned char *in,
                     Py_ssize_t inlen, unsigned char *out)
{
    if (a->fn != NULL) {
        PyObject *r = aead_call(a->fn, nonce, aad, in, inlen, out, inlen - TAG);
        if (r != NULL) {
            Py_DECREF(r);
            return 1;
        }
        if (PyErr_ExceptionMatches(invalid_tag)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    int m;
    return EVP_CipherInit_ex(a->ctx, NULL, NULL, NULL, nonce, 0) && EVP_CipherUpdate(a->ctx, NULL, &m, aad, HDR) &&
           EVP_CipherUpdate(a->ctx, out, &m, in, (int)(inlen - TAG)) && set_tag(a->ctx, in + inlen - TAG) &&
           EVP_CipherFinal_ex(a->ctx, out + m, &m) > 0;
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
    int ptype;
    PyObject *cipher;
    if (!PyArg_ParseTuple(args, "w*y*nnnKiOy*y*:seal_burst", &out, &src, &src_seg, &size, &dst_seg, &pn, &ptype,
                          &cipher, &key, &iv))
        return NULL;
    PyObject *result = NULL;
    struct aead a = {NULL, NULL};
    Py_ssize_t n = src_seg > HDR + TRL ? (size + src_seg - 1) / src_seg : 0;
    if (n == 0 || size > src.len || dst_seg != src_seg + TAG - TRL || iv.len != 12 ||
        out.len != size + n * (TAG - TRL) || size - (n - 1) * src_seg < HDR + TRL) {
        PyErr_SetString(PyExc_ValueError, "seal_burst: arguments out of range");
        goto done;
    }
    if (aead_init(&a, cipher, &key, 1) < 0)
        goto done;
    const unsigned char *s = src.buf;
    unsigned char *d = out.buf;
    unsigned char nonce[12];
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len = i == n - 1 ? size - i * src_seg : src_seg; /* this datagram, with its trailer */
        const unsigned char *p = s + i * src_seg;
        unsigned char *q = d + i * dst_seg;
        memcpy(q, p, HDR);
        q[0] = (unsigned char)ptype;
        nonce_of(nonce, iv.buf, pn + (uint64_t)i);
        if (aead_seal(&a, nonce, q, p + HDR, len - HDR - TRL, q + HDR) < 0)
            goto done;
    }
    result = PyLong_FromSsize_t(n);
done:
    EVP_CIPHER_CTX_free(a.ctx);
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
 *   seal_burst, without a plaintext burst in between: each datagram's headers are laid out in
 *   place and the chunk data encrypted straight from ``data`` behind them (aead_seal2; with
 *   data out of cache 480 against 553 ns a 1452-byte datagram when it was copied in first and
 *   encrypted in place).  The buffer is not zeroed first: every byte of it is written.
 */
#define CHUNK_HDR 31

static PyObject *seal_chunk_burst(PyObject *self, PyObject *args)
{
    Py_buffer data, key, iv;
    Py_ssize_t mss, off, nbytes;
    unsigned long long dcid, pn, index, csum;
    unsigned long fid, clen;
    int ptype;
    PyObject *cipher;
    if (!PyArg_ParseTuple(args, "nKKikKkKy*nnOy*y*:seal_chunk_burst", &mss, &dcid, &pn, &ptype, &fid, &index,
                          &clen, &csum, &data, &off, &nbytes, &cipher, &key, &iv))
        return NULL;
    PyObject *result = NULL, *out = NULL;
    struct aead a = {NULL, NULL};
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
    if (aead_init(&a, cipher, &key, 1) < 0)
        goto done;
    unsigned char *base = (unsigned char *)PyByteArray_AS_STRING(out);
    const unsigned char *src = (const unsigned char *)data.buf + off;
    unsigned char nonce[12];
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char *q = base + i * mss;
        unsigned char *fh = q + HDR;
        Py_ssize_t dlen = i == n - 1 ? last : room;
        ftx_chunk_packet_header(q, ptype, dcid, pn + (uint64_t)i, fid, index, clen, (uint64_t)(off + i * room), csum,
                                (uint64_t)dlen);
        nonce_of(nonce, iv.buf, pn + (uint64_t)i);
        /* the frame header and the first data byte (32 bytes: two AES blocks) in place, the
           rest of the data straight from the chunk (aead_seal2) */
        fh[CHUNK_HDR] = src[i * room];
        if (aead_seal2(&a, nonce, q, fh, CHUNK_HDR + 1, src + i * room + 1, dlen - 1) < 0)
            goto done;
    }
    result = out;
    out = NULL;
done:
    Py_XDECREF(out);
    EVP_CIPHER_CTX_free(a.ctx);
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    PyBuffer_Release(&iv);
    return result;
}

static PyObject *open_burst(PyObject *self, PyObject *args)
{
    Py_buffer view, cid, out, key, iv;
    Py_ssize_t seg;
    int bit;
    unsigned long long min_pn;
    PyObject *cipher;
    if (!PyArg_ParseTuple(args, "y*ny*iKw*Oy*y*:open_burst", &view, &seg, &cid, &bit, &min_pn, &out, &cipher,
                          &key, &iv))
        return NULL;
    PyObject *result = NULL, *left = NULL;
    struct aead a = {NULL, NULL};
    Py_ssize_t oseg = seg - TAG + TRL;
    if (seg < HDR + TAG || view.len % seg || cid.len != 8 || iv.len != 12 || out.len < view.len / seg * oseg) {
        PyErr_SetString(PyExc_ValueError, "open_burst: arguments out of range");
        goto done;
    }
    if (aead_init(&a, cipher, &key, 0) < 0)
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
        nonce_of(nonce, iv.buf, pn);
        int ok = aead_open(&a, nonce, p, p + HDR, seg - HDR, q + HDR);
        if (ok < 0)
            goto done;
        put_be64(q + oseg - TRL, ok ? 0 : UINT64_MAX);
        bad += !ok;
    }
    result = Py_BuildValue("nnO", k, bad, left);
done:
    Py_XDECREF(left);
    EVP_CIPHER_CTX_free(a.ctx);
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
    /* VERSION 2: ``cipher`` may be cryptography's encrypt_into / decrypt_into (datagrams.py checks) */
    if (m != NULL && (PyModule_AddStringConstant(m, "openssl_version", OpenSSL_version(OPENSSL_VERSION)) < 0 ||
                      PyModule_AddIntConstant(m, "VERSION", 2) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
