/*
 * backend.c - the public kern_be_* functions: the device choice, the sticky error, and
 * the forwarding of every op to the backend's table (kern_backend_impl.h).
 */
#include "common/check.h"
#include "common/log.h"
#include "kernels/kern_backend_impl.h"
#include "tdm_build_config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- errors ------------------------------------------------------------------------- */

tdm_status_t kern_be_fail(kern_backend_t *be, tdm_status_t status, const char *fmt, ...)
{
    if (be->failed) {
        return status;
    }
    be->failed = true;
    be->err.status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(be->err.msg, sizeof(be->err.msg), fmt, ap);
    va_end(ap);
    return status;
}

tdm_status_t kern_be_take_error(kern_backend_t *be, tdm_error_t *err)
{
    if (!be->failed) {
        return TDM_OK;
    }
    const tdm_status_t st = tdm_error_set(err, be->err.status, "%s", be->err.msg);
    be->failed = false;
    tdm_error_clear(&be->err);
    return st;
}

/* ---- creation ------------------------------------------------------------------------ */

tdm_status_t kern_device_parse(const char *s, kern_device_kind_t *kind, int *index, bool *auto_pick,
                               tdm_error_t *err)
{
    *index = 0;
    *auto_pick = false;
    if (s == NULL || strcmp(s, "auto") == 0) {
        *kind = KERN_DEVICE_CUDA;
        *auto_pick = true;
        return TDM_OK;
    }
    if (strcmp(s, "cpu") == 0) {
        *kind = KERN_DEVICE_CPU;
        return TDM_OK;
    }
    if (strncmp(s, "cuda", 4) == 0 && (s[4] == '\0' || s[4] == ':')) {
        *kind = KERN_DEVICE_CUDA;
        if (s[4] == ':') {
            char *end = NULL;
            long v = strtol(s + 5, &end, 10);
            if (s[5] < '0' || s[5] > '9' || *end != '\0' || v > 1023) {
                return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                     "device '%s': expected cuda:N with N a GPU index", s);
            }
            *index = (int)v;
        }
        return TDM_OK;
    }
    return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                         "device '%s': expected auto, cpu, cuda or cuda:N", s);
}

tdm_status_t kern_backend_create(const kern_backend_params_t *p, kern_backend_t **out,
                                 tdm_error_t *err)
{
    kern_device_kind_t kind;
    int index;
    bool auto_pick;
    const char *dev = p->device != NULL ? p->device : getenv("TANDEM_DEVICE");
    TDM_CHECK(kern_device_parse(dev, &kind, &index, &auto_pick, err));
    char why[256] = "";
    if (kind == KERN_DEVICE_CUDA) {
#if TDM_HAVE_CUDA
        tdm_error_t cerr = {0};
        tdm_status_t st = kern_backend_create_cuda(index, out, &cerr);
        if (st == TDM_OK || !auto_pick) {
            if (st != TDM_OK) {
                tdm_error_set(err, st, "%s", tdm_error_msg(&cerr));
            }
            return st;
        }
        snprintf(why, sizeof(why), "%s", tdm_error_msg(&cerr));
#else
        if (!auto_pick) {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                 "device '%s': this build has no CUDA (rebuild with the CUDA "
                                 "toolkit installed, see README)",
                                 dev);
        }
        snprintf(why, sizeof(why), "this build has no CUDA");
#endif
    }
    TDM_CHECK(kern_backend_create_cpu(p, out, err));
    if (why[0] != '\0') {
        snprintf((*out)->fallback, sizeof((*out)->fallback), "%s", why);
    }
    return TDM_OK;
}

void kern_backend_destroy(kern_backend_t *be)
{
    if (be != NULL) {
        be->ops->destroy(be);
    }
}

kern_device_kind_t kern_be_kind(const kern_backend_t *be)
{
    return be->kind;
}

const char *kern_be_describe(const kern_backend_t *be)
{
    return be->desc;
}

const char *kern_be_fallback_reason(const kern_backend_t *be)
{
    return be->fallback;
}

int kern_be_cuda_device(const kern_backend_t *be)
{
#if TDM_HAVE_CUDA
    if (be != NULL && be->kind == KERN_DEVICE_CUDA) {
        return kern_backend_cuda_device(be);
    }
#endif
    (void)be;
    return -1;
}

void kern_be_stats(const kern_backend_t *be, kern_be_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    if (be->ops->stats != NULL) {
        be->ops->stats(be, out);
    }
}

bool kern_be_host_memory(const kern_backend_t *be)
{
    return be->host_memory;
}

tdm_status_t kern_be_mem_info(kern_backend_t *be, uint64_t *free_bytes, uint64_t *total_bytes,
                              tdm_error_t *err)
{
    return be->ops->mem_info(be, free_bytes, total_bytes, err);
}

#if !TDM_HAVE_CUDA
int kern_gpu_count(void)
{
    return 0;
}

tdm_status_t kern_gpu_info(int index, kern_gpu_info_t *out, tdm_error_t *err)
{
    (void)out;
    return tdm_error_set(err, TDM_ERR_UNSUPPORTED, "GPU %d: this build has no CUDA", index);
}
#endif

/* ---- memory and weights ------------------------------------------------------------------ */

tdm_status_t kern_be_alloc(kern_backend_t *be, size_t bytes, unsigned flags, const char *what,
                           void **out, tdm_error_t *err)
{
    *out = NULL;
    return be->ops->alloc(be, bytes, flags, what, out, err);
}

void kern_be_free(kern_backend_t *be, void *p)
{
    if (p != NULL) {
        be->ops->free(be, p);
    }
}

tdm_status_t kern_be_to_device(kern_backend_t *be, void *dst, const void *src, size_t n,
                               tdm_error_t *err)
{
    TDM_CHECK(kern_be_take_error(be, err));
    return be->ops->to_device(be, dst, src, n, err);
}

tdm_status_t kern_be_to_host(kern_backend_t *be, void *dst, const void *src, size_t n,
                             tdm_error_t *err)
{
    TDM_CHECK(kern_be_take_error(be, err));
    return be->ops->to_host(be, dst, src, n, err);
}

tdm_status_t kern_be_sync(kern_backend_t *be, tdm_error_t *err)
{
    tdm_status_t st = be->ops->sync(be, err);
    tdm_status_t first = kern_be_take_error(be, err); /* an op's failure names the cause */
    return first != TDM_OK ? first : st;
}

void kern_be_copy(kern_backend_t *be, void *dst, const void *src, size_t n)
{
    if (!be->failed && n > 0) {
        be->ops->copy(be, dst, src, n);
    }
}

uint64_t kern_be_weights_bytes(const kern_backend_t *be, const kern_weight_ref_t *refs, int n)
{
    return be->ops->weights_bytes(be, refs, n);
}

tdm_status_t kern_be_weights_load(kern_backend_t *be, kern_weight_ref_t *refs, int n,
                                  kern_release_fn release, void *release_arg, void **region,
                                  tdm_error_t *err)
{
    *region = NULL;
    return be->ops->weights_load(be, refs, n, release, release_arg, region, err);
}

tdm_status_t kern_be_reserve(kern_backend_t *be, const kern_reserve_t *r, tdm_error_t *err)
{
    return be->ops->reserve(be, r, err);
}

uint64_t kern_be_reserve_bytes(const kern_backend_t *be, const kern_reserve_t *r)
{
    return be->ops->reserve_bytes(be, r);
}

/* ---- steps and ops --------------------------------------------------------------------------- */

void kern_be_step_begin(kern_backend_t *be, const kern_step_t *st, bool graphable)
{
    be->step = st;
    if (!be->failed) {
        be->ops->step_begin(be, st, graphable);
    }
}

tdm_status_t kern_be_step_end(kern_backend_t *be, bool *rerun, tdm_error_t *err)
{
    /* called after a failure too: a backend that began capturing must end it */
    *rerun = false;
    tdm_status_t st = be->ops->step_end(be, rerun, err);
    be->step = NULL;
    tdm_status_t first = kern_be_take_error(be, err);
    return first != TDM_OK ? first : st;
}

/* Every op: skipped after a failure, until the failure is reported. */
#define KERN_BE_OP(be, call) \
    do {                     \
        if (!(be)->failed) { \
            (be)->ops->call; \
        }                    \
    } while (0)

void kern_be_get_rows(kern_backend_t *be, float *x, int64_t ldx, const kern_weight_t *emb)
{
    KERN_BE_OP(be, get_rows(be, x, ldx, emb));
}

void kern_be_get_out_rows(kern_backend_t *be, float *dst, int64_t ldd, const float *src,
                          int64_t lds, int64_t cols)
{
    KERN_BE_OP(be, get_out_rows(be, dst, ldd, src, lds, cols));
}

void kern_be_rms_norm(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                      const float *w, int64_t rows, int64_t cols, float eps)
{
    KERN_BE_OP(be, rms_norm(be, y, ldy, x, ldx, w, rows, cols, eps));
}

void kern_be_rope(kern_backend_t *be, float *x, int64_t ld, int n_heads, int head_dim,
                  const mdl_rope_params_t *p, const float *freq_factors)
{
    KERN_BE_OP(be, rope(be, x, ld, n_heads, head_dim, p, freq_factors));
}

void kern_be_matmul(kern_backend_t *be, int n_ops, const kern_matmul_op_t *ops, int64_t n_tok)
{
    if (n_ops > KERN_MATMUL_MAX_OPS) {
        kern_be_fail(be, TDM_ERR_INTERNAL, "matmul: %d products in one call (at most %d)", n_ops,
                     KERN_MATMUL_MAX_OPS);
        return;
    }
    KERN_BE_OP(be, matmul(be, n_ops, ops, n_tok));
}

void kern_be_swiglu(kern_backend_t *be, float *out, const float *gate, const float *up, int64_t n)
{
    KERN_BE_OP(be, swiglu(be, out, gate, up, n));
}

void kern_be_add(kern_backend_t *be, float *y, const float *a, const float *b, int64_t n)
{
    KERN_BE_OP(be, add(be, y, a, b, n));
}

void kern_be_add_bias(kern_backend_t *be, float *y, int64_t ldy, const float *bias, int64_t rows,
                      int64_t cols)
{
    KERN_BE_OP(be, add_bias(be, y, ldy, bias, rows, cols));
}

void kern_be_sum_sq(kern_backend_t *be, float *ss, int64_t lds, const float *x, int64_t ldx,
                    int64_t rows, int64_t cols)
{
    KERN_BE_OP(be, sum_sq(be, ss, lds, x, ldx, rows, cols));
}

void kern_be_rms_apply(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                       const float *ss, int64_t lds, const float *w, int64_t rows, int64_t cols,
                       int64_t n_total, float eps)
{
    KERN_BE_OP(be, rms_apply(be, y, ldy, x, ldx, ss, lds, w, rows, cols, n_total, eps));
}

void kern_be_kv_store(kern_backend_t *be, const kern_kv_layout_t *l, void *k_layer, void *v_layer,
                      const float *k, const float *v, int64_t ld)
{
    KERN_BE_OP(be, kv_store(be, l, k_layer, v_layer, k, v, ld));
}

void kern_be_attention(kern_backend_t *be, float *out, const float *q, const kern_kv_layout_t *l,
                       const void *k_layer, const void *v_layer, const kern_attn_params_t *p)
{
    KERN_BE_OP(be, attention(be, out, q, l, k_layer, v_layer, p));
}

void kern_be_moe_route(kern_backend_t *be, float *logits, const kern_route_t *r, int32_t *sel,
                       float *w)
{
    KERN_BE_OP(be, moe_route(be, logits, r, sel, w));
}

void kern_be_moe_experts(kern_backend_t *be, const kern_moe_t *moe, const float *x, int64_t ldx,
                         const int32_t *sel, const float *w, float *out, int64_t ldo, int64_t n_tok)
{
    KERN_BE_OP(be, moe_experts(be, moe, x, ldx, sel, w, out, ldo, n_tok));
}

/* The optional ops (a backend without them fails the step, naming the op). */
#define KERN_BE_OPT_OP(be, name, call)                              \
    do {                                                            \
        if ((be)->failed) {                                         \
        } else if ((be)->ops->name == NULL) {                       \
            kern_be_fail(be, TDM_ERR_UNSUPPORTED,                   \
                         "%s: no %s kernel (Gated DeltaNet models " \
                         "run on the CPU)",                         \
                         (be)->desc, #name);                        \
        } else {                                                    \
            (be)->ops->call;                                        \
        }                                                           \
    } while (0)

void kern_be_gdn_conv(kern_backend_t *be, const kern_gdn_t *g, float *x, int64_t ldx)
{
    KERN_BE_OPT_OP(be, gdn_conv, gdn_conv(be, g, x, ldx));
}

void kern_be_gdn_rule(kern_backend_t *be, const kern_gdn_t *g, const float *qkv, int64_t ldq,
                      const float *beta, int64_t ldb, const float *alpha, int64_t lda, int grp,
                      float *out)
{
    KERN_BE_OPT_OP(be, gdn_rule, gdn_rule(be, g, qkv, ldq, beta, ldb, alpha, lda, grp, out));
}

void kern_be_rms_norm_gated(kern_backend_t *be, float *y, int64_t ldy, const float *x, int64_t ldx,
                            const float *w, const float *z, int64_t ldz, int64_t rows, int64_t cols,
                            float eps)
{
    KERN_BE_OPT_OP(be, rms_norm_gated,
                   rms_norm_gated(be, y, ldy, x, ldx, w, z, ldz, rows, cols, eps));
}

void kern_be_mul_sigmoid(kern_backend_t *be, float *y, int64_t ldy, const float *g, int64_t ldg,
                         int64_t rows, int64_t cols, bool bcast)
{
    KERN_BE_OPT_OP(be, mul_sigmoid, mul_sigmoid(be, y, ldy, g, ldg, rows, cols, bcast));
}

bool kern_be_has_gdn(const kern_backend_t *be)
{
    return be->ops->gdn_conv != NULL && be->ops->gdn_rule != NULL &&
           be->ops->rms_norm_gated != NULL && be->ops->mul_sigmoid != NULL;
}

/* ---- the KV layout -----------------------------------------------------------------------------
 */

tdm_status_t kern_kv_type_resolve(const char *name, const kern_backend_t *be, tdm_type_t *out,
                                  tdm_error_t *err)
{
    if (name == NULL || strcmp(name, "auto") == 0) {
        *out = be->kind == KERN_DEVICE_CUDA ? TDM_TYPE_F16 : TDM_TYPE_F32;
        return TDM_OK;
    }
    const int t = tdm_type_from_name(name);
    if (t != TDM_TYPE_F32 && t != TDM_TYPE_F16 && t != TDM_TYPE_Q8_0) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "KV cache type '%s': expected f32, f16, q8_0 or auto", name);
    }
    *out = (tdm_type_t)t;
    return TDM_OK;
}

tdm_status_t kern_kv_layout_init(kern_kv_layout_t *l, tdm_error_t *err)
{
    if (l->type != TDM_TYPE_F32 && l->type != TDM_TYPE_F16 && l->type != TDM_TYPE_Q8_0) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED, "KV cache type %s (f32, f16 or q8_0)",
                             tdm_type_name(l->type));
    }
    if (l->n_kv_heads < 1 || l->head_dim < 1 || l->block_tokens < 1 || l->n_blocks < 1) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                             "KV cache: bad shape (%d kv heads, head dim %d, block %d tokens, "
                             "%d blocks)",
                             l->n_kv_heads, l->head_dim, l->block_tokens, l->n_blocks);
    }
    l->row_bytes = tdm_type_row_size(l->type, l->head_dim);
    if (l->row_bytes == 0) {
        return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                             "KV cache type %s needs a head dim that is a multiple of %u (the "
                             "model's is %d): use --kv-type f16",
                             tdm_type_name(l->type), tdm_type_traits(l->type)->blck, l->head_dim);
    }
    l->block_bytes = (size_t)l->n_kv_heads * (size_t)l->block_tokens * l->row_bytes;
    return TDM_OK;
}
