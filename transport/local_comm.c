/* local_comm.c - in-process collectives over threads (see local_comm.h). */
#include "transport/local_comm.h"

#include "common/mem.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct xp_local_rank {
    xp_local_world_t *w;
    int rank;
    float *tmp; /* all-reduce result before it is copied back; grows, never shrinks */
    int64_t tmp_cap;
} xp_local_rank_t;

struct xp_local_world {
    int tp, ep, size;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived;
    unsigned long generation;
    bool aborted;
    const float **pub; /* per rank: the buffer it published for the current call */
    xp_local_rank_t *ranks;
};

/* A barrier that an abort can break. */
static tdm_status_t barrier(xp_local_world_t *w, tdm_error_t *err)
{
    pthread_mutex_lock(&w->mu);
    unsigned long gen = w->generation;
    if (!w->aborted && ++w->arrived == w->size) {
        w->arrived = 0;
        w->generation++;
        pthread_cond_broadcast(&w->cv);
    } else {
        while (!w->aborted && gen == w->generation) {
            pthread_cond_wait(&w->cv, &w->mu);
        }
    }
    bool aborted = w->aborted;
    pthread_mutex_unlock(&w->mu);
    if (aborted) {
        return tdm_error_set(err, TDM_ERR_CANCELED, "local comm: the world was aborted");
    }
    return TDM_OK;
}

/* Members of rank r's group, ascending: first, count and stride. */
static void group_of(const xp_local_world_t *w, int r, shd_group_t g, int *first, int *count,
                     int *stride)
{
    const int tp_rank = r % w->tp, ep_rank = r / w->tp;
    switch (g) {
    case SHD_GROUP_TP:
        *first = ep_rank * w->tp, *count = w->tp, *stride = 1;
        break;
    case SHD_GROUP_EP:
        *first = tp_rank, *count = w->ep, *stride = w->tp;
        break;
    default:
        *first = 0, *count = w->size, *stride = 1;
        break;
    }
}

static tdm_status_t local_all_reduce(void *impl, shd_group_t g, float *buf, int64_t n,
                                     tdm_error_t *err)
{
    xp_local_rank_t *me = impl;
    xp_local_world_t *w = me->w;
    if (n > me->tmp_cap) {
        float *t = realloc(me->tmp, (size_t)n * sizeof(float));
        if (t == NULL) {
            xp_local_world_abort(w);
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "local comm: out of memory");
        }
        me->tmp = t;
        me->tmp_cap = n;
    }
    w->pub[me->rank] = buf;
    tdm_status_t st = barrier(w, err);
    if (st != TDM_OK) {
        return st;
    }
    int first, count, stride;
    group_of(w, me->rank, g, &first, &count, &stride);
    memcpy(me->tmp, w->pub[first], (size_t)n * sizeof(float));
    for (int i = 1; i < count; i++) {
        const float *src = w->pub[first + i * stride];
        for (int64_t j = 0; j < n; j++) {
            me->tmp[j] += src[j];
        }
    }
    st = barrier(w, err); /* everyone has read every buffer */
    if (st != TDM_OK) {
        return st;
    }
    memcpy(buf, me->tmp, (size_t)n * sizeof(float));
    return TDM_OK;
}

static tdm_status_t local_all_gather(void *impl, shd_group_t g, const float *in, int64_t n,
                                     float *out, tdm_error_t *err)
{
    xp_local_rank_t *me = impl;
    xp_local_world_t *w = me->w;
    w->pub[me->rank] = in;
    tdm_status_t st = barrier(w, err);
    if (st != TDM_OK) {
        return st;
    }
    int first, count, stride;
    group_of(w, me->rank, g, &first, &count, &stride);
    for (int i = 0; i < count; i++) {
        memcpy(out + (int64_t)i * n, w->pub[first + i * stride], (size_t)n * sizeof(float));
    }
    return barrier(w, err);
}

static const shd_comm_ops_t local_ops = {
    .name = "local",
    .all_reduce_sum_f32 = local_all_reduce,
    .all_gather_f32 = local_all_gather,
};

tdm_status_t xp_local_world_create(int tp_size, int ep_size, xp_local_world_t **out,
                                   tdm_error_t *err)
{
    if (tp_size < 1 || ep_size < 1 || tp_size * ep_size > 1024) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "local comm: tp %d x ep %d ranks", tp_size,
                             ep_size);
    }
    xp_local_world_t *w = tdm_xcalloc(1, sizeof(*w));
    w->tp = tp_size;
    w->ep = ep_size;
    w->size = tp_size * ep_size;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->pub = tdm_xcalloc((size_t)w->size, sizeof(*w->pub));
    w->ranks = tdm_xcalloc((size_t)w->size, sizeof(*w->ranks));
    for (int r = 0; r < w->size; r++) {
        w->ranks[r].w = w;
        w->ranks[r].rank = r;
    }
    *out = w;
    return TDM_OK;
}

void xp_local_world_destroy(xp_local_world_t *w)
{
    if (w == NULL) {
        return;
    }
    for (int r = 0; r < w->size; r++) {
        free(w->ranks[r].tmp);
    }
    free(w->ranks);
    free(w->pub);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

shd_comm_t xp_local_comm(xp_local_world_t *w, int rank)
{
    shd_comm_t c = {&local_ops, &w->ranks[rank]};
    return c;
}

void xp_local_world_abort(xp_local_world_t *w)
{
    pthread_mutex_lock(&w->mu);
    w->aborted = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}
