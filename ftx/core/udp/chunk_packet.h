/* The first 49 bytes of a DATA packet that carries one CHUNK frame (protocol.md 14.1 and
   14.3): the packet header, then the frame header; the chunk's bytes follow.  Written by
   both C loops: _burst.c (plaintext bursts) and ../secure/_seal.c (sealed bursts). */
#ifndef FTX_CHUNK_PACKET_H
#define FTX_CHUNK_PACKET_H

#include <stdint.h>

#define FTX_PACKET_HDR 18 /* type, version, destination cid (8), packet number (8) */
#define FTX_CHUNK_HDR 31  /* CHUNK, file id (4), index (8), chunk length (4), offset (4), checksum (8), length (2) */
#define FTX_F_CHUNK 0x04

static inline void ftx_put_be(unsigned char *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

static inline void ftx_chunk_packet_header(unsigned char *p, int ptype, uint64_t dcid, uint64_t pn, uint64_t fid,
                                           uint64_t index, uint64_t clen, uint64_t off, uint64_t csum,
                                           uint64_t dlen)
{
    unsigned char *fh = p + FTX_PACKET_HDR;
    p[0] = (unsigned char)ptype;
    p[1] = 1; /* version */
    ftx_put_be(p + 2, dcid, 8);
    ftx_put_be(p + 10, pn, 8);
    fh[0] = FTX_F_CHUNK;
    ftx_put_be(fh + 1, fid, 4);
    ftx_put_be(fh + 5, index, 8);
    ftx_put_be(fh + 13, clen, 4);
    ftx_put_be(fh + 17, off, 4);
    ftx_put_be(fh + 21, csum, 8);
    ftx_put_be(fh + 29, dlen, 2);
}

#endif
