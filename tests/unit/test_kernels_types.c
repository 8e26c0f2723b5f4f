/*
 * test_kernels_types.c - the CPU tensor-type kernels against independent oracles.
 *
 *   - dequantizers: bit-exact (bit patterns, NaN/inf included) with gguf.quants.dequantize
 *     on random blocks with edge cases (tests/fixtures/quant/, tools/fixtures/
 *     make_quant_fixtures.py);
 *   - quantizers: bit-exact with gguf.quants.quantize (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
 *     Q8_0, MXFP4) and with llama.cpp's reference for the activation formats Q8_1 and
 *     Q8_K; the K-quants (own algorithm) within a stated error bound and no worse than
 *     1.15x llama.cpp's reference quantizer on the same rows;
 *   - vec_dot: every ISA this CPU runs equal to the scalar reference within float
 *     rounding, and the scalar reference equal to the double-precision dot of the
 *     dequantized operands within float rounding;
 *   - kern_matmul (shapes, strides, n_tok 1..37, 1..4 threads, every ISA) equal to a naive
 *     dequantize-and-dot reference; its multi-token (prefill) kernels, n_tok 2..37, equal
 *     to the scalar single-token vec_dot; kern_parallel_for covering every index exactly once;
 *   - batch invariance: the decode row kernels and the prefill tiles give each (row, token)
 *     the bits of the ISA's vec_dot, and kern_matmul gives a token the same bits alone, in
 *     any batch and on any thread count.
 *
 * Float-rounding bound used throughout: |got - exact| <= (n_blocks + 4) * 2^-23 * sum|w*a|,
 * the textbook bound for summing n_blocks rounded block terms (each block's integer sum
 * is exact; the scale product and the conversion add a few ulps).
 */
#include "common/cpu_features.h"
#include "kernels/cpu/types_cpu.h"
#include "kernels/kern.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- helpers -------------------------------------------------------------------- */

static uint32_t rng_next(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(*s >> 33);
}

static float rng_uniform(uint64_t *s) /* [-1, 1) */
{
    return (float)(rng_next(s) & 0xFFFFFF) / 8388608.0f - 1.0f;
}

static float rng_normal(uint64_t *s)
{
    float u = 0.0f;
    for (int i = 0; i < 6; i++) {
        u += rng_uniform(s);
    }
    return u * 0.7071f;
}

/* The weight types with CPU kernels (all of them have a vec_dot). */
static const tdm_type_t weight_types[] = {
    TDM_TYPE_F32,  TDM_TYPE_F16,   TDM_TYPE_BF16,   TDM_TYPE_Q4_0,   TDM_TYPE_Q4_1, TDM_TYPE_Q5_0,
    TDM_TYPE_Q5_1, TDM_TYPE_Q8_0,  TDM_TYPE_Q2_K,   TDM_TYPE_Q3_K,   TDM_TYPE_Q4_K, TDM_TYPE_Q5_K,
    TDM_TYPE_Q6_K, TDM_TYPE_MXFP4, TDM_TYPE_IQ4_NL, TDM_TYPE_IQ4_XS,
};

/* Byte offsets of the f16 scale fields of each block type (random bytes there would be
 * inf/NaN scales, which make dot products meaningless). */
static int f16_fields(tdm_type_t t, int *off)
{
    switch (t) {
    case TDM_TYPE_Q4_0:
    case TDM_TYPE_Q5_0:
    case TDM_TYPE_Q8_0:
    case TDM_TYPE_IQ4_NL:
    case TDM_TYPE_IQ4_XS:
        off[0] = 0;
        return 1;
    case TDM_TYPE_Q4_1:
    case TDM_TYPE_Q5_1:
    case TDM_TYPE_Q4_K:
    case TDM_TYPE_Q5_K:
        off[0] = 0;
        off[1] = 2;
        return 2;
    case TDM_TYPE_Q2_K:
        off[0] = 80;
        off[1] = 82;
        return 2;
    case TDM_TYPE_Q3_K:
        off[0] = 108;
        return 1;
    case TDM_TYPE_Q6_K:
        off[0] = 208;
        return 1;
    default:
        return 0;
    }
}

/* n elements of random weights of type t with sane (finite, moderate) scales. */
static void *random_weights(tdm_type_t t, int64_t n_rows, int64_t n, uint64_t *s)
{
    const tdm_type_traits_t *tr = tdm_type_traits(t);
    const size_t bytes = tdm_type_row_size(t, n) * (size_t)n_rows;
    uint8_t *p = malloc(bytes);
    assert_non_null(p);
    if (t == TDM_TYPE_F32) {
        float *f = (float *)p;
        for (size_t i = 0; i < bytes / 4; i++) {
            f[i] = rng_normal(s);
        }
        return p;
    }
    if (t == TDM_TYPE_F16 || t == TDM_TYPE_BF16) {
        uint16_t *h = (uint16_t *)p;
        for (size_t i = 0; i < bytes / 2; i++) {
            h[i] = t == TDM_TYPE_F16 ? kern_fp32_to_fp16(rng_normal(s))
                                     : kern_fp32_to_bf16(rng_normal(s));
        }
        return p;
    }
    for (size_t i = 0; i < bytes; i++) {
        p[i] = (uint8_t)rng_next(s);
    }
    int off[2];
    const int nf = f16_fields(t, off);
    for (size_t b = 0; b < bytes / tr->size; b++) {
        uint8_t *blk = p + b * tr->size;
        if (t == TDM_TYPE_MXFP4) {
            blk[0] = (uint8_t)(118 + rng_next(s) % 12);
        }
        for (int k = 0; k < nf; k++) {
            const float v = ldexpf(1.0f + rng_uniform(s) * 0.5f, -(int)(rng_next(s) % 8) - 4);
            const uint16_t h = kern_fp32_to_fp16((rng_next(s) & 1) ? -v : v);
            memcpy(blk + off[k], &h, 2);
        }
    }
    return p;
}

static float *dequant_alloc(tdm_type_t t, const void *src, int64_t n)
{
    float *y = malloc((size_t)n * sizeof(float));
    assert_non_null(y);
    assert_int_equal(kern_dequantize(t, src, y, n, NULL), TDM_OK);
    return y;
}

static int64_t n_blocks_of(tdm_type_t t, int64_t n)
{
    return n / (int64_t)tdm_type_traits(t)->blck;
}

/* exact (double) dot and sum of |terms| */
static void exact_dot(const float *a, const float *b, int64_t n, double *dot, double *absdot)
{
    double s = 0.0, sa = 0.0;
    for (int64_t i = 0; i < n; i++) {
        s += (double)a[i] * b[i];
        sa += fabs((double)a[i] * b[i]);
    }
    *dot = s;
    *absdot = sa;
}

/* The reference dot of a weight row and its quantized activation row. Q8_1 carries
 * s = f16(d * sum(q)), and the Q4_1/Q5_1 dots use it for the min term (m * s), so the
 * reference does too: the f16 rounding of s belongs to the activation format. */
static void ref_dot(tdm_type_t t, const void *w, const float *wd, const void *a, const float *ad,
                    int64_t n, double *dot, double *absdot)
{
    exact_dot(wd, ad, n, dot, absdot);
    if (kern_type_cpu(t)->vec_dot_type != TDM_TYPE_Q8_1) {
        return;
    }
    const size_t wsize = tdm_type_traits(t)->size;
    const kern_block_q8_1 *qa = a;
    for (int64_t b = 0; b < n / 32; b++) {
        uint16_t mh;
        memcpy(&mh, (const uint8_t *)w + (size_t)b * wsize + 2, 2); /* m of Q4_1 / Q5_1 */
        const double m = kern_fp16_to_fp32(mh), sa = kern_fp16_to_fp32(qa[b].s);
        double sum = 0.0;
        for (int j = 0; j < 32; j++) {
            sum += ad[32 * b + j];
        }
        *dot += m * (sa - sum);
        *absdot += fabs(m * sa);
    }
}

static double rounding_bound(int64_t n_blocks, double absdot)
{
    return (double)(n_blocks + 4) * 0x1p-23 * absdot + 1e-30;
}

/* ---- fixtures ------------------------------------------------------------------- */

typedef struct fixture {
    uint32_t type, blck, size, n_blocks, n_rows, n_per_row, q_exact, q_oracle;
    uint8_t *blocks; /* section A */
    float *deq;
    float *qin; /* section B */
    uint8_t *qout;
    uint8_t *buf;
} fixture_t;

static int load_fixture(const char *name, fixture_t *fx)
{
    const char *src = getenv("TANDEM_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof(path), "%s/tests/fixtures/quant/%s.bin", src ? src : ".", name);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        print_error("cannot open fixture %s (set TANDEM_SOURCE_DIR)\n", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    memset(fx, 0, sizeof(*fx));
    fx->buf = malloc((size_t)len);
    assert_non_null(fx->buf);
    assert_int_equal(fread(fx->buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    assert_true(len >= 40);
    assert_memory_equal(fx->buf, "TDMQFX1\0", 8);
    memcpy(&fx->type, fx->buf + 8, 32);
    uint8_t *p = fx->buf + 40;
    fx->blocks = p;
    p += (size_t)fx->n_blocks * fx->size;
    fx->deq = (float *)p;
    p += (size_t)fx->n_blocks * fx->blck * sizeof(float);
    fx->qin = (float *)p;
    p += (size_t)fx->n_rows * fx->n_per_row * sizeof(float);
    fx->qout = p;
    p += (size_t)fx->n_rows * (fx->n_per_row / fx->blck) * fx->size;
    assert_int_equal(p - fx->buf, len);
    return 0;
}

static const char *const fixture_names[] = {
    "F32",  "F16",  "BF16", "Q4_0", "Q4_1",   "Q5_0",   "Q5_1",  "Q8_0", "Q2_K",
    "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "MXFP4", "Q8_1", "Q8_K",
};

static void test_dequant_bit_exact(void **state)
{
    (void)state;
    int n_types = 0;
    for (size_t i = 0; i < ARRAY_LEN(fixture_names); i++) {
        fixture_t fx;
        assert_int_equal(load_fixture(fixture_names[i], &fx), 0);
        assert_int_equal(fx.type, (uint32_t)tdm_type_from_name(fixture_names[i]));
        if (fx.n_blocks > 0) {
            const int64_t n = (int64_t)fx.n_blocks * fx.blck;
            float *y = dequant_alloc((tdm_type_t)fx.type, fx.blocks, n);
            for (int64_t k = 0; k < n; k++) {
                if (kern_f32_bits(y[k]) != kern_f32_bits(fx.deq[k])) {
                    fail_msg("%s: element %lld (block %lld): got %.9g (0x%08x), gguf %.9g (0x%08x)",
                             fixture_names[i], (long long)k, (long long)(k / fx.blck), y[k],
                             kern_f32_bits(y[k]), fx.deq[k], kern_f32_bits(fx.deq[k]));
                }
            }
            free(y);
            n_types++;
        }
        free(fx.buf);
    }
    assert_int_equal(n_types, 16);
}

/* Our quantizer reproduces the oracle's bytes (gguf or llama.cpp's reference). */
static void test_quantize_bit_exact(void **state)
{
    (void)state;
    int n_exact = 0;
    for (size_t i = 0; i < ARRAY_LEN(fixture_names); i++) {
        fixture_t fx;
        assert_int_equal(load_fixture(fixture_names[i], &fx), 0);
        if (fx.q_exact) {
            const size_t row_bytes = (fx.n_per_row / fx.blck) * fx.size;
            uint8_t *q = calloc(fx.n_rows, row_bytes);
            assert_int_equal(
                kern_quantize((tdm_type_t)fx.type, fx.qin, q, fx.n_rows, fx.n_per_row, NULL),
                TDM_OK);
            for (size_t b = 0; b < fx.n_rows * row_bytes; b++) {
                if (q[b] != fx.qout[b]) {
                    fail_msg("%s: byte %zu (row %zu, block %zu, offset %zu): got 0x%02x, "
                             "oracle 0x%02x",
                             fixture_names[i], b, b / row_bytes, (b % row_bytes) / fx.size,
                             b % fx.size, q[b], fx.qout[b]);
                }
            }
            free(q);
            n_exact++;
        }
        free(fx.buf);
    }
    assert_int_equal(n_exact, 10);
}

static double row_rmse(const float *a, const float *b, int64_t n, double *rms)
{
    double e = 0.0, r = 0.0;
    for (int64_t i = 0; i < n; i++) {
        e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)a[i] * a[i];
    }
    *rms = sqrt(r / (double)n);
    return sqrt(e / (double)n);
}

/*
 * K-quant quantizers (own algorithm): on Gaussian rows of 4096 the round-trip RMSE
 * relative to the row RMS stays below Q4_K 0.12, Q5_K 0.06, Q6_K 0.03 (llama.cpp's
 * reference reaches about 0.10 / 0.05 / 0.025), and on every fixture row our RMSE is at
 * most 1.15x that of llama.cpp's reference quantizer (+1e-12 for exact rows).
 */
static void test_kquant_quality(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        double rel_bound;
    } kq[] = {{"Q4_K", 0.12}, {"Q5_K", 0.06}, {"Q6_K", 0.03}};
    for (size_t i = 0; i < ARRAY_LEN(kq); i++) {
        fixture_t fx;
        assert_int_equal(load_fixture(kq[i].name, &fx), 0);
        assert_int_equal(fx.q_exact, 0);
        const tdm_type_t t = (tdm_type_t)fx.type;
        const size_t row_bytes = tdm_type_row_size(t, fx.n_per_row);
        uint8_t *q = malloc(row_bytes);
        for (uint32_t r = 0; r < fx.n_rows; r++) {
            const float *x = fx.qin + (size_t)r * fx.n_per_row;
            assert_int_equal(kern_quantize(t, x, q, 1, fx.n_per_row, NULL), TDM_OK);
            float *ours = dequant_alloc(t, q, fx.n_per_row);
            float *ggml = dequant_alloc(t, fx.qout + r * row_bytes, fx.n_per_row);
            double rms;
            const double e_ours = row_rmse(x, ours, fx.n_per_row, &rms);
            const double e_ggml = row_rmse(x, ggml, fx.n_per_row, &rms);
            if (!(e_ours <= 1.15 * e_ggml + 1e-12 * rms + 1e-30)) {
                fail_msg("%s row %u: rmse %.4g vs llama.cpp %.4g (row rms %.4g)", kq[i].name, r,
                         e_ours, e_ggml, rms);
            }
            free(ours);
            free(ggml);
        }
        free(q);
        free(fx.buf);

        /* the stated bound on Gaussian data */
        const int64_t n = 4096;
        uint64_t s = 77 + i;
        float *x = malloc(n * sizeof(float));
        for (int64_t k = 0; k < n; k++) {
            x[k] = rng_normal(&s);
        }
        uint8_t *qq = malloc(tdm_type_row_size(t, n));
        assert_int_equal(kern_quantize(t, x, qq, 1, n, NULL), TDM_OK);
        float *y = dequant_alloc(t, qq, n);
        double rms;
        const double e = row_rmse(x, y, n, &rms);
        print_message("%s: round-trip rmse / rms = %.4f (bound %.2f)\n", kq[i].name, e / rms,
                      kq[i].rel_bound);
        assert_true(e / rms < kq[i].rel_bound);
        free(x);
        free(qq);
        free(y);
    }
}

/* Activation formats: dequant(quant(x)) within half a quantization step, and the
 * redundant fields (Q8_1 s, Q8_K bsums) consistent. */
static void test_activation_formats(void **state)
{
    (void)state;
    uint64_t s = 5;
    const int64_t n = 512;
    float x[512];
    for (int64_t k = 0; k < n; k++) {
        x[k] = rng_normal(&s) * (k < 256 ? 1.0f : 1e-3f);
    }
    x[3] = 0.0f;
    kern_block_q8_1 q1[16];
    kern_block_q8_k qk[2];
    assert_int_equal(kern_quantize(TDM_TYPE_Q8_1, x, q1, 1, n, NULL), TDM_OK);
    assert_int_equal(kern_quantize(TDM_TYPE_Q8_K, x, qk, 1, n, NULL), TDM_OK);
    float y1[512], yk[512];
    assert_int_equal(kern_dequantize(TDM_TYPE_Q8_1, q1, y1, n, NULL), TDM_OK);
    assert_int_equal(kern_dequantize(TDM_TYPE_Q8_K, qk, yk, n, NULL), TDM_OK);
    for (int64_t k = 0; k < n; k++) {
        const float d1 = kern_fp16_to_fp32(q1[k / 32].d);
        /* half a step, plus 127 steps times the f16 rounding of d (2^-11 relative) */
        assert_true(fabsf(y1[k] - x[k]) <= d1 * (0.5f + 127.0f * 0x1p-11f) * 1.01f);
        assert_true(fabsf(yk[k] - x[k]) <= 0.5f * fabsf(qk[k / 256].d) * 1.01f);
    }
    for (int b = 0; b < 16; b++) {
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            sum += q1[b].qs[j];
        }
        /* s = f16(d * sum) with the unrounded d (the fixture checks it bit-exactly) */
        const float want = (float)sum * kern_fp16_to_fp32(q1[b].d);
        assert_true(fabsf(kern_fp16_to_fp32(q1[b].s) - want) <= 0x1p-9f * fabsf(want) + 1e-7f);
    }
    for (int b = 0; b < 2; b++) {
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) {
                sum += qk[b].qs[16 * g + j];
            }
            assert_int_equal(qk[b].bsums[g], sum);
        }
    }
}

/* f16 conversions against exhaustive properties: every half round-trips exactly. */
static void test_f16_roundtrip(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = kern_fp16_to_fp32((uint16_t)h);
        const uint16_t back = kern_fp32_to_fp16(f);
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0) { /* NaN: stays NaN, quiet */
            assert_true((back & 0x7C00) == 0x7C00 && (back & 0x3FF) != 0);
            continue;
        }
        assert_int_equal(back, h);
    }
}

/* ---- vec_dot -------------------------------------------------------------------- */

static void *quantize_act(tdm_type_t vdt, const float *x, int64_t n)
{
    const size_t bytes = tdm_type_row_size(vdt, n);
    void *a = malloc(bytes);
    assert_non_null(a);
    assert_int_equal(kern_quantize(vdt, x, a, 1, n, NULL), TDM_OK);
    return a;
}

static void test_vec_dot(void **state)
{
    (void)state;
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    uint64_t s = 12345;
    for (int isa = 0; isa < KERN_ISA_COUNT; isa++) {
        if (kern_isa_supported((kern_isa_t)isa, &f)) {
            print_message("vec_dot: checking %s\n", kern_isa_name((kern_isa_t)isa));
        }
    }
    for (size_t ti = 0; ti < ARRAY_LEN(weight_types); ti++) {
        const tdm_type_t t = weight_types[ti];
        const kern_type_cpu_t *tc = kern_type_cpu(t);
        assert_non_null(tc);
        const int64_t blck = tdm_type_traits(t)->blck == 1 ? 32 : tdm_type_traits(t)->blck;
        static const int64_t mults[] = {1, 2, 3, 5, 8, 16, 17};
        for (size_t mi = 0; mi < ARRAY_LEN(mults); mi++) {
            const int64_t n = blck * mults[mi] + (tdm_type_traits(t)->blck == 1 ? mi : 0);
            void *w = random_weights(t, 1, n, &s);
            float *x = malloc((size_t)n * sizeof(float));
            for (int64_t k = 0; k < n; k++) {
                x[k] = rng_normal(&s) * ((k % 97) == 0 ? 8.0f : 1.0f);
            }
            void *a = quantize_act(tc->vec_dot_type, x, n);
            float *wd = dequant_alloc(t, w, n);
            float *ad = dequant_alloc(tc->vec_dot_type, a, n);
            double exact, absdot;
            ref_dot(t, w, wd, a, ad, n, &exact, &absdot);
            const double tol = rounding_bound(n_blocks_of(t, n), absdot);

            const float ref = tc->vec_dot[KERN_ISA_SCALAR](n, w, a);
            if (!(fabs((double)ref - exact) <= tol)) {
                fail_msg("%s n=%lld: scalar vec_dot %.9g, dequantized dot %.9g (tol %.3g)",
                         tdm_type_name(t), (long long)n, ref, exact, tol);
            }
            for (int isa = 1; isa < KERN_ISA_COUNT; isa++) {
                if (!kern_isa_supported((kern_isa_t)isa, &f)) {
                    continue;
                }
                const float got = kern_vec_dot_get(t, (kern_isa_t)isa)(n, w, a);
                if (!(fabs((double)got - ref) <= 2.0 * tol)) {
                    fail_msg("%s n=%lld %s: vec_dot %.9g, scalar %.9g (tol %.3g)", tdm_type_name(t),
                             (long long)n, kern_isa_name((kern_isa_t)isa), got, ref, 2.0 * tol);
                }
            }
            free(w);
            free(x);
            free(a);
            free(wd);
            free(ad);
        }
    }
}

/* Every compiled SIMD level has its own vec_dot for every weight type (no silent
 * fallback to scalar on the levels we claim). */
static void test_simd_tables_complete(void **state)
{
    (void)state;
    static const kern_isa_t simd[] = {KERN_ISA_AVX2, KERN_ISA_NEON, KERN_ISA_NEON_DOT};
    for (size_t i = 0; i < ARRAY_LEN(simd); i++) {
        if (!kern_isa_compiled(simd[i])) {
            continue;
        }
        for (size_t ti = 0; ti < ARRAY_LEN(weight_types); ti++) {
            const kern_type_cpu_t *tc = kern_type_cpu(weight_types[ti]);
            if (tc->vec_dot[simd[i]] == NULL) {
                fail_msg("%s has no %s vec_dot", tdm_type_name(weight_types[ti]),
                         kern_isa_name(simd[i]));
            }
        }
    }
}

/* The prefill tiles (tile, tile2) and decode row kernels each SIMD level claims for a type:
 * present, and not a silent fallback to the per-token vec_dot. */
static void test_simd_multi_kernels_complete(void **state)
{
    (void)state;
    static const struct {
        tdm_type_t t;
        kern_isa_t isa;
        int tile, tile2, rows;
    } want[] = {
        {TDM_TYPE_Q4_1, KERN_ISA_AVX2, 1, 1, 1},   {TDM_TYPE_Q8_0, KERN_ISA_AVX2, 1, 0, 1},
        {TDM_TYPE_Q4_K, KERN_ISA_AVX2, 1, 0, 1},   {TDM_TYPE_Q6_K, KERN_ISA_AVX2, 1, 0, 1},
        {TDM_TYPE_MXFP4, KERN_ISA_AVX2, 1, 1, 1},  {TDM_TYPE_MXFP4, KERN_ISA_AVX512, 1, 1, 1},
        {TDM_TYPE_Q8_0, KERN_ISA_AVX512, 1, 1, 1}, {TDM_TYPE_Q4_K, KERN_ISA_AVX512, 1, 1, 1},
        {TDM_TYPE_Q6_K, KERN_ISA_AVX512, 1, 1, 1}, {TDM_TYPE_Q4_1, KERN_ISA_AVX512, 1, 1, 1},
        {TDM_TYPE_MXFP4, KERN_ISA_NEON, 1, 1, 0},  {TDM_TYPE_MXFP4, KERN_ISA_NEON_DOT, 1, 1, 0},
    };
    for (size_t i = 0; i < ARRAY_LEN(want); i++) {
        if (!kern_isa_compiled(want[i].isa)) {
            continue;
        }
        const tdm_type_t t = want[i].t;
        const kern_isa_t isa = want[i].isa;
        if ((kern_vec_dot_tile_get(t, isa) != NULL) != want[i].tile ||
            (kern_vec_dot_tile2_get(t, isa) != NULL) != want[i].tile2 ||
            (kern_vec_dot_rows_get(t, isa) != NULL) != want[i].rows) {
            fail_msg("%s %s: tile %d tile2 %d rows %d, want %d %d %d", tdm_type_name(t),
                     kern_isa_name(isa), kern_vec_dot_tile_get(t, isa) != NULL,
                     kern_vec_dot_tile2_get(t, isa) != NULL, kern_vec_dot_rows_get(t, isa) != NULL,
                     want[i].tile, want[i].tile2, want[i].rows);
        }
    }
    /* AVX-512 reads four rows at a time for its own types */
    static const tdm_type_t t4[] = {TDM_TYPE_Q8_0, TDM_TYPE_Q4_K, TDM_TYPE_Q6_K, TDM_TYPE_MXFP4};
    for (size_t i = 0; i < ARRAY_LEN(t4) && kern_isa_compiled(KERN_ISA_AVX512); i++) {
        assert_non_null(kern_vec_dot_tile4_get(t4[i], KERN_ISA_AVX512));
        assert_null(kern_vec_dot_tile4_get(t4[i], KERN_ISA_AVX2));
    }
    /* the scalar level never has them */
    assert_null(kern_vec_dot_tile_get(TDM_TYPE_MXFP4, KERN_ISA_SCALAR));
    assert_null(kern_vec_dot_tile2_get(TDM_TYPE_MXFP4, KERN_ISA_SCALAR));
    assert_null(kern_vec_dot_rows_get(TDM_TYPE_MXFP4, KERN_ISA_SCALAR));
}

/* ---- parallel_for --------------------------------------------------------------- */

typedef struct pf_arg {
    atomic_int *count;
    int64_t n, grain;
    atomic_int short_chunks;
    atomic_int bad_thread;
    int n_threads;
} pf_arg_t;

static void pf_task(void *arg, int64_t begin, int64_t end, int thread_idx)
{
    pf_arg_t *p = arg;
    if (end - begin < p->grain && end != p->n) {
        atomic_fetch_add(&p->short_chunks, 1);
    }
    if (thread_idx < 0 || thread_idx >= p->n_threads) {
        atomic_fetch_add(&p->bad_thread, 1);
    }
    for (int64_t i = begin; i < end; i++) {
        atomic_fetch_add(&p->count[i], 1);
    }
}

typedef struct nest_arg {
    kern_ctx_t *ctx;
    pf_arg_t inner[64];
} nest_arg_t;

static void nest_task(void *arg, int64_t begin, int64_t end, int thread_idx)
{
    nest_arg_t *na = arg;
    (void)thread_idx;
    for (int64_t i = begin; i < end; i++) {
        kern_parallel_for(na->ctx, na->inner[i].n, na->inner[i].grain, pf_task, &na->inner[i]);
    }
}

static void test_parallel_for(void **state)
{
    (void)state;
    static const int64_t ns[] = {0, 1, 2, 7, 64, 100, 1000, 12345};
    static const int64_t grains[] = {1, 3, 64, 5000};
    for (int nt = 1; nt <= 4; nt++) {
        kern_ctx_t *ctx = NULL;
        assert_int_equal(kern_ctx_create(nt, KERN_ISA_COUNT, &ctx, NULL), TDM_OK);
        assert_int_equal(kern_ctx_n_threads(ctx), nt);
        for (int rep = 0; rep < 3; rep++) {
            for (size_t a = 0; a < ARRAY_LEN(ns); a++) {
                for (size_t g = 0; g < ARRAY_LEN(grains); g++) {
                    const int64_t n = ns[a];
                    atomic_int *count = calloc((size_t)n + 1, sizeof(atomic_int));
                    pf_arg_t p = {.count = count, .n = n, .grain = grains[g], .n_threads = nt};
                    kern_parallel_for(ctx, n, grains[g], pf_task, &p);
                    for (int64_t i = 0; i < n; i++) {
                        if (atomic_load(&count[i]) != 1) {
                            fail_msg("threads=%d n=%lld grain=%lld: index %lld ran %d times", nt,
                                     (long long)n, (long long)grains[g], (long long)i,
                                     atomic_load(&count[i]));
                        }
                    }
                    assert_int_equal(atomic_load(&p.short_chunks), 0);
                    assert_int_equal(atomic_load(&p.bad_thread), 0);
                    free(count);
                }
            }
        }
        /* nested calls run serially inside the task and still cover everything */
        nest_arg_t *na = calloc(1, sizeof(*na));
        na->ctx = ctx;
        atomic_int *counts[64];
        for (int i = 0; i < 64; i++) {
            counts[i] = calloc(50, sizeof(atomic_int));
            na->inner[i] = (pf_arg_t){.count = counts[i], .n = 50, .grain = 4, .n_threads = nt};
        }
        kern_parallel_for(ctx, 64, 1, nest_task, na);
        for (int i = 0; i < 64; i++) {
            for (int k = 0; k < 50; k++) {
                assert_int_equal(atomic_load(&counts[i][k]), 1);
            }
            free(counts[i]);
        }
        free(na);
        kern_ctx_destroy(ctx);
    }
    kern_ctx_destroy(NULL);
}

/* ---- matmul --------------------------------------------------------------------- */

static void check_matmul(kern_ctx_t *ctx, tdm_type_t t, int64_t k, int64_t n_rows, int64_t n_tok,
                         uint64_t *s)
{
    const kern_type_cpu_t *tc = kern_type_cpu(t);
    const int64_t ldx = k + 3, ldy = n_rows + 5;
    void *wdata = random_weights(t, n_rows, k, s);
    kern_weight_t w = {.type = t,
                       .n_cols = k,
                       .n_rows = n_rows,
                       .row_bytes = tdm_type_row_size(t, k),
                       .data = wdata};
    float *x = malloc((size_t)(n_tok * ldx) * sizeof(float));
    float *y = malloc((size_t)(n_tok * ldy) * sizeof(float));
    for (int64_t i = 0; i < n_tok * ldx; i++) {
        x[i] = rng_normal(s);
    }
    for (int64_t i = 0; i < n_tok * ldy; i++) {
        y[i] = -12345.0f; /* sentinel: the padding must stay untouched */
    }
    tdm_error_t err = {0};
    assert_int_equal(kern_matmul(ctx, &w, x, ldx, n_tok, y, ldy, &err), TDM_OK);

    float *wd = dequant_alloc(t, wdata, k * n_rows);
    for (int64_t tk = 0; tk < n_tok; tk++) {
        void *a = quantize_act(tc->vec_dot_type, x + tk * ldx, k);
        float *ad = dequant_alloc(tc->vec_dot_type, a, k);
        for (int64_t r = 0; r < n_rows; r++) {
            double exact, absdot;
            ref_dot(t, (const uint8_t *)wdata + r * w.row_bytes, wd + r * k, a, ad, k, &exact,
                    &absdot);
            const double tol = 2.0 * rounding_bound(n_blocks_of(t, k), absdot);
            const float got = y[tk * ldy + r];
            if (!(fabs((double)got - exact) <= tol)) {
                fail_msg("%s K=%lld N=%lld n_tok=%lld threads=%d isa=%s: y[%lld,%lld] = %.9g, "
                         "reference %.9g (tol %.3g)",
                         tdm_type_name(t), (long long)k, (long long)n_rows, (long long)n_tok,
                         kern_ctx_n_threads(ctx), kern_isa_name(kern_ctx_isa(ctx)), (long long)tk,
                         (long long)r, got, exact, tol);
            }
        }
        for (int64_t r = n_rows; r < ldy; r++) {
            assert_true(y[tk * ldy + r] == -12345.0f);
        }
        free(a);
        free(ad);
    }
    free(wd);
    free(wdata);
    free(x);
    free(y);
}

static void test_matmul(void **state)
{
    (void)state;
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    uint64_t s = 999;
    static const int64_t toks[] = {1, 2, 5, 8, 9, 37};
    for (int isa = 0; isa < KERN_ISA_COUNT; isa++) {
        if (!kern_isa_supported((kern_isa_t)isa, &f)) {
            continue;
        }
        for (int nt = 1; nt <= 4; nt++) {
            kern_ctx_t *ctx = NULL;
            assert_int_equal(kern_ctx_create(nt, (kern_isa_t)isa, &ctx, NULL), TDM_OK);
            assert_int_equal(kern_ctx_isa(ctx), isa);
            for (size_t ti = 0; ti < ARRAY_LEN(weight_types); ti++) {
                const tdm_type_t t = weight_types[ti];
                const int64_t kb = tdm_type_traits(t)->blck >= 256 ? 256 : 64;
                /* shapes: tiny, odd row counts, a K of several blocks */
                check_matmul(ctx, t, kb, 1, toks[nt % 6], &s);
                check_matmul(ctx, t, kb * 2, 33, toks[(nt + 1) % 6], &s);
                check_matmul(ctx, t, kb * 3, 17, 37, &s);
                if (nt == 2 || nt == 4) {
                    for (size_t tk = 0; tk < ARRAY_LEN(toks); tk++) {
                        check_matmul(ctx, t, kb, 40, toks[tk], &s);
                    }
                }
            }
            kern_ctx_destroy(ctx);
        }
    }
}

/* The multi-token (prefill) kernels: kern_matmul with n_tok 2..37 (tails of every length
 * modulo the tile) on 1..4 threads, on every ISA that has a vec_dot_tile for the type,
 * against the scalar single-token vec_dot of the same quantized activations, within the
 * vec_dot test's tolerance (2x the rounding bound). */
static void test_matmul_tiles(void **state)
{
    (void)state;
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    uint64_t s = 31337;
    int n_checked = 0;
    for (int isa = 1; isa < KERN_ISA_COUNT; isa++) {
        if (!kern_isa_supported((kern_isa_t)isa, &f)) {
            continue;
        }
        for (size_t ti = 0; ti < ARRAY_LEN(weight_types); ti++) {
            const tdm_type_t t = weight_types[ti];
            if (kern_vec_dot_tile_get(t, (kern_isa_t)isa) == NULL) {
                continue;
            }
            const kern_type_cpu_t *tc = kern_type_cpu(t);
            const int64_t k = tdm_type_traits(t)->blck >= 256 ? 3 * 256 : 7 * 32;
            const int64_t n_rows = 37, n_tok_max = 37;
            const int64_t ldx = k + 1, ldy = n_rows + 3;
            const size_t row_bytes = tdm_type_row_size(t, k);
            void *wdata = random_weights(t, n_rows, k, &s);
            float *wd = dequant_alloc(t, wdata, k * n_rows);
            float *x = malloc((size_t)(n_tok_max * ldx) * sizeof(float));
            float *y = malloc((size_t)(n_tok_max * ldy) * sizeof(float));
            float *ref = malloc((size_t)(n_tok_max * n_rows) * sizeof(float));
            double *tol = malloc((size_t)(n_tok_max * n_rows) * sizeof(double));
            assert_true(x != NULL && y != NULL && ref != NULL && tol != NULL);
            for (int64_t i = 0; i < n_tok_max * ldx; i++) {
                x[i] = rng_normal(&s) * ((i % 89) == 0 ? 8.0f : 1.0f);
            }
            for (int64_t tk = 0; tk < n_tok_max; tk++) {
                void *a = quantize_act(tc->vec_dot_type, x + tk * ldx, k);
                float *ad = dequant_alloc(tc->vec_dot_type, a, k);
                for (int64_t r = 0; r < n_rows; r++) {
                    const uint8_t *row = (const uint8_t *)wdata + (size_t)r * row_bytes;
                    double exact, absdot;
                    ref_dot(t, row, wd + r * k, a, ad, k, &exact, &absdot);
                    ref[tk * n_rows + r] = tc->vec_dot[KERN_ISA_SCALAR](k, row, a);
                    tol[tk * n_rows + r] = 2.0 * rounding_bound(n_blocks_of(t, k), absdot);
                }
                free(a);
                free(ad);
            }
            const kern_weight_t w = {
                .type = t, .n_cols = k, .n_rows = n_rows, .row_bytes = row_bytes, .data = wdata};
            for (int nt = 1; nt <= 4; nt++) {
                kern_ctx_t *ctx = NULL;
                assert_int_equal(kern_ctx_create(nt, (kern_isa_t)isa, &ctx, NULL), TDM_OK);
                for (int64_t n_tok = 2; n_tok <= n_tok_max; n_tok++) {
                    for (int64_t i = 0; i < n_tok * ldy; i++) {
                        y[i] = -12345.0f;
                    }
                    assert_int_equal(kern_matmul(ctx, &w, x, ldx, n_tok, y, ldy, NULL), TDM_OK);
                    for (int64_t tk = 0; tk < n_tok; tk++) {
                        for (int64_t r = 0; r < n_rows; r++) {
                            const float got = y[tk * ldy + r], want = ref[tk * n_rows + r];
                            if (!(fabs((double)got - want) <= tol[tk * n_rows + r])) {
                                fail_msg("%s %s threads=%d n_tok=%lld: y[%lld,%lld] = %.9g, "
                                         "scalar vec_dot %.9g (tol %.3g)",
                                         tdm_type_name(t), kern_isa_name((kern_isa_t)isa), nt,
                                         (long long)n_tok, (long long)tk, (long long)r, got, want,
                                         tol[tk * n_rows + r]);
                            }
                        }
                        for (int64_t r = n_rows; r < ldy; r++) {
                            assert_true(y[tk * ldy + r] == -12345.0f);
                        }
                    }
                }
                kern_ctx_destroy(ctx);
            }
            n_checked++;
            free(wdata);
            free(wd);
            free(x);
            free(y);
            free(ref);
            free(tol);
        }
    }
    print_message("matmul tiles: %d (type, ISA) pairs checked\n", n_checked);
    if (kern_isa_supported(KERN_ISA_AVX2, &f)) {
        assert_true(n_checked >= 5); /* Q4_1, Q8_0, Q4_K, Q6_K, MXFP4 on AVX2 */
    }
    if (kern_isa_supported(KERN_ISA_NEON, &f)) {
        assert_true(n_checked >= 1); /* MXFP4 on NEON */
    }
}

typedef struct nested_mm {
    kern_ctx_t *ctx;
    kern_weight_t w;
    const float *x;
    float *y;
    atomic_int failures;
} nested_mm_t;

static void nested_mm_task(void *arg, int64_t begin, int64_t end, int thread_idx)
{
    nested_mm_t *m = arg;
    (void)thread_idx;
    for (int64_t i = begin; i < end; i++) {
        if (kern_matmul(m->ctx, &m->w, m->x + i * m->w.n_cols, m->w.n_cols, 1,
                        m->y + i * m->w.n_rows, m->w.n_rows, NULL) != TDM_OK) {
            atomic_fetch_add(&m->failures, 1);
        }
    }
}

/* kern_matmul called from inside a task (e.g. one matmul per expert) runs serially and
 * gives the same result as a top-level call. */
static void test_matmul_nested(void **state)
{
    (void)state;
    uint64_t s = 4242;
    kern_ctx_t *ctx = NULL;
    assert_int_equal(kern_ctx_create(3, KERN_ISA_COUNT, &ctx, NULL), TDM_OK);
    const int64_t k = 256, n = 24, n_tok = 6;
    void *wd = random_weights(TDM_TYPE_Q4_K, n, k, &s);
    nested_mm_t m = {.ctx = ctx,
                     .w = {TDM_TYPE_Q4_K, k, n, tdm_type_row_size(TDM_TYPE_Q4_K, k), wd}};
    float *x = malloc(n_tok * k * sizeof(float));
    float *y1 = malloc(n_tok * n * sizeof(float)), *y2 = malloc(n_tok * n * sizeof(float));
    for (int64_t i = 0; i < n_tok * k; i++) {
        x[i] = rng_normal(&s);
    }
    m.x = x;
    m.y = y1;
    kern_parallel_for(ctx, n_tok, 1, nested_mm_task, &m);
    assert_int_equal(atomic_load(&m.failures), 0);
    assert_int_equal(kern_matmul(ctx, &m.w, x, k, n_tok, y2, n, NULL), TDM_OK);
    assert_memory_equal(y1, y2, n_tok * n * sizeof(float));
    free(x);
    free(y1);
    free(y2);
    free(wd);
    kern_ctx_destroy(ctx);
}

/* The SIMD activation quantizers (kern_from_float_get) are bit-exact with the scalar
 * references, ties and degenerate blocks included. */
static void test_simd_quantizers_bit_exact(void **state)
{
    (void)state;
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    static const tdm_type_t act[] = {TDM_TYPE_Q8_0, TDM_TYPE_Q8_1, TDM_TYPE_Q8_K};
    uint64_t s = 777;
    const int64_t n = 4 * 256;
    float *x = malloc((size_t)n * sizeof(float));
    assert_non_null(x);
    for (int round = 0; round < 40; round++) {
        for (int64_t k = 0; k < n; k++) {
            x[k] = rng_normal(&s) * (round % 3 == 0 ? 1e-3f : 1.0f);
        }
        if (round % 4 == 1) { /* exact halves after scaling: amax 127 -> id 1 */
            for (int64_t k = 0; k < n; k++) {
                x[k] = (float)((int)(rng_uniform(&s) * 254.0f)) * 0.5f;
            }
            x[0] = 127.0f;
            x[256] = -127.0f;
            x[512] = 127.0f;
            x[513] = -127.0f; /* equal |max| of both signs: the first wins */
        }
        if (round % 5 == 2) { /* an all-zero block and a block of -0 */
            for (int64_t k = 0; k < 256; k++) {
                x[k] = 0.0f;
                x[256 + k] = -0.0f;
            }
        }
        for (size_t ai = 0; ai < ARRAY_LEN(act); ai++) {
            const size_t bytes = tdm_type_row_size(act[ai], n);
            uint8_t *want = malloc(bytes), *got = malloc(bytes);
            assert_true(want != NULL && got != NULL);
            kern_type_cpu(act[ai])->from_float(x, want, n);
            for (int isa = 1; isa < KERN_ISA_COUNT; isa++) {
                if (!kern_isa_supported((kern_isa_t)isa, &f)) {
                    continue;
                }
                memset(got, 0xA5, bytes);
                kern_from_float_get(act[ai], (kern_isa_t)isa)(x, got, n);
                if (memcmp(want, got, bytes) != 0) {
                    fail_msg("%s %s quantizer differs from the reference (round %d)",
                             tdm_type_name(act[ai]), kern_isa_name((kern_isa_t)isa), round);
                }
            }
            free(want);
            free(got);
        }
    }
    free(x);
}

/* The decode multi-row kernels and the prefill tiles: every row, read in groups of
 * 1..KERN_DOT_ROWS, and every token of a tile (1..KERN_DOT_TILE tokens, one or two rows)
 * is bit-identical to the ISA's vec_dot on that row and token (so a token's output does
 * not depend on how rows or tokens were grouped). Checked on every ISA and type that has
 * any of these kernels, with K a few blocks past a multiple of 4 blocks (MXFP4 reduces
 * blocks in fours) and K past the 1024 blocks up to which MXFP4's decode precomputes. */
static void test_dot_rows(void **state)
{
    (void)state;
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    uint64_t s = 4711;
    int n_checked = 0;
    for (int isa = 1; isa < KERN_ISA_COUNT; isa++) {
        if (!kern_isa_supported((kern_isa_t)isa, &f)) {
            continue;
        }
        for (size_t ti = 0; ti < ARRAY_LEN(weight_types); ti++) {
            const tdm_type_t t = weight_types[ti];
            const kern_vec_dot_rows_fn rows = kern_vec_dot_rows_get(t, (kern_isa_t)isa);
            const kern_vec_dot_tile_fn tile = kern_vec_dot_tile_get(t, (kern_isa_t)isa);
            const kern_vec_dot_tile2_fn tile2 = kern_vec_dot_tile2_get(t, (kern_isa_t)isa);
            const kern_vec_dot_tile4_fn tile4 = kern_vec_dot_tile4_get(t, (kern_isa_t)isa);
            if (rows == NULL && tile == NULL && tile2 == NULL && tile4 == NULL) {
                continue;
            }
            const kern_vec_dot_fn dot = kern_vec_dot_get(t, (kern_isa_t)isa);
            const kern_type_cpu_t *tc = kern_type_cpu(t);
            const int64_t ks[2] = {tdm_type_traits(t)->blck >= 256 ? 3 * 256 : 9 * 32,
                                   t == TDM_TYPE_MXFP4 ? 1027 * 32 : 0};
            for (int ki = 0; ki < 2 && ks[ki] > 0; ki++) {
                const int64_t k = ks[ki];
                const size_t rb = tdm_type_row_size(t, k);
                void *w = random_weights(t, KERN_DOT_ROWS, k, &s);
                float *x = malloc((size_t)k * sizeof(float));
                for (int64_t i = 0; i < k; i++) {
                    x[i] = rng_normal(&s);
                }
                void *a = quantize_act(tc->vec_dot_type, x, k);
                float want[KERN_DOT_ROWS];
                for (int r = 0; r < KERN_DOT_ROWS; r++) {
                    want[r] = dot(k, (const uint8_t *)w + (size_t)r * rb, a);
                }
                for (int nr = 1; rows != NULL && nr <= KERN_DOT_ROWS; nr++) {
                    float y[KERN_DOT_ROWS];
                    rows(k, w, rb, KERN_DOT_ROWS, nr, a, y);
                    assert_memory_equal(y, want, sizeof(want));
                    rows(k, w, rb, 1, nr, a, y); /* a single row */
                    assert_memory_equal(&y[0], &want[0], sizeof(float));
                }
                for (int r = 0; r < KERN_DOT_ROWS; r++) {
                    const uint8_t *row = (const uint8_t *)w + (size_t)r * rb;
                    /* the same token 1..4 times (stride 0): every copy equal */
                    for (int nt = 1; nt <= KERN_DOT_TILE; nt++) {
                        float yt[KERN_DOT_TILE], y2[2 * KERN_DOT_TILE];
                        if (tile != NULL) {
                            tile(k, row, a, 0, nt, yt, 1);
                            for (int tk = 0; tk < nt; tk++) {
                                assert_memory_equal(&yt[tk], &want[r], sizeof(float));
                            }
                        }
                        if (tile4 != NULL && r + 3 < KERN_DOT_ROWS) {
                            float y4[4 * KERN_DOT_TILE];
                            tile4(k, row, rb, a, 0, nt, y4, 4);
                            for (int tk = 0; tk < nt; tk++) {
                                assert_memory_equal(&y4[4 * tk], &want[r], 4 * sizeof(float));
                            }
                        }
                        if (tile2 != NULL && r + 1 < KERN_DOT_ROWS) {
                            tile2(k, row, rb, a, 0, nt, y2, 2);
                            for (int tk = 0; tk < nt; tk++) {
                                assert_memory_equal(&y2[2 * tk], &want[r], sizeof(float));
                                assert_memory_equal(&y2[2 * tk + 1], &want[r + 1], sizeof(float));
                            }
                        }
                    }
                }
                n_checked++;
                free(w);
                free(x);
                free(a);
            }
        }
    }
    print_message("dot rows and tiles: %d (type, ISA, K) cases checked\n", n_checked);
}

/* A row-lane Q4_K product (kern_gemm_fn) against the scalar vec_dot, within the rounding
 * bound, for 1..16 rows x 1..16 tokens (the one-token path and the multi-token one, rows
 * and tokens short of a full call, padded row and activation strides, K of 1, 3 and 11
 * super-blocks); every (row, token) bit-identical whatever the call's shape; and, when
 * `other` is given, bit-identical to it. */
static void check_gemm_q4_k(kern_gemm_fn gemm, kern_gemm_fn other, const char *name)
{
    uint64_t s = 2718;
    const tdm_type_t t = TDM_TYPE_Q4_K;
    static const int64_t ks[] = {256, 3 * 256, 11 * 256};
    enum { NR = KERN_GEMM_ROWS, NT = KERN_GEMM_TOK };
    for (size_t ki = 0; ki < ARRAY_LEN(ks); ki++) {
        const int64_t k = ks[ki];
        const size_t rb = tdm_type_row_size(t, k) + 16; /* rows need not be packed */
        const size_t qrb = tdm_type_row_size(TDM_TYPE_Q8_K, k);
        const size_t as = qrb + 8;
        uint8_t *w = calloc(NR, rb);
        uint8_t *a = calloc(NT, as);
        float *wd = malloc((size_t)(NR * k) * sizeof(float));
        float *x = malloc((size_t)k * sizeof(float));
        assert_true(w != NULL && a != NULL && wd != NULL && x != NULL);
        void *wq = random_weights(t, NR, k, &s);
        for (int r = 0; r < NR; r++) {
            memcpy(w + (size_t)r * rb, (const uint8_t *)wq + (size_t)r * (rb - 16), rb - 16);
            kern_to_float_q4_k(w + (size_t)r * rb, wd + r * k, k);
        }
        free(wq);
        float want[NT][NR];
        double tol[NT][NR];
        for (int tk = 0; tk < NT; tk++) {
            for (int64_t i = 0; i < k; i++) {
                x[i] = rng_normal(&s) * ((i % 61) == 0 ? 8.0f : 1.0f);
            }
            void *q = quantize_act(TDM_TYPE_Q8_K, x, k);
            memcpy(a + (size_t)tk * as, q, qrb);
            float *ad = dequant_alloc(TDM_TYPE_Q8_K, q, k);
            for (int r = 0; r < NR; r++) {
                const uint8_t *row = w + (size_t)r * rb;
                double exact, absdot;
                ref_dot(t, row, wd + r * k, q, ad, k, &exact, &absdot);
                want[tk][r] = kern_vec_dot_q4_k_ref(k, row, q);
                tol[tk][r] = 2.0 * rounding_bound(n_blocks_of(t, k), absdot);
            }
            free(q);
            free(ad);
        }
        float full[NT][NR + 3];
        gemm(k, w, rb, NR, a, as, NT, &full[0][0], NR + 3);
        for (int tk = 0; tk < NT; tk++) {
            for (int r = 0; r < NR; r++) {
                if (!(fabs((double)full[tk][r] - want[tk][r]) <= tol[tk][r])) {
                    fail_msg("%s Q4_K K=%lld y[%d,%d] = %.9g, scalar vec_dot %.9g (tol %.3g)", name,
                             (long long)k, tk, r, full[tk][r], want[tk][r], tol[tk][r]);
                }
            }
        }
        if (other != NULL) {
            float o[NT][NR + 3];
            other(k, w, rb, NR, a, as, NT, &o[0][0], NR + 3);
            for (int tk = 0; tk < NT; tk++) {
                assert_memory_equal(o[tk], full[tk], NR * sizeof(float));
            }
        }
        /* every sub-shape, from every first row and token: the same bits */
        for (int nr = 1; nr <= NR; nr++) {
            for (int nt = 1; nt <= NT; nt++) {
                const int r0 = (nr * 7 + nt) % (NR - nr + 1), t0 = (nt * 5 + nr) % (NT - nt + 1);
                float part[NT][NR];
                for (int tk = 0; tk < NT; tk++) {
                    for (int r = 0; r < NR; r++) {
                        part[tk][r] = -12345.0f;
                    }
                }
                gemm(k, w + (size_t)r0 * rb, rb, nr, a + (size_t)t0 * as, as, nt, &part[0][0], NR);
                for (int tk = 0; tk < NT; tk++) {
                    for (int r = 0; r < NR; r++) {
                        if (tk < nt && r < nr) {
                            assert_memory_equal(&part[tk][r], &full[t0 + tk][r0 + r],
                                                sizeof(float));
                        } else {
                            assert_true(part[tk][r] == -12345.0f); /* nothing else written */
                        }
                    }
                }
            }
        }
        free(w);
        free(a);
        free(wd);
        free(x);
    }
}

/* The AVX-512 VNNI Q4_K product (kern_gemm_q4_k_avx512, what an AVX-512 context without
 * AMX runs every Q4_K product through) and the AMX one (kern_gemm_q4_k_amx, where the CPU
 * has AMX-INT8 and the kernel grants the tile state) by check_gemm_q4_k, and the two
 * bit-identical. A context at the AVX-512 level uses one of them, so test_matmul_tiles
 * and test_matmul_batch_invariance cover them through kern_matmul too. */
static void test_gemm_q4_k(void **state)
{
    (void)state;
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    if (!kern_isa_supported(KERN_ISA_AVX512, &f)) {
        print_message("AVX-512: not available here, Q4_K products skipped\n");
        return;
    }
    const kern_gemm_fn g512 = kern_gemm_get(TDM_TYPE_Q4_K, KERN_ISA_AVX512, 0);
    assert_non_null(g512);
    assert_null(kern_gemm_get(TDM_TYPE_Q6_K, KERN_ISA_AVX512, 0));
    assert_null(kern_gemm_get(TDM_TYPE_Q4_K, KERN_ISA_AVX2, 0));
    check_gemm_q4_k(g512, NULL, "AVX-512");
#if !defined(KERN_HAVE_AMX)
    print_message("AMX: not built, skipped\n");
#else
    const kern_gemm_fn gemm = kern_gemm_amx_get(TDM_TYPE_Q4_K);
    if (gemm == NULL || !f.amx_int8 || !kern_amx_request()) {
        print_message("AMX: not built or not available here, skipped\n");
        return;
    }
    const char *env = getenv("TANDEM_CPU_AMX");
    kern_ctx_t *ctx = NULL;
    assert_int_equal(kern_ctx_create(1, KERN_ISA_AVX512, &ctx, NULL), TDM_OK);
    assert_int_equal(kern_ctx_amx(ctx), env == NULL || strcmp(env, "0") != 0);
    kern_ctx_destroy(ctx);
    assert_null(kern_gemm_amx_get(TDM_TYPE_Q6_K));
    check_gemm_q4_k(gemm, g512, "AMX");
#endif
}

/* Batch invariance at the kern_matmul level: each token's outputs of a prefill batch
 * (n_tok 2..37: tiles, tile2 row pairs, tails) on 1..3 threads are bit-identical to
 * the same token decoded alone (n_tok 1: the row kernels or vec_dot), for every weight
 * type on every ISA, with short rows (decode reads them in pairs) and long ones. */
static void test_matmul_batch_invariance(void **state)
{
    (void)state;
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    uint64_t s = 8080;
    static const int64_t toks[] = {2, 5, 37};
    for (int isa = 0; isa < KERN_ISA_COUNT; isa++) {
        if (!kern_isa_supported((kern_isa_t)isa, &f)) {
            continue;
        }
        kern_ctx_t *ctx[3];
        for (int nt = 1; nt <= 3; nt++) {
            assert_int_equal(kern_ctx_create(nt, (kern_isa_t)isa, &ctx[nt - 1], NULL), TDM_OK);
        }
        for (size_t ti = 0; ti < ARRAY_LEN(weight_types); ti++) {
            const tdm_type_t t = weight_types[ti];
            const int big = tdm_type_traits(t)->blck >= 256;
            const int64_t ks[2] = {big ? 2 * 256 : 11 * 32, big ? 5 * 256 : 35 * 32};
            for (int ki = 0; ki < 2; ki++) {
                const int64_t k = ks[ki], n_rows = 37, n_tok_max = 37;
                const kern_weight_t w = {.type = t,
                                         .n_cols = k,
                                         .n_rows = n_rows,
                                         .row_bytes = tdm_type_row_size(t, k),
                                         .data = random_weights(t, n_rows, k, &s)};
                float *x = malloc((size_t)(n_tok_max * k) * sizeof(float));
                float *y1 = malloc((size_t)(n_tok_max * n_rows) * sizeof(float));
                float *yb = malloc((size_t)(n_tok_max * n_rows) * sizeof(float));
                assert_true(x != NULL && y1 != NULL && yb != NULL);
                for (int64_t i = 0; i < n_tok_max * k; i++) {
                    x[i] = rng_normal(&s);
                }
                for (int64_t tk = 0; tk < n_tok_max; tk++) { /* each token alone */
                    assert_int_equal(kern_matmul(ctx[tk % 3], &w, x + tk * k, k, 1,
                                                 y1 + tk * n_rows, n_rows, NULL),
                                     TDM_OK);
                }
                for (size_t bi = 0; bi < ARRAY_LEN(toks); bi++) {
                    for (int nt = 0; nt < 3; nt++) {
                        const int64_t n_tok = toks[bi];
                        assert_int_equal(kern_matmul(ctx[nt], &w, x, k, n_tok, yb, n_rows, NULL),
                                         TDM_OK);
                        if (memcmp(yb, y1, (size_t)(n_tok * n_rows) * sizeof(float)) != 0) {
                            fail_msg("%s %s K=%lld n_tok=%lld threads=%d: a batch differs from "
                                     "its tokens alone",
                                     tdm_type_name(t), kern_isa_name((kern_isa_t)isa), (long long)k,
                                     (long long)n_tok, nt + 1);
                        }
                    }
                }
                free((void *)w.data);
                free(x);
                free(y1);
                free(yb);
            }
        }
        for (int nt = 0; nt < 3; nt++) {
            kern_ctx_destroy(ctx[nt]);
        }
    }
}

/* MXFP4 scale bytes over their whole range (the SIMD kernels read E8M0 through their own
 * tables): for every e, two rows of 5 blocks all with that e (a group of four and a
 * tail), every ISA's vec_dot and decode rows against the scalar vec_dot. The activations
 * are scaled so that the products stay normal and finite (2^127 * 12 * x at e = 255,
 * 2^-128 * dy at e = 0). */
static void test_mxfp4_scale_range(void **state)
{
    (void)state;
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    uint64_t s = 2718;
    const int nb = 5;
    const int64_t k = (int64_t)nb * 32;
    const size_t rb = tdm_type_row_size(TDM_TYPE_MXFP4, k);
    float *x = malloc((size_t)k * sizeof(float));
    assert_non_null(x);
    for (int e = 0; e < 256; e++) {
        kern_block_mxfp4 *w = random_weights(TDM_TYPE_MXFP4, 2, k, &s);
        for (int b = 0; b < 2 * nb; b++) {
            w[b].e = (uint8_t)e;
        }
        const float xscale = e >= 200 ? 1e-4f : e < 40 ? 100.0f : 1.0f;
        for (int64_t i = 0; i < k; i++) {
            x[i] = rng_normal(&s) * xscale;
        }
        void *a = quantize_act(TDM_TYPE_Q8_0, x, k);
        float *ad = dequant_alloc(TDM_TYPE_Q8_0, a, k);
        for (int r = 0; r < 2; r++) {
            const kern_block_mxfp4 *row = w + r * nb;
            /* in double: the f32 dequantization of the weights would overflow */
            double exact = 0.0, absdot = 0.0;
            for (int64_t i = 0; i < k; i++) {
                const kern_block_mxfp4 *b = &row[i / 32];
                const int j = (int)(i % 32);
                const int code = j < 16 ? b->qs[j] & 0xF : b->qs[j - 16] >> 4;
                const double term = ldexp(kern_mxfp4_values[code], e - 128) * ad[i];
                exact += term;
                absdot += fabs(term);
            }
            /* no absolute floor (rounding_bound's 1e-30 would hide the e < 27 rows) */
            const double tol = 2.0 * (double)(nb + 4) * 0x1p-23 * absdot;
            const float ref = kern_vec_dot_mxfp4_ref(k, row, a);
            if (!(isfinite(ref) && fabs((double)ref - exact) <= tol)) {
                fail_msg("MXFP4 e=%d: scalar vec_dot %.9g, exact %.9g (tol %.3g)", e, ref, exact,
                         tol);
            }
            for (int isa = 1; isa < KERN_ISA_COUNT; isa++) {
                if (!kern_isa_supported((kern_isa_t)isa, &f)) {
                    continue;
                }
                const float got = kern_vec_dot_get(TDM_TYPE_MXFP4, (kern_isa_t)isa)(k, row, a);
                if (!(fabs((double)got - ref) <= tol)) {
                    fail_msg("MXFP4 e=%d %s: vec_dot %.9g, scalar %.9g (tol %.3g)", e,
                             kern_isa_name((kern_isa_t)isa), got, ref, tol);
                }
                const kern_vec_dot_rows_fn rows =
                    kern_vec_dot_rows_get(TDM_TYPE_MXFP4, (kern_isa_t)isa);
                if (rows != NULL) { /* both rows at once: decode's precomputed path */
                    float y2[2];
                    rows(k, w, rb, 2, 1, a, y2);
                    assert_memory_equal(&y2[r], &got, sizeof(float));
                }
            }
        }
        free(w);
        free(a);
        free(ad);
    }
    free(x);
}

/* kern_matmul_batch gives bit-identical results to separate kern_matmul calls: weights
 * sharing the activations (Q4_K + Q6_K + Q4_K: one conversion), mixed formats (Q4_1 +
 * Q8_0 + Q4_1) and a product with its own input, decode and prefill, 1..3 threads. */
static void test_matmul_batch(void **state)
{
    (void)state;
    uint64_t s = 2024;
    static const tdm_type_t sets[2][3] = {{TDM_TYPE_Q4_K, TDM_TYPE_Q6_K, TDM_TYPE_Q4_K},
                                          {TDM_TYPE_Q4_1, TDM_TYPE_Q8_0, TDM_TYPE_Q4_1}};
    static const int64_t rows[3] = {37, 16, 5};
    static const int64_t toks[] = {1, 2, 7, 19};
    for (int nt = 1; nt <= 3; nt++) {
        kern_ctx_t *ctx = NULL;
        assert_int_equal(kern_ctx_create(nt, KERN_ISA_COUNT, &ctx, NULL), TDM_OK);
        for (int si = 0; si < 2; si++) {
            const int64_t k = 512;
            kern_weight_t w[3];
            const kern_weight_t *wp[3];
            void *data[3];
            for (int i = 0; i < 3; i++) {
                data[i] = random_weights(sets[si][i], rows[i], k, &s);
                w[i] = (kern_weight_t){sets[si][i], k, rows[i], tdm_type_row_size(sets[si][i], k),
                                       data[i]};
                wp[i] = &w[i];
            }
            for (size_t ti = 0; ti < ARRAY_LEN(toks); ti++) {
                const int64_t n_tok = toks[ti];
                float *x = malloc((size_t)((n_tok + 1) * k) * sizeof(float));
                for (int64_t i = 0; i < (n_tok + 1) * k; i++) {
                    x[i] = rng_normal(&s);
                }
                /* products 0 and 1 share x; product 2 reads its own (x one row on) */
                float *y1[3], *y2[3];
                int64_t ld[3];
                kern_matmul_op_t ops[3];
                for (int i = 0; i < 3; i++) {
                    const float *xi = i == 2 ? x + k : x;
                    ld[i] = rows[i] + 1;
                    y1[i] = calloc((size_t)(n_tok * ld[i]), sizeof(float));
                    y2[i] = calloc((size_t)(n_tok * ld[i]), sizeof(float));
                    assert_int_equal(kern_matmul(ctx, &w[i], xi, k, n_tok, y1[i], ld[i], NULL),
                                     TDM_OK);
                    ops[i] = (kern_matmul_op_t){wp[i], xi, k, y2[i], ld[i]};
                }
                assert_int_equal(kern_matmul_batch(ctx, 3, ops, n_tok, NULL), TDM_OK);
                for (int i = 0; i < 3; i++) {
                    assert_memory_equal(y1[i], y2[i], (size_t)(n_tok * ld[i]) * sizeof(float));
                    free(y1[i]);
                    free(y2[i]);
                }
                free(x);
            }
            for (int i = 0; i < 3; i++) {
                free(data[i]);
            }
        }
        kern_ctx_destroy(ctx);
    }
}

static void test_errors(void **state)
{
    (void)state;
    kern_ctx_t *ctx = NULL;
    assert_int_equal(kern_ctx_create(1, KERN_ISA_COUNT, &ctx, NULL), TDM_OK);
    uint8_t buf[1024] = {0};
    float x[512] = {0}, y[8];
    tdm_error_t err = {0};
    kern_weight_t w = {TDM_TYPE_IQ2_XXS, 256, 1, 66, buf};
    assert_int_equal(kern_matmul(ctx, &w, x, 256, 1, y, 1, &err), TDM_ERR_UNSUPPORTED);
    assert_false(kern_type_supported(TDM_TYPE_IQ2_XXS));
    assert_true(kern_type_supported(TDM_TYPE_Q4_K));
    w = (kern_weight_t){TDM_TYPE_Q4_0, 48, 1, 36, buf};
    tdm_error_clear(&err);
    assert_int_equal(kern_matmul(ctx, &w, x, 48, 1, y, 1, &err), TDM_ERR_INVALID_PARAM);
    w = (kern_weight_t){TDM_TYPE_Q4_0, 64, 1, 10, buf}; /* row_bytes too small */
    assert_int_equal(kern_matmul(ctx, &w, x, 64, 1, y, 1, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(kern_dequantize(TDM_TYPE_Q4_K, buf, x, 100, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(kern_quantize(TDM_TYPE_IQ4_XS, x, buf, 1, 256, NULL), TDM_ERR_UNSUPPORTED);
    assert_int_equal(kern_quantize(TDM_TYPE_Q2_K, x, buf, 1, 256, NULL), TDM_ERR_UNSUPPORTED);
    kern_ctx_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_roundtrip),
        cmocka_unit_test(test_dequant_bit_exact),
        cmocka_unit_test(test_quantize_bit_exact),
        cmocka_unit_test(test_kquant_quality),
        cmocka_unit_test(test_activation_formats),
        cmocka_unit_test(test_simd_tables_complete),
        cmocka_unit_test(test_simd_multi_kernels_complete),
        cmocka_unit_test(test_vec_dot),
        cmocka_unit_test(test_parallel_for),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_tiles),
        cmocka_unit_test(test_matmul_nested),
        cmocka_unit_test(test_simd_quantizers_bit_exact),
        cmocka_unit_test(test_dot_rows),
        cmocka_unit_test(test_gemm_q4_k),
        cmocka_unit_test(test_matmul_batch_invariance),
        cmocka_unit_test(test_mxfp4_scale_range),
        cmocka_unit_test(test_matmul_batch),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
