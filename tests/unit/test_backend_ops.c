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
 *   add_bias                                   exact (one float add)
 *   sum_sq                                     1e-6 of each row's sum (double sums in
 *                                              another order, rounded to float)
 *   rms_apply                                  1e-6 (the same double arithmetic; 1e-6
 *                                              leaves room for a last-bit difference)
 *   rope                                       2e-6
 *   attention (windows, sinks, temperature)    2e-5 (online softmax vs two-pass; the
 *                                              temperature's log in double may differ by
 *                                              an ulp, a float ulp of the scale at most)
 *   moe routing (every gating, selection       same experts; probabilities and weights
 *   bias, renormalisation, scale)              1e-6 (expf by an ulp)
 *   moe experts (biases, SwiGLU or gpt-oss's   2e-5 (f32 weights), 1e-3 (quantized:
 *   clamped one)                               the activation's expf differs by an ulp,
 *                                              so an int8 input of the down projection
 *                                              may round the other way)
 *   CUDA graphs                                a replay with any other argument refused
 *                                              (counted), results as above
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

/* A linear layer's bias, and RMSNorm in two halves (MiniMax-M2's q/k norm over heads split
 * across ranks): sum_sq strided into a column of ss, rms_apply from given sums with
 * n_total wider than this rank's columns, with and without a weight, in place, and the
 * two chained over a whole row (which is rms_norm). */
static void test_bias_sum_sq_rms_apply(void **state)
{
    (void)state;
    const int64_t shapes[][2] = {{1, 1}, {7, 576}, {33, 1000}, {3, 4096}, {300, 129}};
    for (size_t si = 0; si < TDM_ARRAY_SIZE(shapes); si++) {
        if (g_quick && si == 4) {
            continue;
        }
        const int64_t rows = shapes[si][0], cols = shapes[si][1], ld = cols + 2, lds = 3;
        float *x = random_x(rows, cols, ld), *w = random_x(1, cols, cols);
        float *bias = random_x(1, cols, cols);
        /* given sums of squares: this rank's columns are a third of the vector */
        float *ss = malloc((size_t)(rows * lds) * sizeof(float));
        for (int64_t r = 0; r < rows * lds; r++) {
            ss[r] = frand(0.0f, 3.0f * (float)cols);
        }
        ss[0] = 0.0f; /* a row of zeros on every rank: only eps remains */
        float *o[2][6];
        kern_backend_t *bes[2] = {g_ref, g_dut};
        step_t s = step_simple((int32_t)rows, 1);
        for (int b = 0; b < 2; b++) {
            reserve(bes[b], rows, cols, cols, 1, 8, 16, 0, 0, cols, 0);
            buf_t dx = up(bes[b], x, (size_t)(rows * ld) * 4), dw = up(bes[b], w, (size_t)cols * 4);
            buf_t db = up(bes[b], bias, (size_t)cols * 4);
            buf_t dss = up(bes[b], ss, (size_t)(rows * lds) * 4);
            buf_t yb = up(bes[b], x, (size_t)(rows * ld) * 4);
            buf_t sq = up(bes[b], NULL, (size_t)(rows * lds) * 4);
            buf_t ya = up(bes[b], NULL, (size_t)(rows * ld) * 4);
            buf_t yi = up(bes[b], x, (size_t)(rows * ld) * 4);
            buf_t s2 = up(bes[b], NULL, (size_t)rows * 4),
                  yc = up(bes[b], NULL, (size_t)(rows * ld) * 4);
            kern_be_step_begin(bes[b], &s.st, false);
            kern_be_add_bias(bes[b], yb.p, ld, db.p, rows, cols);
            kern_be_sum_sq(bes[b], (float *)sq.p + 1, lds, dx.p, ld, rows, cols);
            kern_be_rms_apply(bes[b], ya.p, ld, dx.p, ld, dss.p, lds, dw.p, rows, cols, 3 * cols,
                              1e-6f);
            kern_be_rms_apply(bes[b], yi.p, ld, yi.p, ld, (float *)dss.p + 2, lds, NULL, rows, cols,
                              3 * cols, 1e-5f); /* in place, no weight */
            kern_be_sum_sq(bes[b], s2.p, 1, dx.p, ld, rows, cols);
            kern_be_rms_apply(bes[b], yc.p, ld, dx.p, ld, s2.p, 1, dw.p, rows, cols, cols, 1e-6f);
            end_step(bes[b]);
            buf_t *bufs[6] = {&yb, &sq, &ya, &yi, &s2, &yc};
            for (int i = 0; i < 6; i++) {
                o[b][i] = calloc(bufs[i]->n, 1);
                down(bufs[i], o[b][i]);
                drop(bufs[i]);
            }
            drop(&dx);
            drop(&dw);
            drop(&db);
            drop(&dss);
        }
        compare("add_bias", o[0][0], o[1][0], rows * ld, 0.0);
        for (int64_t r = 0; r < rows; r++) {
            /* one sum per row: compared on its own (relative to itself) */
            compare("sum_sq (strided)", o[0][1] + r * lds + 1, o[1][1] + r * lds + 1, 1, 1e-6);
            compare("sum_sq", o[0][4] + r, o[1][4] + r, 1, 1e-6);
            compare("rms_apply (weight)", o[0][2] + r * ld, o[1][2] + r * ld, cols, 1e-6);
            compare("rms_apply (in place, no weight)", o[0][3] + r * ld, o[1][3] + r * ld, cols,
                    1e-6);
            compare("sum_sq + rms_apply", o[0][5] + r * ld, o[1][5] + r * ld, cols, 1e-6);
        }
        for (int b = 0; b < 2; b++) {
            for (int i = 0; i < 6; i++) {
                free(o[b][i]);
            }
        }
        free(x);
        free(w);
        free(bias);
        free(ss);
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
    int32_t window;  /* kern_attn_params_t's; 0: none                         */
    bool sinks;      /* a sink per head (head 0's dominates every score)      */
    float temp_scale;
    int32_t temp_floor;
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
    kern_kv_layout_t lay = {ac->type, n_kv, hd, B, total_blocks + 3, 0, 0, false};
    assert_int_equal(kern_kv_layout_init(&lay, NULL), TDM_OK);
    const size_t layer = lay.block_bytes * (size_t)lay.n_blocks;
    float *sinks = malloc((size_t)n_head * sizeof(float));
    for (int h = 0; h < n_head; h++) {
        sinks[h] = h == 0 ? 6.0f : frand(-2.0f, 2.0f);
    }
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
        buf_t dsk = up(bes[b], sinks, (size_t)n_head * 4);
        const kern_attn_params_t ap = {.n_head = n_head,
                                       .head_lo = 0,
                                       .kv_lo = 0,
                                       .group = ac->group,
                                       .scale = 1.0f / sqrtf((float)hd),
                                       .window = ac->window,
                                       .sinks = ac->sinks ? dsk.p : NULL,
                                       .temp_scale = ac->temp_scale,
                                       .temp_floor = ac->temp_floor};
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
        if (b == 1) {
            /* batch invariance: sequence 0's last query alone in a step (on a GPU the
             * split-segment kernels; in the batch perhaps the serial ones) gives the same
             * bits as in the batch: segment boundaries depend on the key span only */
            const int32_t i = ac->step[0] - 1;
            const kern_step_t s3 = {1, tok, pos2 + i, seq2 + i, ac->n_seqs, seqs, 0, outi};
            buf_t d1 = up(bes[b], NULL, (size_t)qd * 4);
            float *o1 = calloc((size_t)qd, 4);
            kern_be_step_begin(bes[b], &s3, false);
            kern_be_kv_store(bes[b], &lay, kl.p, vl.p, (float *)dk2.p + i * kd,
                             (float *)dv2.p + i * kd, kd);
            kern_be_attention(bes[b], d1.p, (float *)dq.p + i * qd, &lay, kl.p, vl.p, &ap);
            end_step(bes[b]);
            down(&d1, o1);
            compare("attention: a query alone vs in its step", o[b] + i * qd, o1, qd, 0.0);
            drop(&d1);
            free(o1);
        }
        buf_t *bufs[] = {&kl, &vl, &dk1, &dv1, &dk2, &dv2, &dq, &dout, &dsk};
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
    char what[160];
    snprintf(what, sizeof(what),
             "attention %s hd %d gqa %d B %d, %d seqs (len %d), window %d, sinks %d, temp %g/%d",
             tdm_type_name(ac->type), hd, ac->group, B, ac->n_seqs, ac->len[0], ac->window,
             ac->sinks, (double)ac->temp_scale, ac->temp_floor);
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
    free(sinks);
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
            {kv_types[ti], 64, 2, 1, 16, 2, {1, 17, 0, 0}, {1, 1, 0, 0}, 0, false, 0.0f, 0},
            /* a prefill chunk of 7 after 9 cached, GQA 4, odd block size */
            {kv_types[ti], 128, 2, 4, 7, 1, {16, 0, 0, 0}, {7, 0, 0, 0}, 0, false, 0.0f, 0},
            /* contexts past one attention segment (512) and several, GQA 8, mixed step */
            {kv_types[ti], 64, 1, 8, 16, 3, {600, 1500, 33, 0}, {1, 2, 33, 0}, 0, false, 0.0f, 0},
            /* head dim 256 */
            {kv_types[ti], 256, 1, 2, 16, 1, {40, 0, 0, 0}, {3, 0, 0, 0}, 0, false, 0.0f, 0},
        };
        for (size_t ci = 0; ci < TDM_ARRAY_SIZE(cases); ci++) {
            if (!g_quick || ci != 2) {
                run_attention(&cases[ci]);
            }
        }
        if (kv_types[ti] != TDM_TYPE_Q8_0) { /* a head dim that is no multiple of 32 */
            const att_case_t c80 = {kv_types[ti],  80, 2,     2,    16, 2, {50, 9, 0, 0},
                                    {50, 1, 0, 0}, 0,  false, 0.0f, 0};
            run_attention(&c80);
        }
    }
}

/* Sliding windows, sinks and the attention temperature (gpt-oss, Mistral 3 / Llama 4). */
static void test_attention_window_sinks_temp(void **state)
{
    (void)state;
    const tdm_type_t kv_types[] = {TDM_TYPE_F32, TDM_TYPE_F16, TDM_TYPE_Q8_0};
    for (size_t ti = 0; ti < TDM_ARRAY_SIZE(kv_types); ti++) {
        const tdm_type_t kt = kv_types[ti];
        const att_case_t cases[] = {
            /* a window of 5 starting mid-block: a prefill of 40 (the first queries see
             * fewer than 5 keys) and a decode after 99 cached */
            {kt, 64, 2, 4, 16, 2, {40, 100, 0, 0}, {40, 1, 0, 0}, 5, false, 0.0f, 0},
            /* an odd block size and a window of one key */
            {kt, 64, 1, 2, 7, 1, {30, 0, 0, 0}, {9, 0, 0, 0}, 1, false, 0.0f, 0},
            /* a window larger than every context: the same as none */
            {kt, 64, 2, 2, 16, 2, {70, 33, 0, 0}, {2, 33, 0, 0}, 4096, false, 0.0f, 0},
            /* sinks alone (head 0's dominates), a chunk crossing blocks */
            {kt, 64, 2, 4, 16, 2, {45, 17, 0, 0}, {20, 1, 0, 0}, 0, true, 0.0f, 0},
            /* the temperature over short positions (floor 4: a new factor every 4) */
            {kt, 128, 2, 2, 16, 2, {41, 12, 0, 0}, {41, 1, 0, 0}, 0, false, 0.1f, 4},
            /* gpt-oss: window 128 and sinks, GQA 8, a chunk of 33 after 267 and a decode */
            {kt, 64, 1, 8, 16, 2, {300, 129, 0, 0}, {33, 1, 0, 0}, 128, true, 0.0f, 0},
            /* long: the window's span crosses a segment boundary (lo = 800: keys 800..1299
             * and 1300..1499 from lo, not the positions' 512-multiples), a window of
             * exactly one segment and one key more, with sinks and the temperature */
            {kt, 64, 1, 8, 16, 3, {1500, 600, 513, 0}, {2, 1, 1, 0}, 700, true, 0.0f, 0},
            {kt, 64, 2, 2, 16, 2, {1100, 600, 0, 0}, {1, 1, 0, 0}, 512, true, 0.1f, 64},
            {kt, 64, 2, 2, 16, 2, {1100, 600, 0, 0}, {1, 1, 0, 0}, 513, false, 0.1f, 64},
            /* no window, sinks and the temperature past several segments */
            {kt, 64, 1, 4, 16, 2, {1500, 40, 0, 0}, {1, 40, 0, 0}, 0, true, 0.25f, 256},
        };
        for (size_t ci = 0; ci < TDM_ARRAY_SIZE(cases); ci++) {
            if (!g_quick || cases[ci].len[0] < 600) {
                run_attention(&cases[ci]);
            }
        }
    }
    /* Chunks of more than 1056 (query, head) pairs, which a GPU of up to 132 SMs runs with a
     * warp per query walking its segments (the long cases above: a warp per segment and a
     * merge); their last query is also run alone (run_attention), so the two kernels must
     * agree bit for bit. The f32 cache only: the paths do not depend on the row type. */
    const att_case_t chunks[] = {
        {TDM_TYPE_F32, 64, 1, 8, 16, 2, {1100, 20, 0, 0}, {140, 1, 0, 0}, 700, true, 0.0f, 0},
        {TDM_TYPE_F32, 64, 1, 8, 16, 1, {1100, 0, 0, 0}, {133, 0, 0, 0}, 0, true, 0.1f, 256},
    };
    for (size_t ci = 0; ci < TDM_ARRAY_SIZE(chunks) && !g_quick; ci++) {
        run_attention(&chunks[ci]);
    }
}

/*
 * A sliding-window layer whose cache is the sliding pool (kern_kv_layout_t.swa): K/V are
 * stored through, and attention reads through, the sequences' swa_blocks (ids of their
 * own, -1 below the window of the step's first query, a released block), never their
 * `blocks`. Oracle: the same two steps with a plain layout whose table is the sliding one
 * (whole) on the reference backend: the same outputs bit for bit, the same bytes in the
 * sliding blocks, and nothing written where the full table points.
 */
static void run_attention_swa(tdm_type_t type, int hd, int n_kv, int group, int B, int32_t window,
                              int32_t len, int32_t step, bool sinks)
{
    const int n_head = n_kv * group;
    const int32_t nb = (len + B - 1) / B, n_pool = 2 * nb + 2;
    /* full-pool ids in [0, nb), sliding ids in [nb, 2 nb): disjoint, in one buffer */
    int32_t *full = malloc((size_t)nb * 4), *swa_all = malloc((size_t)nb * 4);
    int32_t *swa_step = malloc((size_t)nb * 4);
    for (int32_t j = 0; j < nb; j++) {
        full[j] = j;
        swa_all[j] = nb + j;
    }
    for (int32_t i = nb - 1; i > 0; i--) { /* shuffled */
        const int32_t k = (int32_t)(rnd() % (uint32_t)(i + 1)), t = swa_all[i];
        swa_all[i] = swa_all[k];
        swa_all[k] = t;
    }
    const int32_t first = len - step, lo = (first >= window ? first - window + 1 : 0) / B;
    for (int32_t j = 0; j < nb; j++) {
        swa_step[j] = j < lo ? -1 : swa_all[j];
    }
    int32_t *tok = calloc((size_t)len, 4), *pos = calloc((size_t)len, 4);
    int32_t *sq = calloc((size_t)len, 4), *outi = calloc((size_t)len, 4);
    for (int32_t p = 0; p < len; p++) {
        pos[p] = p;
    }
    const int64_t kd = (int64_t)n_kv * hd, qd = (int64_t)n_head * hd;
    float *k = random_x(len, kd, kd), *v = random_x(len, kd, kd), *q = random_x(step, qd, qd);
    float *sk = malloc((size_t)n_head * sizeof(float));
    for (int h = 0; h < n_head; h++) {
        sk[h] = frand(-2.0f, 2.0f);
    }
    kern_kv_layout_t lay = {type, n_kv, hd, B, n_pool, 0, 0, false};
    assert_int_equal(kern_kv_layout_init(&lay, NULL), TDM_OK);
    kern_kv_layout_t lay_swa = lay;
    lay_swa.swa = true;
    const size_t layer = lay.block_bytes * (size_t)n_pool;
    /* runs: 0 ref with the sliding layout, 1 dut with it, 2 ref plain over swa_all */
    float *o[3];
    unsigned char *kc[3];
    for (int run = 0; run < 3; run++) {
        kern_backend_t *be = run == 1 ? g_dut : g_ref;
        const bool plain = run == 2;
        reserve(be, len, qd, qd, n_head, hd, len, 0, 0, qd, 0);
        buf_t kl = up(be, NULL, layer), vl = up(be, NULL, layer);
        buf_t dk = up(be, k, (size_t)(len * kd) * 4), dv = up(be, v, (size_t)(len * kd) * 4);
        buf_t dq = up(be, q, (size_t)(step * qd) * 4), dout = up(be, NULL, (size_t)(step * qd) * 4);
        buf_t dsk = up(be, sk, (size_t)n_head * 4);
        const kern_attn_params_t ap = {.n_head = n_head,
                                       .group = group,
                                       .scale = 1.0f / sqrtf((float)hd),
                                       .window = window,
                                       .sinks = sinks ? dsk.p : NULL};
        const kern_kv_layout_t *l = plain ? &lay : &lay_swa;
        const kern_seq_t s1 = {plain ? swa_all : full, nb, plain ? NULL : swa_all, -1, -1, -1};
        const kern_seq_t s2 = {plain ? swa_all : full, nb, plain ? NULL : swa_step, -1, -1, -1};
        if (first > 0) { /* the cached positions, through the whole sliding table */
            const kern_step_t st1 = {first, tok, pos, sq, 1, &s1, 0, outi};
            kern_be_step_begin(be, &st1, false);
            kern_be_kv_store(be, l, kl.p, vl.p, dk.p, dv.p, kd);
            end_step(be);
        }
        const kern_step_t st2 = {step, tok, pos + first, sq, 1, &s2, 0, outi};
        kern_be_step_begin(be, &st2, false);
        kern_be_kv_store(be, l, kl.p, vl.p, (float *)dk.p + first * kd, (float *)dv.p + first * kd,
                         kd);
        kern_be_attention(be, dout.p, dq.p, l, kl.p, vl.p, &ap);
        end_step(be);
        o[run] = calloc((size_t)(step * qd), 4);
        down(&dout, o[run]);
        kc[run] = calloc(layer, 1);
        down(&kl, kc[run]);
        buf_t *bufs[] = {&kl, &vl, &dk, &dv, &dq, &dout, &dsk};
        for (size_t i = 0; i < TDM_ARRAY_SIZE(bufs); i++) {
            drop(bufs[i]);
        }
    }
    char what[160];
    snprintf(what, sizeof(what), "sliding-pool attention %s hd %d B %d window %d len %d step %d",
             tdm_type_name(type), hd, B, window, len, step);
    compare(what, o[2], o[0], step * qd, 0.0);
    compare(what, o[0], o[1], step * qd, 2e-5);
    /* every byte where it belongs: the sliding blocks as the plain run has them, nothing
     * in the full table's blocks */
    for (int run = 0; run < 2; run++) {
        if (memcmp(kc[run], kc[2], layer) != 0) {
            fail_msg("%s: run %d's cache differs from the plain run's", what, run);
        }
    }
    for (int32_t j = 0; j < nb; j++) {
        for (size_t b = 0; b < lay.block_bytes; b++) {
            if (kc[0][(size_t)full[j] * lay.block_bytes + b] != 0) {
                fail_msg("%s: a store went through the full table", what);
            }
        }
    }
    for (int run = 0; run < 3; run++) {
        free(o[run]);
        free(kc[run]);
    }
    free(full);
    free(swa_all);
    free(swa_step);
    free(tok);
    free(pos);
    free(sq);
    free(outi);
    free(k);
    free(v);
    free(q);
    free(sk);
}

static void test_attention_sliding_pool(void **state)
{
    (void)state;
    const tdm_type_t kv_types[] = {TDM_TYPE_F32, TDM_TYPE_F16, TDM_TYPE_Q8_0};
    for (size_t ti = 0; ti < TDM_ARRAY_SIZE(kv_types); ti++) {
        /* a decode after 99 cached (window 5 from mid-block), a chunk crossing blocks with
         * its first query's window starting in a released block's successor, gpt-oss's
         * window 128 with sinks over blocks of 16 */
        run_attention_swa(kv_types[ti], 64, 2, 4, 4, 5, 100, 1, false);
        run_attention_swa(kv_types[ti], 64, 1, 2, 3, 8, 41, 9, true);
        run_attention_swa(kv_types[ti], 64, 1, 8, 16, 128, 300, 33, true);
    }
}

/* ---- mixture of experts ---- */

/* One routing + experts case. */
typedef struct moe_case {
    tdm_type_t type;
    int n_expert, k;
    kern_gating_t gating;
    bool sel_bias, norm;
    float scale;
    int exp_lo, n_exp;
    int64_t n_tok;
    bool biases; /* gate, up and down biases (strides wider than the rows)   */
    kern_act_t act;
    float alpha, limit;
} moe_case_t;

/* The case with softmax gating, no bias, plain SwiGLU. */
static moe_case_t moe_plain(tdm_type_t type, int n_expert, int k, bool norm, int exp_lo, int n_exp,
                            int64_t n_tok)
{
    const moe_case_t mc = {.type = type,
                           .n_expert = n_expert,
                           .k = k,
                           .gating = KERN_GATING_SOFTMAX,
                           .norm = norm,
                           .exp_lo = exp_lo,
                           .n_exp = n_exp,
                           .n_tok = n_tok,
                           .act = KERN_ACT_SWIGLU};
    return mc;
}

static void run_moe(const moe_case_t *mc)
{
    const tdm_type_t type = mc->type;
    const int n_expert = mc->n_expert, k = mc->k, exp_lo = mc->exp_lo, n_exp = mc->n_exp;
    const int64_t n_tok = mc->n_tok;
    const int64_t E = 2 * (tdm_type_traits(type)->blck > 32 ? 256 : 64);
    const int64_t F = tdm_type_traits(type)->blck > 32 ? 256 : 96;
    /* only this rank's experts get weights (a wide router stays cheap) */
    void *gate = random_blocks(type, (int64_t)n_exp * F * E);
    void *upw = random_blocks(type, (int64_t)n_exp * F * E);
    void *dn = random_blocks(type, (int64_t)n_exp * E * F);
    const int64_t gbs = F + 5, ubs = F + 1, dbs = E + 3;
    const int nb = n_exp > 0 ? n_exp : 1;
    float *gb = random_x(nb, F, gbs), *ub = random_x(nb, F, ubs), *dbv = random_x(nb, E, dbs);
    float *x = random_x(n_tok, E, E);
    float *lg = random_x(n_tok, n_expert, n_expert);
    float *sb = random_x(1, n_expert, n_expert);
    for (int i = 0; i < n_expert; i++) {
        sb[i] *= 0.3f; /* of the order of DeepSeek-V3's e_score_correction_bias */
    }
    if (n_tok > 1) { /* a tie between two experts (their selection biases equal too) */
        lg[n_expert + 1] = lg[n_expert + 2] = 2.5f;
        sb[2] = sb[1];
    }
    step_t s = step_simple((int32_t)n_tok, 1);
    float *o[2], *pr[2], *wt[2];
    int32_t *sl[2];
    kern_backend_t *bes[2] = {g_ref, g_dut};
    for (int b = 0; b < 2; b++) {
        reserve(bes[b], n_tok, E > F ? E : F, E > F ? E : F, 1, 8, 16, n_expert, k, E, F);
        wt_t wg, wu, wd;
        memset(&wg, 0, sizeof(wg));
        memset(&wu, 0, sizeof(wu));
        memset(&wd, 0, sizeof(wd));
        wg.be = wu.be = wd.be = bes[b];
        if (n_exp > 0) { /* a rank holding no expert binds no views */
            wg = weight_on(bes[b], type, F, E, n_exp, gate);
            wu = weight_on(bes[b], type, F, E, n_exp, upw);
            wd = weight_on(bes[b], type, E, F, n_exp, dn);
        }
        buf_t dx = up(bes[b], x, (size_t)(n_tok * E) * 4),
              dl = up(bes[b], lg, (size_t)(n_tok * n_expert) * 4);
        buf_t dsel = up(bes[b], NULL, (size_t)(n_tok * k) * 4),
              dw = up(bes[b], NULL, (size_t)(n_tok * k) * 4);
        buf_t dout = up(bes[b], NULL, (size_t)(n_tok * E) * 4);
        buf_t dsb = up(bes[b], sb, (size_t)n_expert * 4);
        /* the biases of the first local expert on: what the shard binds */
        buf_t dgb = up(bes[b], gb, (size_t)(n_exp * gbs) * 4),
              dub = up(bes[b], ub, (size_t)(n_exp * ubs) * 4),
              ddb = up(bes[b], dbv, (size_t)(n_exp * dbs) * 4);
        const bool bias = mc->biases && n_exp > 0;
        const kern_moe_t moe = {.gate = wg.w,
                                .up = wu.w,
                                .down = wd.w,
                                .gate_stride = wg.stride,
                                .up_stride = wu.stride,
                                .down_stride = wd.stride,
                                .gate_b = bias ? dgb.p : NULL,
                                .up_b = bias ? dub.p : NULL,
                                .down_b = bias ? ddb.p : NULL,
                                .gate_b_stride = gbs,
                                .up_b_stride = ubs,
                                .down_b_stride = dbs,
                                .act = mc->act,
                                .act_alpha = mc->alpha,
                                .act_limit = mc->limit,
                                .exp_lo = exp_lo,
                                .n_exp = n_exp,
                                .n_used = k,
                                .n_embd = E};
        const kern_route_t route = {n_expert, k,        mc->gating, mc->sel_bias ? dsb.p : NULL,
                                    mc->norm, mc->scale};
        kern_be_step_begin(bes[b], &s.st, false);
        kern_be_moe_route(bes[b], dl.p, &route, dsel.p, dw.p);
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
        buf_t *bufs[] = {&dx, &dl, &dsel, &dw, &dout, &dsb, &dgb, &dub, &ddb};
        for (size_t i = 0; i < TDM_ARRAY_SIZE(bufs); i++) {
            drop(bufs[i]);
        }
        weight_drop(&wg);
        weight_drop(&wu);
        weight_drop(&wd);
    }
    char what[160];
    snprintf(what, sizeof(what),
             "moe %s %d experts [%d, %d) top-%d, %lld tokens, gating %d%s%s scale %g, %s%s",
             tdm_type_name(type), n_expert, exp_lo, exp_lo + n_exp, k, (long long)n_tok,
             (int)mc->gating, mc->sel_bias ? " sel_bias" : "", mc->norm ? " norm" : "",
             (double)mc->scale, mc->act == KERN_ACT_SWIGLU_OAI ? "swiglu_oai" : "swiglu",
             mc->biases ? " biases" : "");
    if (memcmp(sl[0], sl[1], (size_t)(n_tok * k) * 4) != 0) {
        fail_msg("%s: the chosen experts differ", what);
    }
    compare("moe router probabilities", pr[0], pr[1], n_tok * n_expert, 1e-6);
    compare("moe weights", wt[0], wt[1], n_tok * k, 1e-6);
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
    free(gb);
    free(ub);
    free(dbv);
    free(x);
    free(lg);
    free(sb);
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
            moe_case_t mc = moe_plain(types[ti], 16, 4, true, 0, 16, toks[ni]);
            run_moe(&mc); /* every expert here */
            mc = moe_plain(types[ti], 16, 2, false, 5, 6, toks[ni]);
            run_moe(&mc); /* an EP slice       */
        }
    }
    moe_case_t mc = moe_plain(TDM_TYPE_Q4_K, 128, 8, true, 64, 64, 9);
    run_moe(&mc); /* Qwen3-30B-A3B's routing */
    mc = moe_plain(TDM_TYPE_Q8_0, 8, 2, true, 3, 0, 4);
    run_moe(&mc); /* a rank with no expert */
}

/* Every gating with and without the selection bias, renormalisation and scale, routers up
 * to KERN_ROUTE_MAX_EXPERTS wide (on a rank with no expert: the routing alone). */
static void test_moe_route(void **state)
{
    (void)state;
    const kern_gating_t gatings[] = {KERN_GATING_SOFTMAX, KERN_GATING_SIGMOID,
                                     KERN_GATING_SOFTMAX_SELECTED};
    /* sel_bias, norm, scale */
    const struct {
        bool sel_bias, norm;
        float scale;
    } variants[] = {{false, false, 0.0f}, {true, false, 0.0f},  {false, true, 0.0f},
                    {false, false, 2.5f}, {false, false, 1.0f}, {true, true, 2.5f}};
    for (size_t gi = 0; gi < TDM_ARRAY_SIZE(gatings); gi++) {
        for (size_t vi = 0; vi < TDM_ARRAY_SIZE(variants); vi++) {
            moe_case_t mc = moe_plain(TDM_TYPE_F32, 64, 6, variants[vi].norm, 0, 0, 7);
            mc.gating = gatings[gi];
            mc.sel_bias = variants[vi].sel_bias;
            mc.scale = variants[vi].scale;
            run_moe(&mc);
            if (!g_quick) {
                mc.n_tok = 33;
                run_moe(&mc);
            }
        }
    }
    /* MiniMax-M2 (256 experts top-8: sigmoid, bias, norm), gpt-oss-120b (128 top-4 with a
     * softmax over the chosen), the widest router top-16 and top-1 */
    const moe_case_t wide[] = {
        {TDM_TYPE_F32, 256, 8, KERN_GATING_SIGMOID, true, true, 0.0f, 0, 0, 9, false,
         KERN_ACT_SWIGLU, 0.0f, 0.0f},
        {TDM_TYPE_F32, 128, 4, KERN_GATING_SOFTMAX_SELECTED, false, false, 0.0f, 0, 0, 9, false,
         KERN_ACT_SWIGLU, 0.0f, 0.0f},
        {TDM_TYPE_F32, KERN_ROUTE_MAX_EXPERTS, 16, KERN_GATING_SOFTMAX, false, true, 0.0f, 0, 0, 5,
         false, KERN_ACT_SWIGLU, 0.0f, 0.0f},
        {TDM_TYPE_F32, KERN_ROUTE_MAX_EXPERTS, 8, KERN_GATING_SIGMOID, true, true, 2.5f, 0, 0, 5,
         false, KERN_ACT_SWIGLU, 0.0f, 0.0f},
        {TDM_TYPE_F32, KERN_ROUTE_MAX_EXPERTS, 1, KERN_GATING_SOFTMAX_SELECTED, true, false, 0.0f,
         0, 0, 5, false, KERN_ACT_SWIGLU, 0.0f, 0.0f},
    };
    for (size_t i = 0; i < TDM_ARRAY_SIZE(wide); i++) {
        run_moe(&wide[i]);
    }
}

/* Experts with biases and gpt-oss's clamped SwiGLU: gpt-oss itself (MXFP4, 32 experts
 * top-4, softmax over the chosen, alpha 1.702, limit 7), other types with a low limit (so
 * both clamps engage), biases with plain SwiGLU, EP slices whose biases start at their
 * first expert, and MiniMax-M2's routing in front of an EP slice. */
static void test_moe_biases_oai(void **state)
{
    (void)state;
    const int64_t toks[] = {1, 7, 33};
    for (size_t ni = 0; ni < TDM_ARRAY_SIZE(toks); ni++) {
        if (g_quick && ni != 1) {
            continue;
        }
        const int64_t n = toks[ni];
        const moe_case_t cases[] = {
            {TDM_TYPE_MXFP4, 32, 4, KERN_GATING_SOFTMAX_SELECTED, false, false, 0.0f, 0, 32, n,
             true, KERN_ACT_SWIGLU_OAI, 1.702f, 7.0f},
            {TDM_TYPE_MXFP4, 32, 4, KERN_GATING_SOFTMAX_SELECTED, false, false, 0.0f, 8, 16, n,
             true, KERN_ACT_SWIGLU_OAI, 1.702f, 7.0f},
            {TDM_TYPE_F32, 16, 4, KERN_GATING_SOFTMAX, false, true, 0.0f, 0, 16, n, true,
             KERN_ACT_SWIGLU_OAI, 1.702f, 1.0f},
            {TDM_TYPE_Q8_0, 16, 2, KERN_GATING_SOFTMAX_SELECTED, false, false, 0.0f, 5, 6, n, true,
             KERN_ACT_SWIGLU_OAI, 1.702f, 0.5f},
            {TDM_TYPE_Q4_K, 16, 4, KERN_GATING_SOFTMAX, false, true, 0.0f, 0, 16, n, true,
             KERN_ACT_SWIGLU, 0.0f, 0.0f},
            {TDM_TYPE_F32, 16, 3, KERN_GATING_SIGMOID, true, true, 2.0f, 4, 8, n, true,
             KERN_ACT_SWIGLU, 0.0f, 0.0f},
            {TDM_TYPE_Q4_K, 64, 8, KERN_GATING_SIGMOID, true, true, 0.0f, 16, 32, n, false,
             KERN_ACT_SWIGLU, 0.0f, 0.0f},
        };
        for (size_t ci = 0; ci < TDM_ARRAY_SIZE(cases); ci++) {
            run_moe(&cases[ci]);
        }
    }
}

/* ---- CUDA graphs: a replay with other arguments is refused ---- */

/*
 * One decode-sized step using every op argument added for gpt-oss, MiniMax-M2 and Mistral 3
 * (bias, two-half RMSNorm, windowed attention with sinks and temperature, gated routing,
 * expert biases and activation), run graphable on the backend under test: seen once
 * (eager), captured, then run with one argument changed. A GPU must refuse to replay the
 * captured graph (the argument is in the step's fingerprint) and run the step again without
 * it; the results must be the reference's for the changed argument. Variant 0 changes
 * nothing: the graph is replayed. On the CPU (no graphs) the same steps run eagerly.
 */
enum {
    GV_NONE,
    GV_BIAS,
    GV_NTOTAL,
    GV_WINDOW,
    GV_SINKS,
    GV_TEMP,
    GV_TFLOOR,
    GV_GATING,
    GV_SELB,
    GV_SCALE,
    GV_GATEB,
    GV_DOWNB,
    GV_ACT,
    GV_LIMIT,
    GV_ALPHA,
    GV_COUNT
};

#define GS_TOK  6  /* tokens of the step: positions 0..5 of one sequence */
#define GS_E    64 /* width of the row ops and of the experts' input     */
#define GS_F    64 /* expert width                                       */
#define GS_NEXP 8
#define GS_K    2
#define GS_HD   32
#define GS_NH   2 /* q heads (GQA 2 over one kv head) */

typedef struct gs_host {
    float *x, *bias[2], *w, *k, *v, *q, *sinks, *lg, *sb, *gb, *ub, *db;
    void *gate, *upw, *dn;
} gs_host_t;

typedef struct gs_dev {
    buf_t x, bias[2], w, k, v, q, sinks, lg0, sb, gb, ub, db;
    buf_t y, ss, z, kl, vl, att, lg, sel, wts, mo;
    wt_t wg, wu, wd;
} gs_dev_t;

static const kern_kv_layout_t *gs_layout(void)
{
    static kern_kv_layout_t lay = {TDM_TYPE_F16, 1, GS_HD, 4, 4, 0, 0, false};
    if (lay.row_bytes == 0) {
        assert_int_equal(kern_kv_layout_init(&lay, NULL), TDM_OK);
    }
    return &lay;
}

static void gs_setup(kern_backend_t *be, const gs_host_t *h, gs_dev_t *d)
{
    const kern_kv_layout_t *lay = gs_layout();
    const size_t layer = lay->block_bytes * (size_t)lay->n_blocks;
    reserve(be, GS_TOK, GS_E, GS_E, GS_NH, GS_HD, 16, GS_NEXP, GS_K, GS_E, GS_F);
    d->wg = weight_on(be, TDM_TYPE_MXFP4, GS_F, GS_E, GS_NEXP, h->gate);
    d->wu = weight_on(be, TDM_TYPE_MXFP4, GS_F, GS_E, GS_NEXP, h->upw);
    d->wd = weight_on(be, TDM_TYPE_MXFP4, GS_E, GS_F, GS_NEXP, h->dn);
    const size_t row = (size_t)GS_TOK * GS_E * 4;
    d->x = up(be, h->x, row);
    d->bias[0] = up(be, h->bias[0], GS_E * 4);
    d->bias[1] = up(be, h->bias[1], GS_E * 4);
    d->w = up(be, h->w, GS_E * 4);
    d->k = up(be, h->k, (size_t)GS_TOK * GS_HD * 4);
    d->v = up(be, h->v, (size_t)GS_TOK * GS_HD * 4);
    d->q = up(be, h->q, (size_t)GS_TOK * GS_NH * GS_HD * 4);
    d->sinks = up(be, h->sinks, GS_NH * 4);
    d->lg0 = up(be, h->lg, (size_t)GS_TOK * GS_NEXP * 4);
    d->sb = up(be, h->sb, GS_NEXP * 4);
    d->gb = up(be, h->gb, (size_t)GS_NEXP * GS_F * 4);
    d->ub = up(be, h->ub, (size_t)GS_NEXP * GS_F * 4);
    d->db = up(be, h->db, (size_t)GS_NEXP * GS_E * 4);
    d->y = up(be, NULL, row);
    d->ss = up(be, NULL, GS_TOK * 4);
    d->z = up(be, NULL, row);
    d->kl = up(be, NULL, layer);
    d->vl = up(be, NULL, layer);
    d->att = up(be, NULL, (size_t)GS_TOK * GS_NH * GS_HD * 4);
    d->lg = up(be, NULL, (size_t)GS_TOK * GS_NEXP * 4);
    d->sel = up(be, NULL, (size_t)GS_TOK * GS_K * 4);
    d->wts = up(be, NULL, (size_t)GS_TOK * GS_K * 4);
    d->mo = up(be, NULL, row);
}

/* The outputs, in one host array each (y, z, att, lg, sel, wts, mo). */
#define GS_OUTS 7

static void gs_collect(gs_dev_t *d, float *out[GS_OUTS])
{
    buf_t *o[GS_OUTS] = {&d->y, &d->z, &d->att, &d->lg, &d->sel, &d->wts, &d->mo};
    for (int i = 0; i < GS_OUTS; i++) {
        out[i] = calloc(o[i]->n, 1);
        down(o[i], out[i]);
    }
}

static void gs_free(gs_dev_t *d)
{
    buf_t *bufs[] = {&d->x,   &d->bias[0], &d->bias[1], &d->w,  &d->k,   &d->v,   &d->q,  &d->sinks,
                     &d->lg0, &d->sb,      &d->gb,      &d->ub, &d->db,  &d->y,   &d->ss, &d->z,
                     &d->kl,  &d->vl,      &d->att,     &d->lg, &d->sel, &d->wts, &d->mo};
    for (size_t i = 0; i < TDM_ARRAY_SIZE(bufs); i++) {
        drop(bufs[i]);
    }
    weight_drop(&d->wg);
    weight_drop(&d->wu);
    weight_drop(&d->wd);
}

/* Runs the step with variant v's arguments; returns the step's rerun flag. */
static bool gs_run(kern_backend_t *be, const kern_step_t *st, gs_dev_t *d, int v, bool graphable)
{
    const kern_kv_layout_t *lay = gs_layout();
    kern_attn_params_t ap = {.n_head = GS_NH,
                             .group = GS_NH,
                             .scale = 1.0f / sqrtf((float)GS_HD),
                             .temp_scale = 0.5f,
                             .temp_floor = 2};
    ap.window = v == GV_WINDOW ? 3 : 0;
    ap.sinks = v == GV_SINKS ? d->sinks.p : NULL;
    ap.temp_scale = v == GV_TEMP ? 0.25f : ap.temp_scale;
    ap.temp_floor = v == GV_TFLOOR ? 1 : ap.temp_floor;
    const kern_route_t route = {GS_NEXP,
                                GS_K,
                                v == GV_GATING ? KERN_GATING_SIGMOID : KERN_GATING_SOFTMAX,
                                v == GV_SELB ? d->sb.p : NULL,
                                true,
                                v == GV_SCALE ? 2.5f : 0.0f};
    const kern_moe_t moe = {.gate = d->wg.w,
                            .up = d->wu.w,
                            .down = d->wd.w,
                            .gate_stride = d->wg.stride,
                            .up_stride = d->wu.stride,
                            .down_stride = d->wd.stride,
                            .gate_b = v == GV_GATEB ? d->gb.p : NULL,
                            .up_b = d->ub.p,
                            .down_b = v == GV_DOWNB ? d->db.p : NULL,
                            .gate_b_stride = GS_F,
                            .up_b_stride = GS_F,
                            .down_b_stride = GS_E,
                            .act = v == GV_ACT ? KERN_ACT_SWIGLU : KERN_ACT_SWIGLU_OAI,
                            .act_alpha = v == GV_ALPHA ? 1.0f : 1.702f,
                            .act_limit = v == GV_LIMIT ? 0.5f : 7.0f,
                            .exp_lo = 0,
                            .n_exp = GS_NEXP,
                            .n_used = GS_K,
                            .n_embd = GS_E};
    kern_be_step_begin(be, st, graphable);
    kern_be_copy(be, d->y.p, d->x.p, d->x.n);
    kern_be_add_bias(be, d->y.p, GS_E, d->bias[v == GV_BIAS].p, GS_TOK, GS_E);
    kern_be_sum_sq(be, d->ss.p, 1, d->y.p, GS_E, GS_TOK, GS_E);
    kern_be_rms_apply(be, d->z.p, GS_E, d->y.p, GS_E, d->ss.p, 1, d->w.p, GS_TOK, GS_E,
                      v == GV_NTOTAL ? 2 * GS_E : GS_E, 1e-6f);
    kern_be_kv_store(be, lay, d->kl.p, d->vl.p, d->k.p, d->v.p, GS_HD);
    kern_be_attention(be, d->att.p, d->q.p, lay, d->kl.p, d->vl.p, &ap);
    kern_be_copy(be, d->lg.p, d->lg0.p, d->lg0.n);
    kern_be_moe_route(be, d->lg.p, &route, d->sel.p, d->wts.p);
    kern_be_moe_experts(be, &moe, d->z.p, GS_E, d->sel.p, d->wts.p, d->mo.p, GS_E, GS_TOK);
    bool rerun = false;
    tdm_error_t err = {0};
    if (kern_be_step_end(be, &rerun, &err) != TDM_OK) {
        fail_msg("graph step, variant %d on %s: %s", v, kern_be_describe(be), err.msg);
    }
    return rerun;
}

static void test_graph_args(void **state)
{
    (void)state;
    gs_host_t h;
    h.x = random_x(GS_TOK, GS_E, GS_E);
    h.bias[0] = random_x(1, GS_E, GS_E);
    h.bias[1] = random_x(1, GS_E, GS_E);
    h.w = random_x(1, GS_E, GS_E);
    h.k = random_x(GS_TOK, GS_HD, GS_HD);
    h.v = random_x(GS_TOK, GS_HD, GS_HD);
    h.q = random_x(GS_TOK, GS_NH * GS_HD, GS_NH * GS_HD);
    h.sinks = random_x(1, GS_NH, GS_NH);
    h.lg = random_x(GS_TOK, GS_NEXP, GS_NEXP);
    h.sb = random_x(1, GS_NEXP, GS_NEXP);
    h.gb = random_x(GS_NEXP, GS_F, GS_F);
    h.ub = random_x(GS_NEXP, GS_F, GS_F);
    h.db = random_x(GS_NEXP, GS_E, GS_E);
    h.gate = random_blocks(TDM_TYPE_MXFP4, (int64_t)GS_NEXP * GS_F * GS_E);
    h.upw = random_blocks(TDM_TYPE_MXFP4, (int64_t)GS_NEXP * GS_F * GS_E);
    h.dn = random_blocks(TDM_TYPE_MXFP4, (int64_t)GS_NEXP * GS_E * GS_F);
    int32_t blocks[2] = {3, 1};
    const kern_seq_t seq = {blocks, 2, NULL, -1, -1, -1};
    int32_t tok[GS_TOK] = {0}, pos[GS_TOK], sq[GS_TOK] = {0}, outi[1] = {0};
    for (int t = 0; t < GS_TOK; t++) {
        pos[t] = t;
    }
    const kern_step_t st = {GS_TOK, tok, pos, sq, 1, &seq, 0, outi};
    const char *g = getenv("TANDEM_CUDA_GRAPHS");
    const bool graphs =
        kern_be_kind(g_dut) == KERN_DEVICE_CUDA && !(g != NULL && strcmp(g, "0") == 0);
    static const char *names[GV_COUNT] = {"nothing",    "bias",        "n_total",    "window",
                                          "sinks",      "temp_scale",  "temp_floor", "gating",
                                          "sel_bias",   "route scale", "gate bias",  "down bias",
                                          "activation", "act_limit",   "act_alpha"};
    static const char *outs[GS_OUTS] = {
        "add_bias",       "rms_apply",   "attention",  "router probabilities",
        "chosen experts", "moe weights", "moe experts"};
    static const double tols[GS_OUTS] = {0.0, 1e-6, 2e-5, 1e-6, 0.0, 1e-6, 1e-3};
    const int64_t ns[GS_OUTS] = {GS_TOK * GS_E,    GS_TOK * GS_E, GS_TOK * GS_NH * GS_HD,
                                 GS_TOK * GS_NEXP, GS_TOK * GS_K, GS_TOK * GS_K,
                                 GS_TOK * GS_E};
    float *base[GS_OUTS] = {NULL};
    for (int v = 0; v < GV_COUNT; v++) {
        gs_dev_t d;
        float *ref[GS_OUTS], *got[GS_OUTS];
        gs_setup(g_ref, &h, &d);
        assert_false(gs_run(g_ref, &st, &d, v, false));
        gs_collect(&d, ref);
        gs_free(&d);
        /* the test's own check: every variant changes some output (else a stale replay
         * would go unseen by the comparison below) */
        bool differs = v == GV_NONE;
        for (int i = 0; i < GS_OUTS && v != GV_NONE; i++) {
            differs |= memcmp(base[i], ref[i], (size_t)ns[i] * 4) != 0;
        }
        if (!differs) {
            fail_msg("graph step: another %s changes no output", names[v]);
        }

        gs_setup(g_dut, &h, &d);
        kern_be_stats_t s0, s1, s2;
        kern_be_stats(g_dut, &s0);
        assert_false(gs_run(g_dut, &st, &d, GV_NONE, true)); /* seen once: eager */
        assert_false(gs_run(g_dut, &st, &d, GV_NONE, true)); /* captured          */
        kern_be_stats(g_dut, &s1);
        const bool rerun = gs_run(g_dut, &st, &d, v, true);
        kern_be_stats(g_dut, &s2);
        if (graphs) {
            if (s1.graph_captures != s0.graph_captures + 1) {
                fail_msg("graph step: the second step of a shape was not captured");
            }
            if (v == GV_NONE && (rerun || s2.graph_replays != s1.graph_replays + 1)) {
                fail_msg("graph step: the same arguments were not replayed");
            }
            if (v != GV_NONE && (!rerun || s2.graph_drops != s1.graph_drops + 1)) {
                fail_msg("graph step: a replay with another %s was not refused", names[v]);
            }
        }
        if (rerun) {
            assert_false(gs_run(g_dut, &st, &d, v, false));
        }
        gs_collect(&d, got);
        gs_free(&d);

        for (int i = 0; i < GS_OUTS; i++) {
            char what[96];
            snprintf(what, sizeof(what), "graph step, another %s: %s", names[v], outs[i]);
            if (i == 4) {
                if (memcmp(ref[i], got[i], (size_t)ns[i] * 4) != 0) {
                    fail_msg("%s differ", what);
                }
            } else {
                compare(what, ref[i], got[i], ns[i], tols[i]);
            }
            if (v == GV_NONE) {
                base[i] = ref[i];
            } else {
                free(ref[i]);
            }
            free(got[i]);
        }
    }
    for (int i = 0; i < GS_OUTS; i++) {
        free(base[i]);
    }
    float *fl[] = {h.x,     h.bias[0], h.bias[1], h.w,  h.k,  h.v, h.q,
                   h.sinks, h.lg,      h.sb,      h.gb, h.ub, h.db};
    for (size_t i = 0; i < TDM_ARRAY_SIZE(fl); i++) {
        free(fl[i]);
    }
    free(h.gate);
    free(h.upw);
    free(h.dn);
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
        cmocka_unit_test(test_bias_sum_sq_rms_apply),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_batch_invariance),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_window_sinks_temp),
        cmocka_unit_test(test_attention_sliding_pool),
        cmocka_unit_test(test_moe),
        cmocka_unit_test(test_moe_route),
        cmocka_unit_test(test_moe_biases_oai),
        cmocka_unit_test(test_graph_args),
    };
    const int rc = cmocka_run_group_tests(tests, NULL, NULL);
    kern_backend_destroy(g_dut);
    kern_backend_destroy(g_ref);
    return rc;
}
