/*
 * weights_plan.c - where a backend that copies weights puts them (kern_weights_plan) and
 * how it copies them (kern_weights_copy): one region, each view's slice stored compact,
 * views inside another view sharing its copy, and a copy in bounded chunks through a
 * staging buffer with the file's pages released behind each chunk.
 *
 * Plain C with the device behind a sink (kern_copy_sink_t), so the whole procedure runs
 * in the CPU unit tests with host memory standing in for the GPU.
 */
#include "common/check.h"
#include "kernels/kern_backend_impl.h"

#include <stdlib.h>
#include <string.h>

/* The source bytes of a ref: [lo, hi); contiguous when its rows and matrices follow each
 * other without gaps (so its compact copy is the same bytes). */
static void source_range(const kern_weight_ref_t *r, uintptr_t *lo, uintptr_t *hi, bool *contig,
                         size_t *slice)
{
    if (r->w == NULL) {
        *lo = (uintptr_t)*r->vec;
        *hi = *lo + (uintptr_t)r->vec_len * sizeof(float);
        *contig = true;
        *slice = 0;
        return;
    }
    const kern_weight_t *w = r->w;
    *slice = tdm_type_row_size(w->type, w->n_cols);
    const size_t mat = (size_t)w->n_rows * w->row_bytes;
    const size_t stride = r->n_mats > 1 ? *r->stride : mat;
    *lo = (uintptr_t)w->data;
    *hi = *lo + (size_t)(r->n_mats - 1) * stride + (size_t)(w->n_rows - 1) * w->row_bytes + *slice;
    *contig = *slice == w->row_bytes && stride == mat;
}

static uint64_t copy_bytes(const kern_weight_ref_t *r, size_t slice)
{
    if (r->w == NULL) {
        return (uint64_t)r->vec_len * sizeof(float);
    }
    return (uint64_t)r->n_mats * (uint64_t)r->w->n_rows * slice;
}

tdm_status_t kern_weights_plan(const kern_weight_ref_t *refs, int n, size_t align,
                               kern_weight_place_t *place, uint64_t *total, tdm_error_t *err)
{
    uintptr_t *lo = malloc((size_t)(n > 0 ? n : 1) * sizeof(*lo));
    uintptr_t *hi = malloc((size_t)(n > 0 ? n : 1) * sizeof(*hi));
    bool *contig = malloc((size_t)(n > 0 ? n : 1) * sizeof(*contig));
    if (lo == NULL || hi == NULL || contig == NULL) {
        free(lo);
        free(hi);
        free(contig);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "weights: out of memory planning %d views", n);
    }
    for (int i = 0; i < n; i++) {
        if (refs[i].w != NULL &&
            (refs[i].n_mats < 1 || (refs[i].n_mats > 1 && refs[i].stride == NULL))) {
            free(lo);
            free(hi);
            free(contig);
            return tdm_error_set(err, TDM_ERR_INTERNAL, "weights: view %d has %d matrices", i,
                                 refs[i].n_mats);
        }
        source_range(&refs[i], &lo[i], &hi[i], &contig[i], &place[i].slice_bytes);
        place[i].alias_of = -1;
        place[i].alias_off = 0;
    }
    /* A contiguous view inside another contiguous view shares its copy (the tied output
     * head inside token_embd). The container must not itself be an alias: take the
     * largest range, and among equal ranges the first. */
    for (int j = 0; j < n; j++) {
        if (!contig[j]) {
            continue;
        }
        int best = -1;
        for (int i = 0; i < n; i++) {
            if (i == j || !contig[i] || lo[i] > lo[j] || hi[i] < hi[j]) {
                continue;
            }
            const bool bigger = hi[i] - lo[i] > hi[j] - lo[j];
            if (!bigger && i > j) {
                continue; /* equal ranges: the first keeps the copy */
            }
            if (best < 0 || hi[i] - lo[i] > hi[best] - lo[best]) {
                best = i;
            }
        }
        if (best >= 0) {
            place[j].alias_of = best;
            place[j].alias_off = lo[j] - lo[best];
        }
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (place[i].alias_of >= 0) {
            place[i].offset = 0;
            place[i].bytes = 0;
            continue;
        }
        off = (off + align - 1) / align * align;
        place[i].offset = off;
        place[i].bytes = copy_bytes(&refs[i], place[i].slice_bytes);
        off += place[i].bytes;
    }
    *total = off;
    free(lo);
    free(hi);
    free(contig);
    return TDM_OK;
}

void kern_weights_rebind(kern_weight_ref_t *refs, int n, const kern_weight_place_t *place,
                         unsigned char *base)
{
    for (int i = 0; i < n; i++) {
        const kern_weight_place_t *p = &place[i];
        unsigned char *dst =
            p->alias_of >= 0 ? base + place[p->alias_of].offset + p->alias_off : base + p->offset;
        if (refs[i].w == NULL) {
            *refs[i].vec = (const float *)dst;
            continue;
        }
        kern_weight_t *w = refs[i].w;
        w->data = dst;
        w->row_bytes = p->slice_bytes;
        if (refs[i].n_mats > 1) {
            *refs[i].stride = (size_t)w->n_rows * p->slice_bytes;
        }
    }
}

/* Gathers up to `room` bytes of ref r starting at byte `pos` of its compact copy into buf;
 * returns how many it took. Rows of a column slice are gathered one slice at a time. */
static size_t gather(const kern_weight_ref_t *r, size_t slice, uint64_t pos, unsigned char *buf,
                     size_t room, kern_release_fn release, void *release_arg)
{
    if (r->w == NULL) {
        const uint64_t total = (uint64_t)r->vec_len * sizeof(float);
        size_t n = total - pos < room ? (size_t)(total - pos) : room;
        const unsigned char *src = (const unsigned char *)*r->vec + pos;
        memcpy(buf, src, n);
        if (release != NULL) {
            release(release_arg, src, n);
        }
        return n;
    }
    const kern_weight_t *w = r->w;
    const size_t stride = r->n_mats > 1 ? *r->stride : (size_t)w->n_rows * w->row_bytes;
    size_t done = 0;
    while (done < room) {
        const uint64_t row = (pos + done) / slice, in_row = (pos + done) % slice;
        if (row >= (uint64_t)r->n_mats * (uint64_t)w->n_rows) {
            break;
        }
        const uint64_t e = row / (uint64_t)w->n_rows, rr = row % (uint64_t)w->n_rows;
        const unsigned char *src =
            (const unsigned char *)w->data + e * stride + rr * w->row_bytes + in_row;
        size_t n = slice - (size_t)in_row;
        if (n > room - done) {
            n = room - done;
        }
        memcpy(buf + done, src, n);
        if (release != NULL) {
            release(release_arg, src, n);
        }
        done += n;
    }
    return done;
}

tdm_status_t kern_weights_copy(const kern_weight_ref_t *refs, int n,
                               const kern_weight_place_t *place, unsigned char *base,
                               const kern_copy_sink_t *sink, kern_release_fn release,
                               void *release_arg, tdm_error_t *err)
{
    int slot = 0;
    for (int i = 0; i < n; i++) {
        const kern_weight_place_t *p = &place[i];
        for (uint64_t pos = 0; pos < p->bytes;) {
            /* the slot's previous copy must be done before it is refilled */
            TDM_CHECK(sink->wait(sink->arg, slot, err));
            unsigned char *buf = sink->staging[slot];
            const size_t room = p->bytes - pos < sink->staging_bytes ? (size_t)(p->bytes - pos)
                                                                     : sink->staging_bytes;
            const size_t got =
                gather(&refs[i], p->slice_bytes, pos, buf, room, release, release_arg);
            if (got != room) {
                return tdm_error_set(err, TDM_ERR_INTERNAL,
                                     "weights: view %d gave %zu of %zu bytes at %llu", i, got, room,
                                     (unsigned long long)pos);
            }
            TDM_CHECK(sink->copy(sink->arg, slot, base + p->offset + pos, got, err));
            pos += got;
            slot ^= 1;
        }
    }
    TDM_CHECK(sink->wait(sink->arg, 0, err));
    return sink->wait(sink->arg, 1, err);
}
