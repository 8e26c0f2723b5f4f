/*
 * cmd_quantize.c - `tandem quantize IN OUT --type T [--threads N]`: rewrites a GGUF model
 * with its weight matrices in type T.
 *
 * Which tensors change (llama.cpp's usual choices, kept simple):
 *   - a tensor named *.weight with 2 or more dimensions whose ne[0] is a multiple of T's
 *     block size becomes T (token_embd and output included), except the MoE router
 *     (*ffn_gate_inp.weight), which llama.cpp also keeps in its source precision;
 *   - a 1-D tensor (norms, biases) becomes F32;
 *   - anything else keeps its type and bytes.
 * Integer and F64 tensors are never changed.
 * All metadata is copied (split.* keys dropped: the output is one file) with
 * general.file_type set for T and general.quantization_version = 2 for quantized T.
 * Conversion is source -> f32 (kern_dequantize) -> T (kern_quantize), rows spread over
 * --threads workers; the output is written through a temporary file renamed into place.
 */
#include "api/cli/cli.h"
#include "kernels/kern.h"
#include "model/gguf.h"
#include "model/gguf_write.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* llama_ftype for a file whose weights are all of one type (pure, "_S" flavours for K). */
static int ftype_of(tdm_type_t t)
{
    switch (t) {
    case TDM_TYPE_F32:
        return 0;
    case TDM_TYPE_F16:
        return 1;
    case TDM_TYPE_Q4_0:
        return 2;
    case TDM_TYPE_Q4_1:
        return 3;
    case TDM_TYPE_Q8_0:
        return 7;
    case TDM_TYPE_Q5_0:
        return 8;
    case TDM_TYPE_Q5_1:
        return 9;
    case TDM_TYPE_Q2_K:
        return 10;
    case TDM_TYPE_Q3_K:
        return 11;
    case TDM_TYPE_Q4_K:
        return 14;
    case TDM_TYPE_Q5_K:
        return 16;
    case TDM_TYPE_Q6_K:
        return 18;
    case TDM_TYPE_IQ4_NL:
        return 25;
    case TDM_TYPE_IQ4_XS:
        return 30;
    case TDM_TYPE_BF16:
        return 32;
    case TDM_TYPE_TQ1_0:
        return 36;
    case TDM_TYPE_TQ2_0:
        return 37;
    case TDM_TYPE_MXFP4:
        return 38;
    default:
        return 1024; /* "guessed" */
    }
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

/* The output type of tensor t for target type `target`. */
static tdm_type_t choose_type(const gguf_tensor_t *t, tdm_type_t target)
{
    bool is_int = t->type == TDM_TYPE_I8 || t->type == TDM_TYPE_I16 || t->type == TDM_TYPE_I32 ||
                  t->type == TDM_TYPE_I64 || t->type == TDM_TYPE_F64;
    if (is_int) {
        return t->type; /* index / integer tensors are not weights */
    }
    if (t->n_dims <= 1) {
        return TDM_TYPE_F32;
    }
    uint32_t blck = tdm_type_traits(target)->blck;
    if (ends_with(t->name, ".weight") && strstr(t->name, "ffn_gate_inp") == NULL &&
        t->ne[0] % blck == 0) {
        return target;
    }
    return t->type;
}

typedef struct conv {
    const gguf_tensor_t *src;
    tdm_type_t dst_type;
    kern_ctx_t *kctx;
} conv_t;

typedef struct conv_job {
    const conv_t *c;
    uint8_t *dst;
    size_t src_row, dst_row;
    int64_t ne0;
    int failed; /* set (atomically) by the first failing chunk */
    tdm_error_t err;
} conv_job_t;

static void conv_task(void *arg, int64_t begin, int64_t end, int thread_idx)
{
    (void)thread_idx;
    conv_job_t *j = arg;
    if (__atomic_load_n(&j->failed, __ATOMIC_RELAXED)) {
        return;
    }
    float *row = malloc((size_t)j->ne0 * sizeof(float));
    tdm_error_t err;
    tdm_error_clear(&err);
    tdm_status_t st =
        row == NULL ? tdm_error_set(&err, TDM_ERR_NO_MEMORY, "out of memory") : TDM_OK;
    const uint8_t *src = j->c->src->data;
    for (int64_t r = begin; r < end && st == TDM_OK; r++) {
        st = kern_dequantize(j->c->src->type, src + (size_t)r * j->src_row, row, j->ne0, &err);
        if (st != TDM_OK) {
            break;
        }
        if (j->c->dst_type == TDM_TYPE_F32) {
            memcpy(j->dst + (size_t)r * j->dst_row, row, (size_t)j->ne0 * sizeof(float));
        } else {
            st = kern_quantize(j->c->dst_type, row, j->dst + (size_t)r * j->dst_row, 1, j->ne0,
                               &err);
        }
    }
    free(row);
    if (st != TDM_OK) {
        int expected = 0;
        if (__atomic_compare_exchange_n(&j->failed, &expected, 1, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            j->err = err;
            j->err.status = st;
        }
    }
}

static tdm_status_t conv_fill(void *user, const char *name, void *dst, size_t nbytes,
                              tdm_error_t *err)
{
    const conv_t *c = user;
    const gguf_tensor_t *t = c->src;
    int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    conv_job_t j = {
        .c = c,
        .dst = dst,
        .src_row = tdm_type_row_size(t->type, t->ne[0]),
        .dst_row = tdm_type_row_size(c->dst_type, t->ne[0]),
        .ne0 = t->ne[0],
    };
    tdm_error_clear(&j.err);
    if (rows == 0 || t->ne[0] == 0) {
        return TDM_OK;
    }
    if ((size_t)rows * j.dst_row != nbytes) {
        return tdm_error_set(err, TDM_ERR_INTERNAL, "tensor '%s': size mismatch", name);
    }
    kern_parallel_for(c->kctx, rows, 8, conv_task, &j);
    if (j.failed) {
        return tdm_error_set(err, j.err.status, "tensor '%s' (%s -> %s): %s", name,
                             tdm_type_name(t->type), tdm_type_name(c->dst_type),
                             tdm_error_msg(&j.err));
    }
    return TDM_OK;
}

static void usage(FILE *out)
{
    fputs("usage: tandem quantize IN.gguf OUT.gguf --type T [--threads N]\n"
          "  Rewrites the weight matrices (*.weight, 2-D or more, ne[0] a multiple of T's\n"
          "  block size) in type T; 1-D tensors become F32; metadata is copied.\n"
          "  --type T      F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, ...\n"
          "                (any type with a quantizer in this build)\n"
          "  --threads N   worker threads (default: one per CPU)\n",
          out);
}

int cmd_quantize(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *type_name = NULL;
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--type") == 0 && i + 1 < argc) {
            type_name = argv[++i];
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end != '\0' || v < 1 || v > 1024) {
                fprintf(stderr, "tandem quantize: --threads wants 1 to 1024, got '%s'\n", argv[i]);
                return 2;
            }
            threads = (int)v;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "tandem quantize: unknown or incomplete option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (in == NULL) {
            in = argv[i];
        } else if (out == NULL) {
            out = argv[i];
        } else {
            fprintf(stderr, "tandem quantize: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (in == NULL || out == NULL || type_name == NULL) {
        usage(stderr);
        return 2;
    }
    int tid = tdm_type_from_name(type_name);
    if (tid < 0) {
        fprintf(stderr, "tandem quantize: unknown type '%s'\n", type_name);
        return 2;
    }
    tdm_type_t target = (tdm_type_t)tid;

    tdm_error_t err;
    tdm_error_clear(&err);
    /* refuse early a target without a quantizer in this build */
    if (target != TDM_TYPE_F32) {
        uint32_t blck = tdm_type_traits(target)->blck;
        float *zeros = calloc(blck, sizeof(float));
        uint8_t *block = calloc(1, tdm_type_traits(target)->size);
        tdm_status_t st = zeros == NULL || block == NULL
                              ? TDM_ERR_NO_MEMORY
                              : kern_quantize(target, zeros, block, 1, blck, &err);
        free(zeros);
        free(block);
        if (st != TDM_OK) {
            fprintf(stderr, "tandem quantize: cannot quantize to %s: %s\n", tdm_type_name(target),
                    tdm_error_msg(&err));
            return 2;
        }
    }

    int rc = 1;
    gguf_ctx_t *g = NULL;
    gguf_writer_t *w = NULL;
    kern_ctx_t *kctx = NULL;
    conv_t *convs = NULL;
    if (gguf_open(in, &g, &err) != TDM_OK || gguf_writer_create(&w, &err) != TDM_OK ||
        kern_ctx_create(threads, KERN_ISA_COUNT, &kctx, &err) != TDM_OK) {
        goto done;
    }
    for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
        const gguf_kv_t *kv = gguf_kv_at(g, i);
        if (strncmp(kv->key, "split.", 6) == 0) {
            continue;
        }
        if (gguf_writer_add_value(w, kv->key, &kv->value, &err) != TDM_OK) {
            goto done;
        }
    }
    if (gguf_writer_add_u32(w, "general.file_type", (uint32_t)ftype_of(target), &err) != TDM_OK) {
        goto done;
    }
    if (tdm_type_traits(target)->quantized &&
        gguf_writer_add_u32(w, "general.quantization_version", 2, &err) != TDM_OK) {
        goto done;
    }

    uint64_t n = gguf_n_tensors(g), n_changed = 0, in_bytes = 0, out_bytes = 0;
    convs = calloc(n > 0 ? n : 1, sizeof(*convs));
    if (convs == NULL) {
        tdm_error_set(&err, TDM_ERR_NO_MEMORY, "out of memory");
        goto done;
    }
    for (uint64_t i = 0; i < n; i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        tdm_type_t dt = choose_type(t, target);
        tdm_status_t st;
        in_bytes += t->nbytes;
        if (dt == t->type) {
            st = gguf_writer_add_tensor(w, t->name, t->type, t->n_dims > 0 ? t->n_dims : 1, t->ne,
                                        t->data, &err);
            out_bytes += t->nbytes;
        } else {
            if (t->type != TDM_TYPE_F32 && !kern_type_supported(t->type)) {
                tdm_error_set(&err, TDM_ERR_UNSUPPORTED,
                              "%s: tensor '%s': cannot convert from %s (no dequantizer in this "
                              "build)",
                              in, t->name, tdm_type_name(t->type));
                goto done;
            }
            convs[i] = (conv_t){.src = t, .dst_type = dt, .kctx = kctx};
            st = gguf_writer_add_tensor_fn(w, t->name, dt, t->n_dims > 0 ? t->n_dims : 1, t->ne,
                                           conv_fill, &convs[i], &err);
            out_bytes +=
                tdm_type_row_size(dt, t->ne[0]) * (uint64_t)(t->ne[1] * t->ne[2] * t->ne[3]);
            n_changed++;
        }
        if (st != TDM_OK) {
            goto done;
        }
    }
    if (gguf_writer_write(w, out, &err) != TDM_OK) {
        goto done;
    }
    printf("%s -> %s: %" PRIu64 " tensors, %" PRIu64 " converted (weights to %s, 1-D to F32), "
           "tensor bytes %" PRIu64 " -> %" PRIu64 "\n",
           in, out, n, n_changed, tdm_type_name(target), in_bytes, out_bytes);
    rc = 0;
done:
    if (rc != 0) {
        fprintf(stderr, "tandem quantize: %s\n", tdm_error_msg(&err));
    }
    free(convs);
    kern_ctx_destroy(kctx);
    gguf_writer_destroy(w);
    gguf_close(g);
    return rc;
}
