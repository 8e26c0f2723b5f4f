/*
 * test_cuda_qblock.c - the GPU's block decoding (kernels/cuda/qblock.h), run on the CPU.
 *
 * qblock.h is compiled for the GPU kernels and, here, as plain C. For every quantized type,
 * on random blocks:
 *   - each element it dequantizes equals kernels/cpu's dequantizer (itself bit-exact with
 *     the gguf package) bit for bit;
 *   - a dot product assembled the way one warp of the tensor-core kernel assembles it
 *     (every lane's A-fragment registers, the activations' B registers, integer sums per
 *     sub-block scaled by the sub-block's integer scale, then the block's float epilogue)
 *     equals the CPU's scalar vec_dot bit for bit;
 * and the f16 / bf16 / E8M0 conversions match the CPU's on every input.
 * So what the GPU decodes is checked in CI, which has no GPU.
 */
#include "common/check.h"
#include "kernels/cpu/types_cpu.h"
#include "kernels/cuda/qblock.h"
#include "kernels/kern.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static uint64_t g_rng = 0x2545F4914F6CDD1Dull;

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

static void set_f16(uint8_t *p, float v)
{
    const uint16_t h = kern_fp32_to_fp16(v);
    memcpy(p, &h, 2);
}

/* Random block bytes with sane scale fields (as test_backend_ops.c makes them). */
static void random_block(tdm_type_t t, uint8_t *b)
{
    const tdm_type_traits_t *tr = tdm_type_traits(t);
    for (uint32_t i = 0; i < tr->size; i++) {
        b[i] = (uint8_t)rnd();
    }
    switch (t) {
    case TDM_TYPE_Q8_0: /* -128 is not a Q8_0 value */
        for (int j = 2; j < 34; j++) {
            b[j] = b[j] == 0x80 ? 0x81 : b[j];
        }
        set_f16(b, frand(-0.05f, 0.05f));
        break;
    case TDM_TYPE_Q4_0:
    case TDM_TYPE_Q5_0:
    case TDM_TYPE_IQ4_NL:
        set_f16(b, frand(-0.05f, 0.05f));
        break;
    case TDM_TYPE_Q4_1:
    case TDM_TYPE_Q5_1:
        set_f16(b, frand(0.001f, 0.05f));
        set_f16(b + 2, frand(-0.3f, 0.1f));
        break;
    case TDM_TYPE_MXFP4:
        b[0] = (uint8_t)(118 + rnd() % 8);
        break;
    case TDM_TYPE_Q2_K:
        set_f16(b + 80, frand(0.001f, 0.02f));
        set_f16(b + 82, frand(0.001f, 0.02f));
        break;
    case TDM_TYPE_Q3_K:
        set_f16(b + 108, frand(-0.02f, 0.02f));
        break;
    case TDM_TYPE_Q4_K:
    case TDM_TYPE_Q5_K:
        set_f16(b, frand(0.0005f, 0.01f));
        set_f16(b + 2, frand(0.0005f, 0.01f));
        break;
    case TDM_TYPE_Q6_K:
        set_f16(b + 208, frand(-0.002f, 0.002f));
        break;
    case TDM_TYPE_IQ4_XS:
        set_f16(b, frand(-0.01f, 0.01f));
        break;
    default:
        break;
    }
}

static const tdm_type_t k_types[] = {
    TDM_TYPE_Q4_0,   TDM_TYPE_Q4_1,   TDM_TYPE_Q5_0,  TDM_TYPE_Q5_1, TDM_TYPE_Q8_0,
    TDM_TYPE_Q2_K,   TDM_TYPE_Q3_K,   TDM_TYPE_Q4_K,  TDM_TYPE_Q5_K, TDM_TYPE_Q6_K,
    TDM_TYPE_IQ4_NL, TDM_TYPE_IQ4_XS, TDM_TYPE_MXFP4,
};

static float qb_deq(tdm_type_t t, const uint8_t *b, int e)
{
    switch (t) {
    case TDM_TYPE_Q4_0:
        return qb_deq_q4_0(b, e);
    case TDM_TYPE_Q4_1:
        return qb_deq_q4_1(b, e);
    case TDM_TYPE_Q5_0:
        return qb_deq_q5_0(b, e);
    case TDM_TYPE_Q5_1:
        return qb_deq_q5_1(b, e);
    case TDM_TYPE_Q8_0:
        return qb_deq_q8_0(b, e);
    case TDM_TYPE_Q2_K:
        return qb_deq_q2_k(b, e);
    case TDM_TYPE_Q3_K:
        return qb_deq_q3_k(b, e);
    case TDM_TYPE_Q4_K:
        return qb_deq_q4_k(b, e);
    case TDM_TYPE_Q5_K:
        return qb_deq_q5_k(b, e);
    case TDM_TYPE_Q6_K:
        return qb_deq_q6_k(b, e);
    case TDM_TYPE_IQ4_NL:
        return qb_deq_iq4_nl(b, e, kern_iq4nl_values);
    case TDM_TYPE_IQ4_XS:
        return qb_deq_iq4_xs(b, e, kern_iq4nl_values);
    case TDM_TYPE_MXFP4:
        return qb_deq_mxfp4(b, e, kern_mxfp4_values);
    default:
        return NAN;
    }
}

static void test_dequant_matches_cpu(void **state)
{
    (void)state;
    for (size_t ti = 0; ti < TDM_ARRAY_SIZE(k_types); ti++) {
        const tdm_type_t t = k_types[ti];
        const tdm_type_traits_t *tr = tdm_type_traits(t);
        uint8_t blk[512];
        float ref[256];
        for (int rep = 0; rep < 200; rep++) {
            random_block(t, blk);
            assert_int_equal(kern_dequantize(t, blk, ref, tr->blck, NULL), TDM_OK);
            for (uint32_t e = 0; e < tr->blck; e++) {
                const float got = qb_deq(t, blk, (int)e);
                if (kern_f32_bits(got) != kern_f32_bits(ref[e])) {
                    fail_msg("%s element %u: qblock %.9g, cpu %.9g", tdm_type_name(t), e, got,
                             ref[e]);
                }
            }
        }
    }
}

/* The activations of one row as the GPU stores them (qblock.h's qb_act_t). */
typedef struct act {
    int8_t qs[1024];
    float d[32], s[32];
    int32_t bsums[64];
} act_t;

static void act_from_cpu(tdm_type_t fmt, const void *blocks, int k, act_t *a)
{
    if (fmt == TDM_TYPE_Q8_K) {
        const kern_block_q8_k *b = blocks;
        for (int i = 0; i < k / 256; i++) {
            memcpy(a->qs + 256 * i, b[i].qs, 256);
            a->d[i] = b[i].d;
            for (int g = 0; g < 16; g++) {
                a->bsums[16 * i + g] = b[i].bsums[g];
            }
        }
    } else if (fmt == TDM_TYPE_Q8_1) {
        const kern_block_q8_1 *b = blocks;
        for (int i = 0; i < k / 32; i++) {
            memcpy(a->qs + 32 * i, b[i].qs, 32);
            a->d[i] = kern_fp16_to_fp32(b[i].d);
            a->s[i] = kern_fp16_to_fp32(b[i].s);
        }
    } else {
        const kern_block_q8_0 *b = blocks;
        for (int i = 0; i < k / 32; i++) {
            memcpy(a->qs + 32 * i, b[i].qs, 32);
            a->d[i] = kern_fp16_to_fp32(b[i].d);
        }
    }
}

static uint32_t act_word(const act_t *a, int at)
{
    uint32_t w;
    memcpy(&w, a->qs + at, 4);
    return w;
}

/* The A registers of lane tig for sub-block sub (qblock.h's per-type decoders). */
static void decode(tdm_type_t t, const uint8_t *b, int sub, int tig, uint32_t *lo, uint32_t *hi)
{
    *hi = 0;
    switch (t) {
    case TDM_TYPE_Q4_0:
        qb_q4_0_a32(b, tig, lo, hi);
        break;
    case TDM_TYPE_Q4_1:
        qb_q4_1_a32(b, tig, lo, hi);
        break;
    case TDM_TYPE_Q5_0:
        qb_q5_0_a32(b, tig, lo, hi);
        break;
    case TDM_TYPE_Q5_1:
        qb_q5_1_a32(b, tig, lo, hi);
        break;
    case TDM_TYPE_Q8_0:
        qb_q8_0_a32(b, tig, lo, hi);
        break;
    case TDM_TYPE_IQ4_NL:
        qb_iq4_nl_a32(b, tig, kern_iq4nl_values, lo, hi);
        break;
    case TDM_TYPE_MXFP4:
        qb_mxfp4_a32(b, tig, kern_mxfp4_values, lo, hi);
        break;
    case TDM_TYPE_Q4_K:
        qb_q4_k_a32(b, sub, tig, lo, hi);
        break;
    case TDM_TYPE_Q5_K:
        qb_q5_k_a32(b, sub, tig, lo, hi);
        break;
    case TDM_TYPE_IQ4_XS:
        qb_iq4_xs_a32(b, sub, tig, kern_iq4nl_values, lo, hi);
        break;
    case TDM_TYPE_Q2_K:
        *lo = qb_q2_k_a16(b, sub, tig);
        break;
    case TDM_TYPE_Q3_K:
        *lo = qb_q3_k_a16(b, sub, tig);
        break;
    case TDM_TYPE_Q6_K:
        *lo = qb_q6_k_a16(b, sub, tig);
        break;
    default:
        fail_msg("type %s", tdm_type_name(t));
    }
}

static int sub_scale(tdm_type_t t, const uint8_t *b, int sub)
{
    switch (t) {
    case TDM_TYPE_Q4_K:
    case TDM_TYPE_Q5_K:
        return qb_q4_k_scale(b, sub);
    case TDM_TYPE_IQ4_XS:
        return qb_iq4_xs_scale(b, sub);
    case TDM_TYPE_Q2_K:
        return qb_q2_k_scale(b, sub);
    case TDM_TYPE_Q3_K:
        return qb_q3_k_scale(b, sub);
    case TDM_TYPE_Q6_K:
        return qb_q6_k_scale(b, sub);
    default:
        return 1;
    }
}

/* One (row, token) of the GPU kernel: the k-sum of each sub-block as the mma forms it (the
 * four lanes tig = 0..3 of the row's group, registers lo and hi), scaled, then the epilogue. */
static float emulate_dot(tdm_type_t t, const uint8_t *row, const act_t *a, int k)
{
    const tdm_type_traits_t *tr = tdm_type_traits(t);
    const int blk = (int)tr->blck,
              sub_w = (t == TDM_TYPE_Q2_K || t == TDM_TYPE_Q3_K || t == TDM_TYPE_Q6_K) ? 16 : 32;
    float acc = 0.0f;
    for (int bi = 0; bi < k / blk; bi++) {
        const uint8_t *b = row + (size_t)bi * tr->size;
        int isum = 0;
        for (int sub = 0; sub < blk / sub_w; sub++) {
            int s = 0;
            for (int tig = 0; tig < 4; tig++) {
                uint32_t lo = 0, hi = 0;
                decode(t, b, sub, tig, &lo, &hi);
                const int base = bi * blk + sub * sub_w + 4 * tig;
                s += qb_dot4(lo, act_word(a, base));
                if (sub_w == 32) {
                    s += qb_dot4(hi, act_word(a, base + 16));
                }
            }
            isum += sub_scale(t, b, sub) * s;
        }
        switch (t) {
        case TDM_TYPE_Q4_1:
        case TDM_TYPE_Q5_1:
            acc = qb_epi_dm(acc, isum, qb_f16(qb_ld16(b)), a->d[bi], qb_f16(qb_ld16(b + 2)),
                            a->s[bi]);
            break;
        case TDM_TYPE_MXFP4:
            acc = qb_epi_d(acc, isum, qb_e8m0_half(b[0]), a->d[bi]);
            break;
        case TDM_TYPE_Q4_0:
        case TDM_TYPE_Q5_0:
        case TDM_TYPE_Q8_0:
        case TDM_TYPE_IQ4_NL:
            acc = qb_epi_d(acc, isum, qb_f16(qb_ld16(b)), a->d[bi]);
            break;
        case TDM_TYPE_Q4_K:
        case TDM_TYPE_Q5_K:
            acc = qb_epi_kmin(acc, isum, qb_q4_k_mins(b, a->bsums + 16 * bi), qb_f16(qb_ld16(b)),
                              qb_f16(qb_ld16(b + 2)), a->d[bi]);
            break;
        case TDM_TYPE_Q2_K:
            acc = qb_epi_kmin(acc, isum, qb_q2_k_mins(b, a->bsums + 16 * bi),
                              qb_f16(qb_ld16(b + 80)), qb_f16(qb_ld16(b + 82)), a->d[bi]);
            break;
        case TDM_TYPE_Q3_K:
            acc = qb_epi_k(acc, isum, qb_f16(qb_ld16(b + 108)), a->d[bi]);
            break;
        case TDM_TYPE_Q6_K:
            acc = qb_epi_k(acc, isum, qb_f16(qb_ld16(b + 208)), a->d[bi]);
            break;
        case TDM_TYPE_IQ4_XS:
            acc = qb_epi_k(acc, isum, qb_f16(qb_ld16(b)), a->d[bi]);
            break;
        default:
            fail_msg("type %s", tdm_type_name(t));
        }
    }
    return acc;
}

static void test_fragment_dot_matches_cpu_vec_dot(void **state)
{
    (void)state;
    const int k = 1024;
    for (size_t ti = 0; ti < TDM_ARRAY_SIZE(k_types); ti++) {
        const tdm_type_t t = k_types[ti];
        const kern_type_cpu_t *tc = kern_type_cpu(t);
        const kern_type_cpu_t *ac = kern_type_cpu(tc->vec_dot_type);
        const tdm_type_traits_t *tr = tdm_type_traits(t);
        uint8_t *row = malloc((size_t)(k / tr->blck) * tr->size);
        uint8_t ablk[2048];
        float x[1024];
        act_t a;
        for (int rep = 0; rep < 100; rep++) {
            for (uint32_t b = 0; b < k / tr->blck; b++) {
                random_block(t, row + b * tr->size);
            }
            for (int i = 0; i < k; i++) {
                x[i] = rep % 10 == 3 && i < 256 ? 0.0f : frand(-2.0f, 2.0f);
            }
            ac->from_float(x, ablk, k);
            memset(&a, 0, sizeof(a));
            act_from_cpu(tc->vec_dot_type, ablk, k, &a);
            const float ref = tc->vec_dot[KERN_ISA_SCALAR](k, row, ablk);
            const float got = emulate_dot(t, row, &a, k);
            if (kern_f32_bits(got) != kern_f32_bits(ref)) {
                fail_msg("%s: fragment dot %.9g, cpu vec_dot %.9g", tdm_type_name(t), got, ref);
            }
        }
        free(row);
    }
}

static void test_scalar_conversions(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        const float a = qb_f16(h), b = kern_fp16_to_fp32((uint16_t)h);
        assert_int_equal(kern_f32_bits(a), kern_f32_bits(b));
        assert_int_equal(kern_f32_bits(qb_bf16(h)), kern_f32_bits(kern_bf16_to_fp32((uint16_t)h)));
    }
    for (uint32_t e = 0; e < 256; e++) {
        assert_int_equal(kern_f32_bits(qb_e8m0_half(e)),
                         kern_f32_bits(kern_e8m0_to_fp32_half((uint8_t)e)));
    }
    /* per-byte subtraction never borrows across bytes, spread puts bit i in byte i */
    assert_int_equal(qb_vsub(0x00030F07u, 0x04040404u), 0xFCFF0B03u);
    assert_int_equal(qb_spread4(0xAu), 0x10001000u);
    const int8_t tab[16] = {-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7};
    assert_int_equal(qb_lut4(0x0F000801u, tab), 0x07F800F9u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalar_conversions),
        cmocka_unit_test(test_dequant_matches_cpu),
        cmocka_unit_test(test_fragment_dot_matches_cpu_vec_dot),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
