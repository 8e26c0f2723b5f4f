/*
 * test_backend_ops.c - every backend op against the CPU's scalar reference, in the manner
 * of ggml's test-backend-ops: each op x type x awkward shape runs on the oracle (the CPU
 * backend at TANDEM_CPU_ISA=scalar level) and on the backend under test, from the same
 * inputs, and the outputs are compared with the tolerance stated per op.
 *
 * The backend under test is TANDEM_OPTEST_DEVICE ("cuda" by default: exits 77, skipped,
 * without a GPU; "cpu": the SIMD CPU backend, which CI runs so the harness itself is
 * exercised everywhere). With TANDEM_CUDA_SPLITK=1 every product is one K segment on the
 * GPU and must equal the CPU reference bit for bit (TANDEM_OPTEST_EXACT=1 asks for that).
 *
 * Tolerances (|got - ref| <= tol * (max |ref| of the output + 1e-6), except products:
 * tol * sum_k |w_k x_k|, which bounds what summation order can move however the terms
 * cancel):
 *   embedding rows, logits rows, KV contents   exact (same conversions)
 *   matmul, quantized weights                  1e-5 (the same integer sums; float order)
 *   matmul, f32/f16/bf16 weights               2e-5 (f32 sums on the GPU, double on CPU)
 *   rms_norm, add, swiglu                      1e-6, 0, 2e-6 (expf)
 *   rope                                       2e-6
 *   attention                                  2e-5 (online softmax vs two-pass)
 *   moe routing                                same experts; weights 1e-6
 *   moe experts                                2e-5 (f32 weights), 1e-3 (quantized:
 *                                              SwiGLU's expf differs by an ulp, so an
 *                                              int8 input of the down projection may
 *                                              round the other way)
 */
#include "common/check.h"
#include "kernels/kern_backend.h"
#include "kernels/kern_ops.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static kern_backend_t *g_ref; /* CPU, scalar */
static kern_backend_t *g_dut; /* the backend under test */
static bool g_exact;
static bool g_quick; /* TANDEM_OPTEST_QUICK=1: fewer shapes (under compute-sanitizer) */
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 11);
}

static float frand(float lo, float hi)
{
    return lo + (hi - lo) * (float)(rnd() & 0xFFFFFF) / 16777216.0f;
}

static uint16_t f16_bits(float f)
{
    /* values used here are normal halves: round to nearest via the float's top bits */
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000u;
    int32_t e = (int32_t)((u >> 23) & 0xFF) - 127 + 15;
    uint32_t m = (u >> 13) & 0x3FF;
    if (e <= 0) {
        return (uint16_t)sign;
    }
    return (uint16_t)(sign | ((uint32_t)e << 10) | m);
}

/* ---- backend memory helpers ---- */

typedef struct buf {
    kern_backend_t *be;
    void *p;
    size_t n;
} buf_t;

static buf_t up(kern_backend_t *be, const void *host, size_t n)
{
    buf_t b = {be, NULL, n};
    assert_int_equal(kern_be_alloc(be, n > 0 ? n : 4, KERN_MEM_DEVICE, "test", &b.p, NULL), TDM_OK);
    if (host != NULL && n > 0) {
        assert_int_equal(kern_be_to_device(be, b.p, host, n, NULL), TDM_OK);
    }
    return b;
}

static void down(const buf_t *b, void *host)
{
    tdm_error_t err = {0};
    if (kern_be_to_host(b->be, host, b->p, b->n, &err) != TDM_OK) {
        fail_msg("%s: %s", kern_be_describe(b->be), err.msg);
    }
}

static void drop(buf_t *b)
{
    kern_be_free(b->be, b->p);
    b->p = NULL;
}

/* A weight view in the backend's memory: the CPU keeps the host bytes, a GPU copies. */
typedef struct wt {
    kern_weight_t w;
    size_t stride;
    int n_mats;
    void *region;
    kern_backend_t *be;
} wt_t;

static wt_t weight_on(kern_backend_t *be, tdm_type_t type, int64_t rows, int64_t cols, int n_mats,
                      const void *host)
{
    wt_t t = {{type, cols, rows, tdm_type_row_size(type, cols), host}, 0, n_mats, NULL, be};
    t.stride = (size_t)rows * t.w.row_bytes;
    kern_weight_ref_t ref = {.w = &t.w, .n_mats = n_mats, .stride = n_mats > 1 ? &t.stride : NULL};
    tdm_error_t err = {0};
    if (kern_be_weights_load(be, &ref, 1, NULL, NULL, &t.region, &err) != TDM_OK) {
        fail_msg("weights on %s: %s", kern_be_describe(be), err.msg);
    }
    return t;
}

static void weight_drop(wt_t *t)
{
    kern_be_free(t->be, t->region);
}

/* Random bytes of n_blocks blocks of type, with every scale field set to a sane value. */
static void *random_blocks(tdm_type_t type, int64_t n_elems)
{
    const tdm_type_traits_t *tr = tdm_type_traits(type);
    const size_t nb = (size_t)(n_elems / tr->blck), bytes = nb * tr->size;
    uint8_t *p = malloc(bytes + 16);
    for (size_t i = 0; i < bytes; i++) {
        p[i] = (uint8_t)rnd();
    }
    for (size_t b = 0; b < nb; b++) {
        uint8_t *blk = p + b * tr->size;
        uint16_t h;
#define SETF16(off, lo, hi) (h = f16_bits(frand(lo, hi)), memcpy(blk + (off), &h, 2))
        switch (type) {
        case TDM_TYPE_F32:
            ((float *)blk)[0] = frand(-1.0f, 1.0f);
            break;
        case TDM_TYPE_F16:
            SETF16(0, -1.0f, 1.0f);
            break;
        case TDM_TYPE_BF16: {
            const float f = frand(-1.0f, 1.0f);
            uint32_t u;
            memcpy(&u, &f, 4);
            h = (uint16_t)(u >> 16);
            memcpy(blk, &h, 2);
            break;
        }
        case TDM_TYPE_Q8_0: /* -128 is not a Q8_0 value (the SIMD dots rely on it) */
            for (int j = 2; j < 34; j++) {
                blk[j] = blk[j] == 0x80 ? 0x81 : blk[j];
            }
            SETF16(0, -0.05f, 0.05f);
            break;
        case TDM_TYPE_Q4_0:
        case TDM_TYPE_Q5_0:
        case TDM_TYPE_IQ4_NL:
            SETF16(0, -0.05f, 0.05f);
            break;
        case TDM_TYPE_Q4_1:
        case TDM_TYPE_Q5_1:
            SETF16(0, 0.001f, 0.05f);
            SETF16(2, -0.3f, 0.1f);
            break;
        case TDM_TYPE_MXFP4:
            blk[0] = (uint8_t)(118 + rnd() % 8);
            break;
        case TDM_TYPE_Q2_K:
            SETF16(80, 0.001f, 0.02f);
            SETF16(82, 0.001f, 0.02f);
            break;
        case TDM_TYPE_Q3_K:
            SETF16(108, -0.02f, 0.02f);
            break;
        case TDM_TYPE_Q4_K:
        case TDM_TYPE_Q5_K:
            SETF16(0, 0.0005f, 0.01f);
            SETF16(2, 0.0005f, 0.01f);
            break;
        case TDM_TYPE_Q6_K:
            SETF16(208, -0.002f, 0.002f);
            break;
        case TDM_TYPE_IQ4_XS:
            SETF16(0, -0.01f, 0.01f);
            break;
        default:
            break;
        }
#undef SETF16
    }
    return p;
}

/* Random f32 rows; a few rows all zero, and a row with repeated extremes (ties). */
static float *random_x(int64_t rows, int64_t cols, int64_t ld)
{
    float *x = malloc((size_t)(rows * ld + 1) * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < ld; c++) {
            x[r * ld + c] = frand(-1.0f, 1.0f);
        }
        if (r % 11 == 5) {
            memset(x + r * ld, 0, (size_t)cols * sizeof(float));
        } else if (r % 11 == 7 && cols >= 4) {
            x[r * ld + 1] = -1.25f;
            x[r * ld + 3] = 1.25f;
        }
    }
    return x;
}

static float max_abs(const float *a, int64_t n)
{
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        m = fmaxf(m, fabsf(a[i]));
    }
    return m;
}

/* Compares n floats; tol relative to the largest |ref|; tol 0: bit-exact. */
static void compare(const char *what, const float *ref, const float *got, int64_t n, double tol)
{
    const double scale = max_abs(ref, n) + 1e-6;
    double worst = 0.0;
    int64_t at = -1;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(ref[i]) != isnan(got[i])) {
            fail_msg("%s: element %lld is %g, reference %g", what, (long long)i, got[i], ref[i]);
        }
        const double d = fabs((double)got[i] - (double)ref[i]);
        if (d > worst) {
            worst = d;
            at = i;
        }
    }
    if ((tol == 0.0 && worst > 0.0) || worst > tol * scale) {
        fail_msg("%s: element %lld is %.9g, reference %.9g (error %.3g of scale %.3g, tolerance "
                 "%.1g)",
                 what, (long long)at, got[at], ref[at], worst / scale, scale, tol);
    }
}

/* Compares element-wise against a bound per element: |got - ref| <= tol * bound[i] (for
 * sums, bound = the sum of the magnitudes of the terms: summation order moves a result by
 * rounding of its terms, however much they cancel). */
static void compare_bound(const char *what, const float *ref, const float *got, const double *bound,
                          int64_t n, double tol)
{
    for (int64_t i = 0; i < n; i++) {
        const double d = fabs((double)got[i] - (double)ref[i]);
        if (isnan(got[i]) || (tol == 0.0 ? d > 0.0 : d > tol * bound[i] + 1e-30)) {
            fail_msg("%s: element %lld is %.9g, reference %.9g (error %.3g, %.3g of the terms' "
                     "magnitude %.3g; tolerance %.1g)",
                     what, (long long)i, got[i], ref[i], d, d / bound[i], bound[i], tol);
        }
    }
}

/* A step over n tokens of one or more sequences; positions and tables filled by the caller. */
typedef struct step {
    kern_step_t st;
    int32_t *tok, *pos, *seq, *out;
    kern_seq_t *seqs;
} step_t;

static step_t step_simple(int32_t n, int32_t n_vocab)
{
    step_t s;
    s.tok = calloc((size_t)n, 4);
    s.pos = calloc((size_t)n, 4);
    s.seq = calloc((size_t)n, 4);
    s.out = calloc((size_t)n, 4);
    s.seqs = calloc(1, sizeof(kern_seq_t));
    for (int32_t t = 0; t < n; t++) {
        s.tok[t] = (int32_t)(rnd() % (uint32_t)n_vocab);
        s.pos[t] = t;
        s.out[t] = t;
    }
    s.st = (kern_step_t){n, s.tok, s.pos, s.seq, 1, s.seqs, n, s.out};
    return s;
}

static void step_free(step_t *s)
{
    free(s->tok);
    free(s->pos);
    free(s->seq);
    free(s->out);
    free(s->seqs);
}

static void reserve(kern_backend_t *be, int64_t n_tok, int64_t cols, int64_t rows, int n_head,
                    int hd, int64_t n_ctx, int n_expert, int k, int64_t E, int64_t F)
{
    const kern_reserve_t r = {.n_tok = n_tok,
                              .n_out = n_tok,
                              .n_ctx = n_ctx,
                              .max_cols = cols,
                              .max_rows = rows,
                              .n_head = n_head,
                              .head_dim = hd,
                              .n_expert = n_expert,
                              .n_expert_used = k,
                              .n_embd = E,
                              .n_ff_exp = F};
    tdm_error_t err = {0};
    if (kern_be_reserve(be, &r, &err) != TDM_OK) {
        fail_msg("reserve on %s: %s", kern_be_describe(be), err.msg);
    }
}

static void end_step(kern_backend_t *be)
{
    bool rerun = false;
    tdm_error_t err = {0};
    if (kern_be_step_end(be, &rerun, &err) != TDM_OK) {
        fail_msg("%s: %s", kern_be_describe(be), err.msg);
    }
    assert_false(rerun); /* the op test never asks for graphs */
}

static const tdm_type_t k_types[] = {
    TDM_TYPE_F32,  TDM_TYPE_F16,    TDM_TYPE_BF16,   TDM_TYPE_Q4_0,  TDM_TYPE_Q4_1, TDM_TYPE_Q5_0,
    TDM_TYPE_Q5_1, TDM_TYPE_Q8_0,   TDM_TYPE_Q2_K,   TDM_TYPE_Q3_K,  TDM_TYPE_Q4_K, TDM_TYPE_Q5_K,
    TDM_TYPE_Q6_K, TDM_TYPE_IQ4_NL, TDM_TYPE_IQ4_XS, TDM_TYPE_MXFP4,
};

/* ---- embedding rows ---- */

static void test_get_rows(void **state)
{
    (void)state;
    for (size_t ti = 0; ti < TDM_ARRAY_SIZE(k_types); ti++) {
        const tdm_type_t type = k_types[ti];
        const int64_t blk = tdm_type_traits(type)->blck;
        const int64_t cols = blk == 1 ? 100 : 3 * blk, vocab = 37;
        void *host = random_blocks(type, vocab * cols);
        step_t s = step_simple(9, (int32_t)vocab);
        float *out[2];
        kern_backend_t *bes[2] = {g_ref, g_dut};
        for (int b = 0; b < 2; b++) {
            reserve(bes[b], 9, cols, vocab, 1, 8, 16, 0, 0, cols, 0);
            wt_t w = weight_on(bes[b], type, vocab, cols, 1, host);
            buf_t x = up(bes[b], NULL, (size_t)9 * (size_t)(cols + 3) * 4);
            kern_be_step_begin(bes[b], &s.st, false);
            kern_be_get_rows(bes[b], x.p, cols + 3, &w.w);
            end_step(bes[b]);
            out[b] = calloc((size_t)9 * (size_t)(cols + 3), 4);
            down(&x, out[b]);
            drop(&x);
            weight_drop(&w);
        }
        for (int t = 0; t < 9; t++) {
            char what[64];
            snprintf(what, sizeof(what), "get_rows %s token %d", tdm_type_name(type), t);
            compare(what, out[0] + t * (cols + 3), out[1] + t * (cols + 3), cols, 0.0);
        }
        free(out[0]);
        free(out[1]);
        free(host);
        step_free(&s);
    }
}

/* ---- matrix products ---- */

static void run_matmul(tdm_type_t type, int64_t rows, int64_t cols, int64_t n_tok)
{
    void *host = random_blocks(type, rows * cols);
    const int64_t ldx = cols + 5, ldy = rows + 3;
    float *x = random_x(n_tok, cols, ldx);
    float *out[2];
    kern_backend_t *bes[2] = {g_ref, g_dut};
    step_t s = step_simple((int32_t)n_tok, 1);
    for (int b = 0; b < 2; b++) {
        reserve(bes[b], n_tok, cols, rows, 1, 8, 16, 0, 0, cols, 0);
        wt_t w = weight_on(bes[b], type, rows, cols, 1, host);
        buf_t dx = up(bes[b], x, (size_t)(n_tok * ldx) * 4);
        buf_t dy = up(bes[b], NULL, (size_t)(n_tok * ldy) * 4);
        const kern_matmul_op_t op = {&w.w, dx.p, ldx, dy.p, ldy};
        kern_be_step_begin(bes[b], &s.st, false);
        kern_be_matmul(bes[b], 1, &op, n_tok);
        end_step(bes[b]);
        out[b] = calloc((size_t)(n_tok * ldy), 4);
        down(&dy, out[b]);
        drop(&dx);
        drop(&dy);
        weight_drop(&w);
    }
    const bool quant = tdm_type_traits(type)->quantized;
    /* bound: sum_k |W[r, k] x[t, k]| from the dequantized weights */
    float *wf = malloc((size_t)(rows * cols) * sizeof(float));
    assert_int_equal(kern_dequantize(type, host, wf, rows * cols, NULL), TDM_OK);
    double *bound = malloc((size_t)rows * sizeof(double));
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t r = 0; r < rows; r++) {
            double m = 0.0;
            for (int64_t c = 0; c < cols; c++) {
                m += fabs((double)wf[r * cols + c] * (double)x[t * ldx + c]);
            }
            bound[r] = m;
        }
        char what[96];
        snprintf(what, sizeof(what), "matmul %s %lldx%lld, token %lld of %lld", tdm_type_name(type),
                 (long long)rows, (long long)cols, (long long)t, (long long)n_tok);
        compare_bound(what, out[0] + t * ldy, out[1] + t * ldy, bound, rows,
                      g_exact && quant ? 0.0 : (quant ? 1e-5 : 2e-5));
    }
    free(bound);
    free(wf);
    free(out[0]);
    free(out[1]);
    free(x);
    free(host);
    step_free(&s);
}

static void test_matmul(void **state)
{
    (void)state;
    const int64_t shapes[][2] = {{1, 1}, {7, 4}, {63, 11}, {257, 2}, {64, 16}};
    const int64_t toks[] = {1, 7, 16, 33, 257};
    for (size_t ti = 0; ti < TDM_ARRAY_SIZE(k_types); ti++) {
        const int64_t blk = tdm_type_traits(k_types[ti])->blck;
        const int64_t unit = blk == 1 ? 8 : blk;
        for (size_t si = 0; si < TDM_ARRAY_SIZE(shapes); si++) {
            for (size_t ni = 0; ni < TDM_ARRAY_SIZE(toks); ni++) {
                if (shapes[si][0] * shapes[si][1] * unit * toks[ni] > 4000000) {
                    continue; /* keep the scalar oracle fast */
                }
                if (g_quick && (si % 2 == 0 || ni % 2 == 0)) {
                    continue;
                }
                run_matmul(k_types[ti], shapes[si][0], shapes[si][1] * unit + (blk == 1 ? 3 : 0),
                           toks[ni]);
            }
        }
    }
}

/* A batch of products sharing one input (Q/K/V), and a token's row does not depend on the
 * other rows of the step. */
static void test_matmul_batch_invariance(void **state)
{
    (void)state;
    const tdm_type_t types[] = {TDM_TYPE_Q4_K, TDM_TYPE_Q8_0, TDM_TYPE_Q6_K, TDM_TYPE_F16};
    for (size_t ti = 0; ti < TDM_ARRAY_SIZE(types); ti++) {
        const int64_t rows = 96, cols = 512, n = 40;
        void *host = random_blocks(types[ti], rows * cols);
        float *x = random_x(n, cols, cols);
        reserve(g_dut, n, cols, rows, 1, 8, 16, 0, 0, cols, 0);
        wt_t w = weight_on(g_dut, types[ti], rows, cols, 1, host);
        buf_t dx = up(g_dut, x, (size_t)(n * cols) * 4);
        buf_t dy = up(g_dut, NULL, (size_t)(n * rows) * 4);
        float *all = calloc((size_t)(n * rows), 4), *one = calloc((size_t)(n * rows), 4);
        step_t s = step_simple((int32_t)n, 1);
        kern_be_step_begin(g_dut, &s.st, false);
        const kern_matmul_op_t op = {&w.w, dx.p, cols, dy.p, rows};
        kern_be_matmul(g_dut, 1, &op, n);
        end_step(g_dut);
        down(&dy, all);
        for (int64_t t = 0; t < n; t++) { /* each token alone, as row 0 of a one-token step */
            step_t s1 = step_simple(1, 1);
            kern_be_step_begin(g_dut, &s1.st, false);
            const kern_matmul_op_t op1 = {&w.w, (float *)dx.p + t * cols, cols,
                                          (float *)dy.p + t * rows, rows};
            kern_be_matmul(g_dut, 1, &op1, 1);
            end_step(g_dut);
            step_free(&s1);
        }
        down(&dy, one);
        compare("matmul: batch of 40 vs one token at a time", all, one, n * rows, 0.0);
        free(all);
        free(one);
        step_free(&s);
        drop(&dx);
        drop(&dy);
        weight_drop(&w);
        free(x);
        free(host);
    }
}

/* ---- row ops ---- */

static void test_rms_norm_add_swiglu(void **state)
{
    (void)state;
    const int64_t shapes[][2] = {{1, 1}, {7, 576}, {257, 1000}, {3, 4096}};
    for (size_t si = 0; si < TDM_ARRAY_SIZE(shapes); si++) {
        const int64_t rows = shapes[si][0], cols = shapes[si][1], ld = cols + 2;
        float *x = random_x(rows, cols, ld), *w = random_x(1, cols, cols);
        float *o[2][4];
        kern_backend_t *bes[2] = {g_ref, g_dut};
        step_t s = step_simple((int32_t)rows, 1);
        for (int b = 0; b < 2; b++) {
            reserve(bes[b], rows, cols, cols, 1, 8, 16, 0, 0, cols, 0);
            buf_t dx = up(bes[b], x, (size_t)(rows * ld) * 4), dw = up(bes[b], w, (size_t)cols * 4);
            buf_t y = up(bes[b], NULL, (size_t)(rows * ld) * 4);
            buf_t y2 = up(bes[b], x, (size_t)(rows * ld) * 4);
            buf_t z = up(bes[b], NULL, (size_t)(rows * ld) * 4),
                  u = up(bes[b], NULL, (size_t)(rows * ld) * 4);
            kern_be_step_begin(bes[b], &s.st, false);
            kern_be_rms_norm(bes[b], y.p, ld, dx.p, ld, dw.p, rows, cols, 1e-6f);
            kern_be_rms_norm(bes[b], y2.p, ld, y2.p, ld, NULL, rows, cols, 1e-5f); /* in place */
            kern_be_add(bes[b], z.p, dx.p, y.p, rows * ld);
            kern_be_swiglu(bes[b], u.p, dx.p, y2.p, rows * ld);
            end_step(bes[b]);
            buf_t *bufs[4] = {&y, &y2, &z, &u};
            for (int i = 0; i < 4; i++) {
                o[b][i] = calloc((size_t)(rows * ld), 4);
                down(bufs[i], o[b][i]);
                drop(bufs[i]);
            }
            drop(&dx);
            drop(&dw);
        }
        for (int64_t r = 0; r < rows; r++) {
            compare("rms_norm (weight)", o[0][0] + r * ld, o[1][0] + r * ld, cols, 1e-6);
            compare("rms_norm (in place, no weight)", o[0][1] + r * ld, o[1][1] + r * ld, cols,
                    1e-6);
        }
        compare("add", o[0][2], o[1][2], rows * ld, 1e-6);
        compare("swiglu", o[0][3], o[1][3], rows * ld, 2e-6);
        for (int b = 0; b < 2; b++) {
            for (int i = 0; i < 4; i++) {
                free(o[b][i]);
            }
        }
        free(x);
        free(w);
        step_free(&s);
    }
}

static void test_rope(void **state)
{
    (void)state;
    mdl_rope_params_t ps[4] = {
        {MDL_ROPE_NORM, 64, 10000.0f, 1.0f, MDL_ROPE_SCALING_NONE, 0.0f, 1.0f, 32.0f, 1.0f, 0},
        {MDL_ROPE_NEOX, 128, 1000000.0f, 1.0f, MDL_ROPE_SCALING_NONE, 0.0f, 1.0f, 32.0f, 1.0f, 0},
        {MDL_ROPE_NEOX, 32, 10000.0f, 0.25f, MDL_ROPE_SCALING_LINEAR, 0.0f, 1.0f, 32.0f, 1.0f, 0},
        {MDL_ROPE_NORM, 128, 500000.0f, 0.125f, MDL_ROPE_SCALING_YARN, 1.0f, 1.0f, 32.0f, 1.0f,
         8192},
    };
    const int hds[4] = {64, 128, 80, 128};
    const int toks[] = {1, 7, 257};
    for (int pi = 0; pi < 4; pi++) {
        for (size_t ni = 0; ni < TDM_ARRAY_SIZE(toks); ni++) {
            const int n = toks[ni], heads = 3, hd = hds[pi];
            const int64_t ld = (int64_t)heads * hd + 4;
            float *x = random_x(n, ld, ld);
            float *ff = NULL;
            if (pi == 0) { /* llama3-style per-pair factors */
                ff = malloc((size_t)(ps[pi].n_rot / 2) * 4);
                for (int i = 0; i < ps[pi].n_rot / 2; i++) {
                    ff[i] = 1.0f + (float)(i % 5);
                }
            }
            step_t s = step_simple(n, 1);
            for (int t = 0; t < n; t++) {
                s.pos[t] = (int32_t)(rnd() % 20000);
            }
            float *o[2];
            kern_backend_t *bes[2] = {g_ref, g_dut};
            for (int b = 0; b < 2; b++) {
                reserve(bes[b], n, ld, ld, heads, hd, 20000, 0, 0, ld, 0);
                buf_t dx = up(bes[b], x, (size_t)(n * ld) * 4);
                buf_t df = up(bes[b], ff, ff != NULL ? (size_t)(ps[pi].n_rot / 2) * 4 : 4);
                kern_be_step_begin(bes[b], &s.st, false);
                kern_be_rope(bes[b], dx.p, ld, heads, hd, &ps[pi], ff != NULL ? df.p : NULL);
                end_step(bes[b]);
                o[b] = calloc((size_t)(n * ld), 4);
                down(&dx, o[b]);
                drop(&dx);
                drop(&df);
            }
            compare("rope", o[0], o[1], n * ld, 2e-6);
            free(o[0]);
            free(o[1]);
            free(x);
            free(ff);
            step_free(&s);
        }
    }
}

/* ---- KV cache and attention ---- */

typedef struct att_case {
    tdm_type_t type;
    int hd, n_kv, group, B;
    int n_seqs;
    int32_t len[4];  /* positions already cached + this step's, per sequence */
    int32_t step[4]; /* tokens of this step, the sequence's last positions   */
} att_case_t;

static void run_attention(const att_case_t *ac)
{
    const int hd = ac->hd, n_kv = ac->n_kv, n_head = n_kv * ac->group, B = ac->B;
    /* every sequence gets its own shuffled blocks */
    int32_t total_blocks = 0, n_tok = 0, max_len = 0;
    for (int s = 0; s < ac->n_seqs; s++) {
        total_blocks += (ac->len[s] + B - 1) / B;
        max_len = ac->len[s] > max_len ? ac->len[s] : max_len;
    }
    int32_t *perm = malloc((size_t)(total_blocks + 3) * 4);
    for (int i = 0; i < total_blocks + 3; i++) {
        perm[i] = i;
    }
    for (int i = total_blocks + 2; i > 0; i--) {
        const int j = (int)(rnd() % (uint32_t)(i + 1));
        const int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    kern_seq_t seqs[4];
    int32_t used = 0;
    for (int s = 0; s < ac->n_seqs; s++) {
        seqs[s].blocks = perm + used;
        seqs[s].n_blocks = (ac->len[s] + B - 1) / B;
        used += seqs[s].n_blocks;
    }
    /* two steps: first every cached position (prefill), then this step's tokens */
    int32_t n_pre = 0;
    for (int s = 0; s < ac->n_seqs; s++) {
        n_pre += ac->len[s] - ac->step[s];
        n_tok += ac->step[s];
    }
    const int32_t n_all = n_pre > n_tok ? n_pre : n_tok;
    int32_t *tok = calloc((size_t)n_all + 1, 4), *pos1 = calloc((size_t)n_all + 1, 4),
            *seq1 = calloc((size_t)n_all + 1, 4), *pos2 = calloc((size_t)n_all + 1, 4),
            *seq2 = calloc((size_t)n_all + 1, 4), *outi = calloc((size_t)n_all + 1, 4);
    int32_t a = 0, b2 = 0;
    for (int s = 0; s < ac->n_seqs; s++) {
        for (int32_t p = 0; p < ac->len[s]; p++) {
            if (p < ac->len[s] - ac->step[s]) {
                pos1[a] = p;
                seq1[a++] = s;
            } else {
                pos2[b2] = p;
                seq2[b2++] = s;
            }
        }
    }
    const int64_t kd = (int64_t)n_kv * hd, qd = (int64_t)n_head * hd;
    float *k1 = random_x(n_all, kd, kd), *v1 = random_x(n_all, kd, kd);
    float *k2 = random_x(n_all, kd, kd), *v2 = random_x(n_all, kd, kd);
    float *q = random_x(n_tok, qd, qd);
    kern_kv_layout_t lay = {ac->type, n_kv, hd, B, total_blocks + 3, 0, 0};
    assert_int_equal(kern_kv_layout_init(&lay, NULL), TDM_OK);
    const size_t layer = lay.block_bytes * (size_t)lay.n_blocks;
    const kern_attn_params_t ap = {n_head, 0, 0, ac->group, 1.0f / sqrtf((float)hd)};
    float *o[2];
    unsigned char *kc[2];
    kern_backend_t *bes[2] = {g_ref, g_dut};
    for (int b = 0; b < 2; b++) {
        reserve(bes[b], n_all, qd, qd, n_head, hd, max_len, 0, 0, qd, 0);
        buf_t kl = up(bes[b], NULL, layer), vl = up(bes[b], NULL, layer);
        buf_t dk1 = up(bes[b], k1, (size_t)(n_all * kd) * 4),
              dv1 = up(bes[b], v1, (size_t)(n_all * kd) * 4);
        buf_t dk2 = up(bes[b], k2, (size_t)(n_all * kd) * 4),
              dv2 = up(bes[b], v2, (size_t)(n_all * kd) * 4);
        buf_t dq = up(bes[b], q, (size_t)(n_tok * qd) * 4),
              dout = up(bes[b], NULL, (size_t)(n_tok * qd) * 4);
        if (n_pre > 0) {
            const kern_step_t s1 = {n_pre, tok, pos1, seq1, ac->n_seqs, seqs, 0, outi};
            kern_be_step_begin(bes[b], &s1, false);
            kern_be_kv_store(bes[b], &lay, kl.p, vl.p, dk1.p, dv1.p, kd);
            end_step(bes[b]);
        }
        const kern_step_t s2 = {n_tok, tok, pos2, seq2, ac->n_seqs, seqs, 0, outi};
        kern_be_step_begin(bes[b], &s2, false);
        kern_be_kv_store(bes[b], &lay, kl.p, vl.p, dk2.p, dv2.p, kd);
        kern_be_attention(bes[b], dout.p, dq.p, &lay, kl.p, vl.p, &ap);
        end_step(bes[b]);
        o[b] = calloc((size_t)(n_tok * qd), 4);
        down(&dout, o[b]);
        kc[b] = calloc(layer, 1);
        down(&kl, kc[b]);
        buf_t *bufs[] = {&kl, &vl, &dk1, &dv1, &dk2, &dv2, &dq, &dout};
        for (size_t i = 0; i < TDM_ARRAY_SIZE(bufs); i++) {
            drop(bufs[i]);
        }
    }
    /* the caches hold the same bytes in the blocks the sequences use */
    for (int s = 0; s < ac->n_seqs; s++) {
        for (int j = 0; j < seqs[s].n_blocks; j++) {
            const size_t off = (size_t)seqs[s].blocks[j] * lay.block_bytes;
            for (int h = 0; h < n_kv; h++) {
                const int32_t slots = ac->len[s] - j * B < B ? ac->len[s] - j * B : B;
                const size_t o2 = off + (size_t)h * (size_t)B * lay.row_bytes;
                if (memcmp(kc[0] + o2, kc[1] + o2, (size_t)slots * lay.row_bytes) != 0) {
                    fail_msg("kv_store %s: block %d head %d differs", tdm_type_name(ac->type), j,
                             h);
                }
            }
        }
    }
    char what[128];
    snprintf(what, sizeof(what), "attention %s hd %d gqa %d B %d, %d seqs (len %d)",
             tdm_type_name(ac->type), hd, ac->group, B, ac->n_seqs, ac->len[0]);
    compare(what, o[0], o[1], n_tok * qd, 2e-5);
    for (int b = 0; b < 2; b++) {
        free(o[b]);
        free(kc[b]);
    }
    free(k1);
    free(v1);
    free(k2);
    free(v2);
    free(q);
    free(tok);
    free(pos1);
    free(seq1);
    free(pos2);
    free(seq2);
    free(outi);
    free(perm);
}

static void test_attention(void **state)
{
    (void)state;
    const tdm_type_t kv_types[] = {TDM_TYPE_F32, TDM_TYPE_F16, TDM_TYPE_Q8_0};
    for (size_t ti = 0; ti < TDM_ARRAY_SIZE(kv_types); ti++) {
        const att_case_t cases[] = {
            /* decode of one token at position 0 and at a block edge */
            {kv_types[ti], 64, 2, 1, 16, 2, {1, 17, 0, 0}, {1, 1, 0, 0}},
            /* a prefill chunk of 7 after 9 cached, GQA 4, odd block size */
            {kv_types[ti], 128, 2, 4, 7, 1, {16, 0, 0, 0}, {7, 0, 0, 0}},
            /* contexts past one attention segment (512) and several, GQA 8, mixed step */
            {kv_types[ti], 64, 1, 8, 16, 3, {600, 1500, 33, 0}, {1, 2, 33, 0}},
            /* head dim 256 */
            {kv_types[ti], 256, 1, 2, 16, 1, {40, 0, 0, 0}, {3, 0, 0, 0}},
        };
        for (size_t ci = 0; ci < TDM_ARRAY_SIZE(cases); ci++) {
            if (!g_quick || ci != 2) {
                run_attention(&cases[ci]);
            }
        }
        if (kv_types[ti] != TDM_TYPE_Q8_0) { /* a head dim that is no multiple of 32 */
            const att_case_t c80 = {kv_types[ti], 80, 2, 2, 16, 2, {50, 9, 0, 0}, {50, 1, 0, 0}};
            run_attention(&c80);
        }
    }
}

/* ---- mixture of experts ---- */

static void run_moe(tdm_type_t type, int n_expert, int k, bool norm, int exp_lo, int n_exp,
                    int64_t n_tok)
{
    const int64_t E = 2 * (tdm_type_traits(type)->blck > 32 ? 256 : 64);
    const int64_t F = tdm_type_traits(type)->blck > 32 ? 256 : 96;
    void *gate = random_blocks(type, (int64_t)n_expert * F * E);
    void *upw = random_blocks(type, (int64_t)n_expert * F * E);
    void *dn = random_blocks(type, (int64_t)n_expert * E * F);
    float *x = random_x(n_tok, E, E);
    float *lg = random_x(n_tok, n_expert, n_expert);
    if (n_tok > 1) { /* a tie between two experts */
        lg[n_expert + 1] = lg[n_expert + 2] = 2.5f;
    }
    step_t s = step_simple((int32_t)n_tok, 1);
    float *o[2], *pr[2], *wt[2];
    int32_t *sl[2];
    kern_backend_t *bes[2] = {g_ref, g_dut};
    const size_t rs = tdm_type_row_size(type, E), rsd = tdm_type_row_size(type, F);
    for (int b = 0; b < 2; b++) {
        reserve(bes[b], n_tok, E > F ? E : F, E > F ? E : F, 1, 8, 16, n_expert, k, E, F);
        wt_t wg, wu, wd;
        memset(&wg, 0, sizeof(wg));
        memset(&wu, 0, sizeof(wu));
        memset(&wd, 0, sizeof(wd));
        wg.be = wu.be = wd.be = bes[b];
        if (n_exp > 0) { /* a rank holding no expert binds no views */
            wg = weight_on(bes[b], type, F, E, n_exp,
                           (const uint8_t *)gate + (size_t)exp_lo * F * rs);
            wu = weight_on(bes[b], type, F, E, n_exp,
                           (const uint8_t *)upw + (size_t)exp_lo * F * rs);
            wd = weight_on(bes[b], type, E, F, n_exp,
                           (const uint8_t *)dn + (size_t)exp_lo * E * rsd);
        }
        buf_t dx = up(bes[b], x, (size_t)(n_tok * E) * 4),
              dl = up(bes[b], lg, (size_t)(n_tok * n_expert) * 4);
        buf_t dsel = up(bes[b], NULL, (size_t)(n_tok * k) * 4),
              dw = up(bes[b], NULL, (size_t)(n_tok * k) * 4);
        buf_t dout = up(bes[b], NULL, (size_t)(n_tok * E) * 4);
        const kern_moe_t moe = {wg.w,      wu.w,   wd.w,  wg.stride, wu.stride,
                                wd.stride, exp_lo, n_exp, k,         E};
        kern_be_step_begin(bes[b], &s.st, false);
        kern_be_moe_route(bes[b], dl.p, n_expert, k, norm, dsel.p, dw.p);
        kern_be_moe_experts(bes[b], &moe, dx.p, E, dsel.p, dw.p, dout.p, E, n_tok);
        end_step(bes[b]);
        o[b] = calloc((size_t)(n_tok * E), 4);
        pr[b] = calloc((size_t)(n_tok * n_expert), 4);
        wt[b] = calloc((size_t)(n_tok * k), 4);
        sl[b] = calloc((size_t)(n_tok * k), 4);
        down(&dout, o[b]);
        down(&dl, pr[b]);
        down(&dw, wt[b]);
        down(&dsel, sl[b]);
        buf_t *bufs[] = {&dx, &dl, &dsel, &dw, &dout};
        for (size_t i = 0; i < TDM_ARRAY_SIZE(bufs); i++) {
            drop(bufs[i]);
        }
        weight_drop(&wg);
        weight_drop(&wu);
        weight_drop(&wd);
    }
    assert_memory_equal(sl[0], sl[1], (size_t)(n_tok * k) * 4);
    compare("moe router probabilities", pr[0], pr[1], n_tok * n_expert, 1e-6);
    compare("moe weights", wt[0], wt[1], n_tok * k, 1e-6);
    char what[96];
    snprintf(what, sizeof(what), "moe %s %d experts [%d, %d) top-%d, %lld tokens",
             tdm_type_name(type), n_expert, exp_lo, exp_lo + n_exp, k, (long long)n_tok);
    /* quantized experts: SwiGLU's expf differs by an ulp between libm and CUDA, so the down
     * projection's int8 input can round the other way at a boundary (one step of its scale) */
    compare(what, o[0], o[1], n_tok * E, tdm_type_traits(type)->quantized ? 1e-3 : 2e-5);
    for (int b = 0; b < 2; b++) {
        free(o[b]);
        free(pr[b]);
        free(wt[b]);
        free(sl[b]);
    }
    free(gate);
    free(upw);
    free(dn);
    free(x);
    free(lg);
    step_free(&s);
}

static void test_moe(void **state)
{
    (void)state;
    const tdm_type_t types[] = {TDM_TYPE_Q4_K, TDM_TYPE_Q8_0, TDM_TYPE_MXFP4, TDM_TYPE_F32};
    const int64_t toks[] = {1, 7, 33};
    for (size_t ti = 0; ti < TDM_ARRAY_SIZE(types); ti++) {
        for (size_t ni = 0; ni < TDM_ARRAY_SIZE(toks); ni++) {
            if (g_quick && ni != 1) {
                continue;
            }
            run_moe(types[ti], 16, 4, true, 0, 16, toks[ni]); /* every expert here */
            run_moe(types[ti], 16, 2, false, 5, 6, toks[ni]); /* an EP slice       */
        }
    }
    run_moe(TDM_TYPE_Q4_K, 128, 8, true, 64, 64, 9); /* Qwen3-30B-A3B's routing */
    run_moe(TDM_TYPE_Q8_0, 8, 2, true, 3, 0, 4);     /* a rank with no expert */
}

/* ---- logits rows ---- */

static void test_out_rows(void **state)
{
    (void)state;
    const int64_t n = 12, cols = 333;
    float *x = random_x(n, cols, cols);
    step_t s = step_simple((int32_t)n, 1);
    s.st.n_out = 4;
    s.out[0] = 0;
    s.out[1] = 3;
    s.out[2] = 4;
    s.out[3] = 11;
    float *o[2];
    kern_backend_t *bes[2] = {g_ref, g_dut};
    for (int b = 0; b < 2; b++) {
        reserve(bes[b], n, cols, cols, 1, 8, 16, 0, 0, cols, 0);
        buf_t dx = up(bes[b], x, (size_t)(n * cols) * 4),
              dy = up(bes[b], NULL, (size_t)(4 * cols) * 4);
        kern_be_step_begin(bes[b], &s.st, false);
        kern_be_get_out_rows(bes[b], dy.p, cols, dx.p, cols, cols);
        end_step(bes[b]);
        o[b] = calloc((size_t)(4 * cols), 4);
        down(&dy, o[b]);
        drop(&dx);
        drop(&dy);
    }
    compare("get_out_rows", o[0], o[1], 4 * cols, 0.0);
    compare("get_out_rows picks row 11", x + 11 * cols, o[1] + 3 * cols, cols, 0.0);
    free(o[0]);
    free(o[1]);
    free(x);
    step_free(&s);
}

int main(void)
{
    const char *dev = getenv("TANDEM_OPTEST_DEVICE");
    if (dev == NULL) {
        dev = "cuda";
    }
    g_quick =
        getenv("TANDEM_OPTEST_QUICK") != NULL && strcmp(getenv("TANDEM_OPTEST_QUICK"), "1") == 0;
    g_exact =
        getenv("TANDEM_OPTEST_EXACT") != NULL && strcmp(getenv("TANDEM_OPTEST_EXACT"), "1") == 0;
    const kern_backend_params_t rp = {
        .device = "cpu", .n_threads = 2, .isa_override = KERN_ISA_SCALAR};
    const kern_backend_params_t dp = {
        .device = dev, .n_threads = 2, .isa_override = KERN_ISA_COUNT};
    tdm_error_t err = {0};
    if (strncmp(dev, "cuda", 4) == 0 && kern_gpu_count() == 0) {
        printf("skipped: no CUDA device visible on this machine (TANDEM_OPTEST_DEVICE=%s)\n", dev);
        return 77;
    }
    if (kern_backend_create(&rp, &g_ref, &err) != TDM_OK ||
        kern_backend_create(&dp, &g_dut, &err) != TDM_OK) {
        fprintf(stderr, "test_backend_ops: %s\n", err.msg);
        return 1;
    }
    printf("oracle: %s\nunder test: %s%s\n", kern_be_describe(g_ref), kern_be_describe(g_dut),
           g_exact ? " (bit-exact products)" : "");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_rows),
        cmocka_unit_test(test_out_rows),
        cmocka_unit_test(test_rms_norm_add_swiglu),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_batch_invariance),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_moe),
    };
    const int rc = cmocka_run_group_tests(tests, NULL, NULL);
    kern_backend_destroy(g_dut);
    kern_backend_destroy(g_ref);
    return rc;
}
