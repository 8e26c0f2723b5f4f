/* xp_model_id.c - see xp_model_id.h. */
#include "transport/xp_model_id.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

static tdm_status_t hash_header(XXH3_state_t *h, const char *path, uint64_t n, tdm_error_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return tdm_error_set(err, TDM_ERR_IO, "model id: cannot open %s: %s", path,
                             strerror(errno));
    }
    char buf[1 << 16];
    uint64_t off = 0;
    tdm_status_t st = TDM_OK;
    while (off < n) {
        size_t want = n - off < sizeof(buf) ? (size_t)(n - off) : sizeof(buf);
        ssize_t got = pread(fd, buf, want, (off_t)off);
        if (got <= 0) {
            st = tdm_error_set(err, TDM_ERR_IO, "model id: cannot read %s: %s", path,
                               got < 0 ? strerror(errno) : "unexpected end of file");
            break;
        }
        XXH3_128bits_update(h, buf, (size_t)got);
        off += (uint64_t)got;
    }
    close(fd);
    return st;
}

tdm_status_t xp_model_id(const gguf_ctx_t *g, xp_msg_model_id_t *out, tdm_error_t *err)
{
    XXH3_state_t *h = XXH3_createState();
    if (h == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "model id: out of memory");
    }
    XXH3_128bits_reset(h);
    memset(out, 0, sizeof(*out));
    tdm_status_t st = TDM_OK;
    for (uint32_t f = 0; f < gguf_n_files(g) && st == TDM_OK; f++) {
        st = hash_header(h, gguf_path(g, f), gguf_data_offset(g, f), err);
        out->file_size += gguf_file_size(g, f);
    }
    const uint64_t nt = gguf_n_tensors(g);
    for (uint64_t i = 0; i < nt && st == TDM_OK; i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        const size_t n = t->nbytes < 64 ? (size_t)t->nbytes : 64;
        XXH3_128bits_update(h, t->data, n);
        XXH3_128bits_update(h, (const unsigned char *)t->data + t->nbytes - n, n);
    }
    if (st == TDM_OK) {
        XXH128_hash_t a = XXH3_128bits_digest(h);
        /* the second half: the same digest keyed by the size and count, so the 32 bytes are
         * not just the 16 repeated */
        uint64_t key[3] = {a.low64, out->file_size, nt};
        XXH128_hash_t b = XXH3_128bits(key, sizeof(key));
        memcpy(out->hash, &a.high64, 8);
        memcpy(out->hash + 8, &a.low64, 8);
        memcpy(out->hash + 16, &b.high64, 8);
        memcpy(out->hash + 24, &b.low64, 8);
        out->n_tensors = nt;
    }
    XXH3_freeState(h);
    return st;
}

void xp_model_id_short(const xp_msg_model_id_t *id, char *out)
{
    for (int i = 0; i < 8; i++) {
        snprintf(out + 2 * i, 3, "%02x", id->hash[i]);
    }
}
