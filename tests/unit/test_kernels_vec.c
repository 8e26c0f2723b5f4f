/* test_kernels_vec.c - every compiled-and-supported SIMD level of the f32 vector
 * primitives against the scalar reference, over lengths that hit every tail path. */
#include "common/cpu_features.h"
#include "kernels/cpu/vec.h"
#include "kernels/kern_ops.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

static float frand(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

static void test_every_isa_matches_reference(void **state)
{
    (void)state;
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    int tested = 0;
    for (int isa = 0; isa < KERN_ISA_COUNT; isa++) {
        if (!kern_isa_supported((kern_isa_t)isa, &f)) {
            continue;
        }
        const kern_vec_ops_t *ops = kern_vec_ops_get((kern_isa_t)isa);
        assert_non_null(ops);
        assert_int_equal(ops->isa, isa);
        tested++;
        uint32_t seed = 1234u + (uint32_t)isa;
        for (size_t n = 0; n <= 300; n += (n < 40 ? 1 : 37)) {
            float *x = malloc((n + 1) * sizeof(float)), *y = malloc((n + 1) * sizeof(float));
            float *y2 = malloc((n + 1) * sizeof(float));
            double mag = 0.0;
            for (size_t i = 0; i < n; i++) {
                x[i] = frand(&seed);
                y[i] = y2[i] = frand(&seed);
                mag += fabs((double)x[i] * y[i]);
            }
            float ref = kern_dot_f32_ref(x, y, n);
            float got = ops->dot_f32(x, y, n);
            /* summation order differs: bound by n * eps * sum|x*y| */
            assert_true(fabs((double)got - ref) <= 1e-6 * (double)(n + 1) * (mag + 1e-30) + 1e-7);

            kern_axpy_f32_ref(y, 0.75f, x, n);
            ops->axpy_f32(y2, 0.75f, x, n);
            for (size_t i = 0; i < n; i++) {
                assert_true(fabsf(y[i] - y2[i]) <= 1e-6f * (fabsf(y[i]) + 1.0f));
            }
            free(x);
            free(y);
            free(y2);
        }
    }
    assert_true(tested >= 1);
    /* the scalar table always exists; unknown levels have none */
    assert_non_null(kern_vec_ops_get(KERN_ISA_SCALAR));
    assert_null(kern_vec_ops_get(KERN_ISA_COUNT));
}

/* The small f32 product against a double-precision oracle (the reference too): shapes that
 * hit every tile edge (rows not a multiple of 4, columns not of 8 / 16 / 32), leading
 * dimensions wider than the rows, and c accumulated into (not overwritten). */
static void test_gemm_every_isa(void **state)
{
    (void)state;
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    static const size_t shapes[][3] = {{1, 1, 1},   {3, 7, 5},    {4, 16, 1},     {5, 33, 9},
                                       {8, 40, 64}, {13, 47, 17}, {64, 128, 128}, {128, 128, 64},
                                       {2, 0, 3},   {0, 5, 2},    {6, 9, 0}};
    int tested = 0;
    for (int isa = -1; isa < KERN_ISA_COUNT; isa++) {
        const kern_vec_ops_t *ops = NULL;
        if (isa >= 0) {
            if (!kern_isa_supported((kern_isa_t)isa, &f)) {
                continue;
            }
            ops = kern_vec_ops_get((kern_isa_t)isa);
            assert_non_null(ops->gemm_f32);
            tested++;
        }
        uint32_t seed = 99u + (uint32_t)(isa + 1);
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
            const size_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
            const size_t lda = k + 3, ldb = n + 5, ldc = n + 2;
            float *a = malloc((m * lda + 1) * sizeof(float));
            float *b = malloc((k * ldb + 1) * sizeof(float));
            float *c = malloc((m * ldc + 1) * sizeof(float));
            double *want = malloc((m * ldc + 1) * sizeof(double));
            for (size_t i = 0; i < m * lda; i++) {
                a[i] = frand(&seed);
            }
            for (size_t i = 0; i < k * ldb; i++) {
                b[i] = frand(&seed);
            }
            for (size_t i = 0; i < m * ldc; i++) {
                c[i] = frand(&seed);
                want[i] = c[i];
            }
            for (size_t i = 0; i < m; i++) {
                for (size_t j = 0; j < n; j++) {
                    double acc = want[i * ldc + j];
                    for (size_t p = 0; p < k; p++) {
                        acc += (double)a[i * lda + p] * b[p * ldb + j];
                    }
                    want[i * ldc + j] = acc;
                }
            }
            if (isa < 0) {
                kern_gemm_f32_ref(c, ldc, a, lda, b, ldb, m, n, k);
            } else {
                ops->gemm_f32(c, ldc, a, lda, b, ldb, m, n, k);
            }
            for (size_t i = 0; i < m; i++) {
                for (size_t j = 0; j < ldc; j++) {
                    /* past column n: the padding, untouched */
                    const double e = fabs(c[i * ldc + j] - want[i * ldc + j]);
                    if (e > 1e-6 * (double)(k + 1) * 2.0) {
                        fail_msg("isa %d shape %zux%zux%zu: c[%zu][%zu] = %g, want %g", isa, m, n,
                                 k, i, j, (double)c[i * ldc + j], want[i * ldc + j]);
                    }
                }
            }
            free(a);
            free(b);
            free(c);
            free(want);
        }
    }
    assert_true(tested >= 1);
}

static void test_isa_choice_respects_cap(void **state)
{
    (void)state;
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    kern_isa_t best = kern_cpu_isa_best(&f);
    assert_true(kern_isa_supported(best, &f));
    setenv("TANDEM_CPU_ISA", "scalar", 1);
    assert_int_equal(kern_cpu_isa_best(&f), KERN_ISA_SCALAR);
    unsetenv("TANDEM_CPU_ISA");
    /* a CPU with no features gets the scalar path */
    tdm_cpu_features_t none = {0};
    assert_int_equal(kern_cpu_isa_best(&none), KERN_ISA_SCALAR);
}

static void test_rms_norm_reference(void **state)
{
    (void)state;
    /* x = [3, 4]: mean(x^2) = 12.5, y = x / sqrt(12.5 + eps) * w */
    float x[2] = {3.0f, 4.0f}, w[2] = {1.0f, 2.0f}, y[2];
    kern_rms_norm_f32_ref(y, x, w, 1, 2, 0.0f);
    assert_true(fabsf(y[0] - 3.0f / sqrtf(12.5f)) < 1e-6f);
    assert_true(fabsf(y[1] - 8.0f / sqrtf(12.5f)) < 1e-6f);
}

/* kern_op_attn_head_f32 on every ISA against the scalar reference: paged keys in
 * shuffled blocks, n_keys that end mid-block, several head sizes; and the SIMD SwiGLU. */
static void test_attention_and_silu(void **state)
{
    (void)state;
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    uint32_t seed = 99u;
    static const int hds[] = {64, 128, 80, 8, 12};
    static const int32_t nks[] = {1, 3, 4, 5, 16, 17, 63, 200};
    const int B = 16, n_blocks = 16, n_kv = 2;
    for (size_t hi = 0; hi < sizeof(hds) / sizeof(hds[0]); hi++) {
        const int hd = hds[hi];
        const size_t stride = (size_t)n_kv * B * hd;
        float *k = malloc(stride * n_blocks * sizeof(float));
        float *v = malloc(stride * n_blocks * sizeof(float));
        float *q = malloc((size_t)hd * sizeof(float));
        float *o_ref = malloc((size_t)hd * sizeof(float)), *o = malloc((size_t)hd * sizeof(float));
        float *sc = malloc(256 * sizeof(float));
        for (size_t i = 0; i < stride * n_blocks; i++) {
            k[i] = frand(&seed);
            v[i] = frand(&seed);
        }
        for (int i = 0; i < hd; i++) {
            q[i] = 3.0f * frand(&seed);
        }
        int32_t blocks[16];
        for (int i = 0; i < n_blocks; i++) {
            blocks[i] = (i * 7 + 3) % n_blocks;
        }
        /* spans: all keys, a window starting mid-block, and a window with a sink */
        for (size_t ni = 0; ni < sizeof(nks) / sizeof(nks[0]); ni++) {
            for (int variant = 0; variant < 3; variant++) {
                const int32_t nk = nks[ni];
                const int32_t lo = variant == 0 ? 0 : (nk > 5 ? nk - 5 : 0);
                const kern_attn_span_t sp = {lo, nk, 0.125f, variant == 2 ? 0.7f : -INFINITY};
                const float *kh = k + (size_t)B * hd, *vh = v + (size_t)B * hd; /* kv head 1 */
                kern_op_attn_head_f32_ref(o_ref, q, kh, vh, blocks, stride, B, hd, &sp, sc);
                /* an independent double-precision evaluation of the span's formula */
                double z[256], mx = sp.sink, den = 0.0;
                for (int32_t j = lo; j < nk; j++) {
                    const float *kr = kh + (size_t)blocks[j / B] * stride + (size_t)(j % B) * hd;
                    double d = 0.0;
                    for (int c = 0; c < hd; c++) {
                        d += (double)q[c] * kr[c];
                    }
                    z[j] = d * 0.125;
                    mx = z[j] > mx ? z[j] : mx;
                }
                for (int32_t j = lo; j < nk; j++) {
                    den += exp(z[j] - mx);
                }
                den += variant == 2 ? exp(0.7 - mx) : 0.0;
                for (int c = 0; c < hd; c++) {
                    double want = 0.0;
                    for (int32_t j = lo; j < nk; j++) {
                        want += exp(z[j] - mx) / den *
                                vh[(size_t)blocks[j / B] * stride + (size_t)(j % B) * hd + c];
                    }
                    if (!(fabs(o_ref[c] - want) <= 1e-5 * (fabs(want) + 1.0))) {
                        fail_msg("attention ref hd=%d keys [%d, %d) sink %d: out[%d] = %.9g, "
                                 "double %.9g",
                                 hd, lo, nk, variant == 2, c, o_ref[c], want);
                    }
                }
                for (int isa = 0; isa < KERN_ISA_COUNT; isa++) {
                    if (!kern_isa_supported((kern_isa_t)isa, &f)) {
                        continue;
                    }
                    kern_op_attn_head_f32((kern_isa_t)isa, o, q, kh, vh, blocks, stride, B, hd, &sp,
                                          sc);
                    for (int c = 0; c < hd; c++) {
                        if (!(fabsf(o[c] - o_ref[c]) <= 2e-6f * (fabsf(o_ref[c]) + 1.0f))) {
                            fail_msg("attention %s hd=%d keys [%d, %d): out[%d] = %.9g, ref %.9g",
                                     kern_isa_name((kern_isa_t)isa), hd, lo, nk, c, o[c], o_ref[c]);
                        }
                    }
                }
            }
        }
        free(k);
        free(v);
        free(q);
        free(o_ref);
        free(o);
        free(sc);
    }
    enum { N = 203 };
    float g[N], u[N], want[N], got[N];
    for (int i = 0; i < N; i++) {
        g[i] = 12.0f * frand(&seed);
        u[i] = frand(&seed);
    }
    g[0] = -100.0f;
    g[1] = 100.0f;
    g[2] = 0.0f;
    kern_op_silu_mul_f32(want, g, u, N);
    for (int isa = 0; isa < KERN_ISA_COUNT; isa++) {
        if (!kern_isa_supported((kern_isa_t)isa, &f)) {
            continue;
        }
        kern_op_silu_mul_f32_isa((kern_isa_t)isa, got, g, u, N);
        for (int i = 0; i < N; i++) {
            assert_true(fabsf(got[i] - want[i]) <= 1e-6f * fabsf(want[i]) + 1e-30f);
        }
    }
}

/* kern_op_attn_tile: every row bit-identical to the one-row kernel of its cache type on
 * that row alone, at every ISA, for f32, f16 and q8_0 caches; tiles of 1 to 40 rows (past
 * the inner tile of 32), rows of consecutive positions (a prompt chunk), several heads of
 * one position (a GQA group), windows that start mid-block and differ per row, sinks, and a
 * block table whose blocks before every row's window are gone (-1). */
static void test_attention_tile(void **state)
{
    (void)state;
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    uint32_t seed = 99u;
    static const int hds[] = {64, 128, 32, 12};
    static const tdm_type_t types[] = {TDM_TYPE_F32, TDM_TYPE_F16, TDM_TYPE_Q8_0};
    const int B = 16, n_blocks = 24;
    for (size_t hi = 0; hi < sizeof(hds) / sizeof(hds[0]); hi++) {
        const int hd = hds[hi];
        for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
            const tdm_type_t type = types[ti];
            if (type == TDM_TYPE_Q8_0 && hd % 32 != 0) {
                continue;
            }
            const size_t row_bytes = type == TDM_TYPE_F32   ? (size_t)hd * 4
                                     : type == TDM_TYPE_F16 ? (size_t)hd * 2
                                                            : (size_t)hd / 32 * 34;
            const size_t block_bytes = (size_t)B * row_bytes;
            unsigned char *k = malloc(block_bytes * n_blocks), *v = malloc(block_bytes * n_blocks);
            float *tmp = malloc((size_t)hd * sizeof(float));
            for (int r = 0; r < B * n_blocks; r++) {
                for (int c = 0; c < hd; c++) {
                    tmp[c] = frand(&seed);
                }
                kern_op_kv_row_store(type, k + (size_t)r * row_bytes, tmp, hd);
                for (int c = 0; c < hd; c++) {
                    tmp[c] = frand(&seed);
                }
                kern_op_kv_row_store(type, v + (size_t)r * row_bytes, tmp, hd);
            }
            const int max_rows = 40, n_ctx = B * n_blocks;
            float *q = malloc((size_t)max_rows * hd * sizeof(float));
            float *o = malloc((size_t)max_rows * hd * sizeof(float)), *o1 = malloc((size_t)hd * 4);
            float *sc = malloc((size_t)max_rows * n_ctx * sizeof(float));
            float *acc = malloc((size_t)32 * hd * sizeof(float));
            float *conv = malloc((size_t)KERN_ATTN_CONV_ROWS * hd * sizeof(float));
            float *row = malloc((size_t)hd * sizeof(float));
            for (int i = 0; i < max_rows * hd; i++) {
                q[i] = 3.0f * frand(&seed);
            }
            for (int variant = 0; variant < 4; variant++) {
                /* 0: a prompt chunk, 1: a GQA group of heads at one position,
                 * 2: a chunk under a window of 37 with sinks, 3: 40 rows, window 20 */
                const int n_rows = variant == 0 ? 23 : variant == 1 ? 8 : variant == 2 ? 17 : 40;
                const int32_t window = variant == 2 ? 37 : variant == 3 ? 20 : 0;
                const int32_t p0 = variant == 1 ? 301 : 250 + variant * 7;
                int32_t blocks[24];
                for (int i = 0; i < n_blocks; i++) {
                    blocks[i] = (i * 7 + 3) % n_blocks;
                }
                kern_attn_row_t rows[40];
                for (int r = 0; r < n_rows; r++) {
                    const int32_t pos = variant == 1 ? p0 : p0 + r;
                    rows[r].q = q + (size_t)r * hd;
                    rows[r].out = o + (size_t)r * hd;
                    rows[r].sp.lo = window > 0 && pos >= window ? pos - window + 1 : 0;
                    rows[r].sp.hi = pos + 1;
                    rows[r].sp.scale = 0.125f;
                    rows[r].sp.sink = variant == 2 ? 0.3f * (float)(r % 3) : -INFINITY;
                }
                if (window > 0) {
                    for (int b = 0; b < rows[0].sp.lo / B; b++) {
                        blocks[b] = -1; /* out of every row's window: never read */
                    }
                }
                for (int isa = 0; isa < KERN_ISA_COUNT; isa++) {
                    if (!kern_isa_supported((kern_isa_t)isa, &f)) {
                        continue;
                    }
                    kern_op_attn_tile((kern_isa_t)isa, type, rows, n_rows, k, v, blocks,
                                      block_bytes, B, row_bytes, hd, sc, (size_t)n_ctx, acc, conv);
                    for (int r = 0; r < n_rows; r++) {
                        if (type == TDM_TYPE_F32) {
                            kern_op_attn_head_f32((kern_isa_t)isa, o1, rows[r].q, (const float *)k,
                                                  (const float *)v, blocks, block_bytes / 4, B, hd,
                                                  &rows[r].sp, sc);
                        } else {
                            kern_op_attn_head_kv((kern_isa_t)isa, type, o1, rows[r].q, k, v, blocks,
                                                 block_bytes, B, row_bytes, hd, &rows[r].sp, sc,
                                                 row);
                        }
                        for (int c = 0; c < hd; c++) {
                            if (o1[c] != rows[r].out[c]) {
                                fail_msg("attention tile %s type %d hd %d variant %d row %d/%d: "
                                         "out[%d] = %.9g, alone %.9g",
                                         kern_isa_name((kern_isa_t)isa), (int)type, hd, variant, r,
                                         n_rows, c, rows[r].out[c], o1[c]);
                            }
                        }
                    }
                }
            }
            free(k);
            free(v);
            free(tmp);
            free(q);
            free(o);
            free(o1);
            free(sc);
            free(acc);
            free(conv);
            free(row);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_isa_matches_reference),
        cmocka_unit_test(test_gemm_every_isa),
        cmocka_unit_test(test_attention_and_silu),
        cmocka_unit_test(test_attention_tile),
        cmocka_unit_test(test_isa_choice_respects_cap),
        cmocka_unit_test(test_rms_norm_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
