/* test_shard_ops.c - the forward pass's f32 ops (kernels/kern_ops.h) against
 * straightforward double-precision references, and MoE routing (top-k ties, weights). */
#include "kernels/kern_ops.h"
#include "shard/shd_internal.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static double drand_(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (double)((*s >> 8) & 0xFFFF) / 32768.0 - 1.0;
}

static void test_rms_norm(void **state)
{
    (void)state;
    enum { R = 3, C = 37 };
    uint32_t seed = 7;
    float x[R * 40], w[C], y[R * 40];
    for (int i = 0; i < R * 40; i++) {
        x[i] = (float)(3.0 * drand_(&seed));
    }
    for (int c = 0; c < C; c++) {
        w[c] = (float)(1.0 + drand_(&seed));
    }
    kern_op_rms_norm_f32(y, 40, x, 40, w, R, C, 1e-5f);
    for (int r = 0; r < R; r++) {
        double ss = 0;
        for (int c = 0; c < C; c++) {
            ss += (double)x[r * 40 + c] * x[r * 40 + c];
        }
        double inv = 1.0 / sqrt(ss / C + 1e-5);
        for (int c = 0; c < C; c++) {
            double ref = x[r * 40 + c] * inv * w[c];
            assert_true(fabs(y[r * 40 + c] - ref) <= 1e-6 * (fabs(ref) + 1e-3));
        }
    }
    /* in place, no weight */
    float z[4] = {1, 2, 3, 4};
    kern_op_rms_norm_f32(z, 4, z, 4, NULL, 1, 4, 0.0f);
    assert_true(fabs(z[3] - 4.0 / sqrt(7.5)) < 1e-6);
}

static void test_softmax(void **state)
{
    (void)state;
    float x[5] = {1000.0f, 999.0f, -5.0f, 1000.0f, 0.5f}; /* large values: needs max shift */
    double ref[5], sum = 0;
    for (int i = 0; i < 5; i++) {
        ref[i] = exp((double)x[i] - 1000.0);
        sum += ref[i];
    }
    kern_op_softmax_f32(x, 5);
    for (int i = 0; i < 5; i++) {
        assert_true(fabs(x[i] - ref[i] / sum) < 1e-7);
    }
}

/* Reference rope for one head, written as HF does it: NEOX = x*cos + rotate_half(x)*sin;
 * NORM = complex multiplication of adjacent pairs. theta_fn gives each pair's angle. */
static void ref_rope(double *out, const float *x, int hd, int n_rot, int neox, const double *theta,
                     double mscale)
{
    for (int d = 0; d < hd; d++) {
        out[d] = x[d];
    }
    const int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        double c = cos(theta[i]) * mscale, s = sin(theta[i]) * mscale;
        if (neox) {
            out[i] = x[i] * c - x[i + half] * s;
            out[i + half] = x[i + half] * c + x[i] * s;
        } else {
            out[2 * i] = x[2 * i] * c - x[2 * i + 1] * s;
            out[2 * i + 1] = x[2 * i] * s + x[2 * i + 1] * c;
        }
    }
}

static void check_rope(const mdl_rope_params_t *p, int hd, const float *ff, double yarn_scale,
                       int yarn_low, int yarn_high)
{
    enum { T = 3, H = 2 };
    const int32_t pos[T] = {0, 7, 131};
    uint32_t seed = 99;
    float x[T * H * 128], orig[T * H * 128];
    for (int i = 0; i < T * H * hd; i++) {
        x[i] = orig[i] = (float)drand_(&seed);
    }
    kern_op_rope_f32(x, (int64_t)H * hd, T, H, hd, pos, p, ff);
    for (int t = 0; t < T; t++) {
        double theta[64];
        for (int i = 0; i < p->n_rot / 2; i++) {
            double th = pos[t] * pow(p->freq_base, -2.0 * i / p->n_rot);
            if (ff != NULL) {
                th /= ff[i];
            }
            if (yarn_scale > 0) {
                double ramp = (i - yarn_low) / (double)(yarn_high - yarn_low);
                ramp = 1.0 - (ramp < 0 ? 0 : ramp > 1 ? 1 : ramp);
                th = th * p->freq_scale * (1 - ramp) + th * ramp;
            } else {
                th *= p->freq_scale;
            }
            theta[i] = th;
        }
        for (int h = 0; h < H; h++) {
            double ref[128];
            const int off = (t * H + h) * hd;
            ref_rope(ref, orig + off, hd, p->n_rot, p->type == MDL_ROPE_NEOX, theta,
                     yarn_scale > 0 ? yarn_scale : p->attn_factor);
            for (int d = 0; d < hd; d++) {
                assert_true(fabs(x[off + d] - ref[d]) < 2e-6);
            }
        }
    }
}

static void test_rope(void **state)
{
    (void)state;
    mdl_rope_params_t p = {.type = MDL_ROPE_NEOX,
                           .n_rot = 16,
                           .freq_base = 10000.0f,
                           .freq_scale = 1.0f,
                           .attn_factor = 1.0f};
    check_rope(&p, 16, NULL, 0, 0, 0);
    p.type = MDL_ROPE_NORM;
    check_rope(&p, 16, NULL, 0, 0, 0);
    /* partial rotation: dims >= n_rot are untouched */
    p.type = MDL_ROPE_NEOX;
    p.n_rot = 8;
    check_rope(&p, 16, NULL, 0, 0, 0);
    /* linear scaling and llama3-style per-pair factors */
    p.n_rot = 16;
    p.freq_scale = 0.25f;
    float ff[8] = {1, 1, 1.5f, 2, 3, 4, 4, 4};
    p.type = MDL_ROPE_NORM;
    check_rope(&p, 16, ff, 0, 0, 0);
    /* YaRN with gpt-oss's numbers (reference doc 3.4): base 150000, factor 32, original
     * context 4096, n_rot 64 -> ramp dims 8..18 and magnitude 1 + 0.1 ln 32. */
    mdl_rope_params_t y = {.type = MDL_ROPE_NEOX,
                           .n_rot = 64,
                           .freq_base = 150000.0f,
                           .freq_scale = 1.0f / 32.0f,
                           .scaling = MDL_ROPE_SCALING_YARN,
                           .ext_factor = 1.0f,
                           .attn_factor = 1.0f,
                           .beta_fast = 32.0f,
                           .beta_slow = 1.0f,
                           .n_ctx_orig = 4096};
    check_rope(&y, 64, NULL, 1.0 + 0.1 * log(32.0), 8, 18);
}

static void test_silu_mul_add_scale(void **state)
{
    (void)state;
    float g[4] = {-3.0f, 0.0f, 0.5f, 10.0f}, u[4] = {1.0f, 2.0f, -2.0f, 0.5f}, o[4];
    kern_op_silu_mul_f32(o, g, u, 4);
    for (int i = 0; i < 4; i++) {
        double ref = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        assert_true(fabs(o[i] - ref) < 1e-6);
    }
    kern_op_add_f32(o, g, u, 4);
    assert_true(o[3] == 10.5f);
    kern_op_scale_f32(o, 2.0f, 4);
    assert_true(o[3] == 21.0f);
    kern_op_axpy_f32(o, 0.5f, u, 4);
    assert_true(o[3] == 21.25f);
}

static void test_topk_ties_lower_index_first(void **state)
{
    (void)state;
    const float x[6] = {0.1f, 0.3f, 0.3f, 0.05f, 0.3f, 0.25f};
    int32_t idx[4];
    kern_op_topk_f32(x, 6, 4, idx);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 2);
    assert_int_equal(idx[2], 4);
    assert_int_equal(idx[3], 5);
    const float all_equal[4] = {1, 1, 1, 1};
    kern_op_topk_f32(all_equal, 4, 2, idx);
    assert_int_equal(idx[0], 0);
    assert_int_equal(idx[1], 1);
}

static void test_route_token(void **state)
{
    (void)state;
    /* logits 2, 2, 1, 0: experts 0 and 1 tie; softmax then top-2 keeps 0, 1 */
    float probs[4] = {2.0f, 2.0f, 1.0f, 0.0f};
    int32_t sel[2];
    float w[2];
    const kern_route_t r2 = {4, 2, KERN_GATING_SOFTMAX, NULL, true, 0.0f};
    kern_op_route_token(probs, &r2, sel, w);
    assert_int_equal(sel[0], 0);
    assert_int_equal(sel[1], 1);
    assert_true(fabsf(w[0] - 0.5f) < 1e-7f && fabsf(w[1] - 0.5f) < 1e-7f);

    /* experts 1 and 3 tie for first: 1, 3, then 2; weights are the plain softmax */
    double z = exp(0.0) + 2 * exp(3.0) + exp(1.0);
    int32_t sel3[3];
    float w3[3];
    float p3[4] = {0.0f, 3.0f, 1.0f, 3.0f};
    const kern_route_t r3 = {4, 3, KERN_GATING_SOFTMAX, NULL, false, 0.0f};
    kern_op_route_token(p3, &r3, sel3, w3);
    assert_int_equal(sel3[0], 1);
    assert_int_equal(sel3[1], 3);
    assert_int_equal(sel3[2], 2);
    assert_true(fabs(w3[0] - exp(3.0) / z) < 1e-7 && fabs(w3[1] - exp(3.0) / z) < 1e-7);
    assert_true(fabs(w3[2] - exp(1.0) / z) < 1e-7); /* not renormalised */
}

static double sigm(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

/* MiniMax-M2's router: sigmoid probabilities, a selection bias that changes the choice but
 * not the weights, the chosen weights renormalised; and a scale. */
static void test_route_sigmoid_bias(void **state)
{
    (void)state;
    const float logits[4] = {1.0f, 0.5f, -0.5f, 0.0f};
    /* unbiased order 0, 1, 3, 2; the bias lifts expert 2 to the top and sinks expert 0 */
    const float bias[4] = {-1.0f, 0.0f, 2.0f, 0.0f};
    float p[4];
    int32_t sel[2];
    float w[2];
    memcpy(p, logits, sizeof(p));
    kern_route_t r = {4, 2, KERN_GATING_SIGMOID, bias, true, 0.0f};
    kern_op_route_token(p, &r, sel, w);
    assert_int_equal(sel[0], 2);
    assert_int_equal(sel[1], 1);
    const double s2 = sigm(-0.5), s1 = sigm(0.5);
    assert_true(fabs(w[0] - s2 / (s1 + s2)) < 1e-7 && fabs(w[1] - s1 / (s1 + s2)) < 1e-7);
    assert_true(fabs(p[0] - sigm(1.0)) < 1e-7); /* the probabilities stay unbiased */

    /* no bias, no renormalisation, a scale of 2.5 */
    memcpy(p, logits, sizeof(p));
    r = (kern_route_t){4, 2, KERN_GATING_SIGMOID, NULL, false, 2.5f};
    kern_op_route_token(p, &r, sel, w);
    assert_int_equal(sel[0], 0);
    assert_int_equal(sel[1], 1);
    assert_true(fabs(w[0] - 2.5 * sigm(1.0)) < 1e-6 && fabs(w[1] - 2.5 * sigm(0.5)) < 1e-6);
}

/* gpt-oss's router: top-k of the raw logits, softmax over the chosen only. */
static void test_route_softmax_selected(void **state)
{
    (void)state;
    float p[5] = {0.25f, 3.0f, -1.0f, 2.0f, 2.5f};
    int32_t sel[3];
    float w[3];
    const kern_route_t r = {5, 3, KERN_GATING_SOFTMAX_SELECTED, NULL, false, 0.0f};
    kern_op_route_token(p, &r, sel, w);
    assert_int_equal(sel[0], 1);
    assert_int_equal(sel[1], 4);
    assert_int_equal(sel[2], 3);
    const double z = exp(3.0) + exp(2.5) + exp(2.0);
    assert_true(fabs(w[0] - exp(3.0) / z) < 1e-7 && fabs(w[1] - exp(2.5) / z) < 1e-7 &&
                fabs(w[2] - exp(2.0) / z) < 1e-7);
}

/* The split RMSNorm (sum of squares, summed over "ranks", then applied) equals the whole
 * one, and gpt-oss's clamped SwiGLU follows its formula. */
static void test_split_norm_and_oai_act(void **state)
{
    (void)state;
    enum { C = 24 };
    float x[C], w[C], whole[C], split[C], ss[2];
    for (int i = 0; i < C; i++) {
        x[i] = (float)sin(1.7 * i) * 3.0f;
        w[i] = 0.5f + 0.05f * (float)i;
    }
    kern_op_rms_norm_f32(whole, C, x, C, w, 1, C, 1e-6f);
    kern_op_sum_sq_f32(&ss[0], 1, x, C, 1, 10);
    kern_op_sum_sq_f32(&ss[1], 1, x + 10, C, 1, C - 10);
    const float total = ss[0] + ss[1];
    kern_op_rms_apply_f32(split, C, x, C, &total, 1, w, 1, 10, C, 1e-6f);
    kern_op_rms_apply_f32(split + 10, C, x + 10, C, &total, 1, w + 10, 1, C - 10, C, 1e-6f);
    for (int i = 0; i < C; i++) {
        assert_true(fabsf(split[i] - whole[i]) <= 1e-6f * fabsf(whole[i]) + 1e-7f);
    }
    const float g[5] = {-3.0f, 0.5f, 9.0f, 7.0f, 1.0f}, u[5] = {-9.0f, 0.25f, 8.0f, -2.0f, 1.0f};
    float out[5];
    kern_op_swiglu_oai_f32(out, g, u, 5, 1.702f, 7.0f);
    for (int i = 0; i < 5; i++) {
        const double gc = g[i] < 7.0 ? g[i] : 7.0;
        const double uc = u[i] < -7.0 ? -7.0 : (u[i] > 7.0 ? 7.0 : u[i]);
        const double want = gc * sigm(1.702 * gc) * (uc + 1.0);
        assert_true(fabs(out[i] - want) <= 1e-6 * (fabs(want) + 1.0));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rms_norm),
        cmocka_unit_test(test_route_sigmoid_bias),
        cmocka_unit_test(test_route_softmax_selected),
        cmocka_unit_test(test_split_norm_and_oai_act),
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_silu_mul_add_scale),
        cmocka_unit_test(test_topk_ties_lower_index_first),
        cmocka_unit_test(test_route_token),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
