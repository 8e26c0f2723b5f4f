/*
 * ops_rope.c - scalar rotary position embedding (kern_ops.h), ggml's semantics:
 * NORM/NEOX pairing, per-dim frequency factors (llama3 rope_freqs), linear scaling and
 * YaRN (ramp between interpolated and extrapolated angles over ggml's corr dims, with
 * the 1 + 0.1 ln(1/freq_scale) magnitude correction). Angles are computed in double.
 */
#include "kernels/kern_ops.h"

#include "common/check.h"

#include <math.h>

/* ggml's corr dim: the pair index at which a wavelength completes `n_rot_beta` turns
 * over the original context. */
static double yarn_corr_dim(int n_rot, uint32_t n_ctx_orig, double beta, double base)
{
    return n_rot * log((double)n_ctx_orig / (beta * 2.0 * M_PI)) / (2.0 * log(base));
}

void kern_op_rope_f32(float *x, int64_t ld, int64_t n_tok, int n_heads, int head_dim,
                      const int32_t *pos, const mdl_rope_params_t *p, const float *freq_factors)
{
    const int n_rot = p->n_rot;
    const int half = n_rot / 2;
    TDM_ASSERT(n_rot % 2 == 0 && n_rot <= head_dim && n_rot <= KERN_ROPE_MAX_DIMS);

    /* Per pair: base frequency and YaRN mix (constant over tokens). */
    double freq[KERN_ROPE_MAX_DIMS / 2], mix[KERN_ROPE_MAX_DIMS / 2];
    double mscale = p->attn_factor;
    double low = 0.0, high = 0.0;
    if (p->ext_factor != 0.0f) {
        low = floor(yarn_corr_dim(n_rot, p->n_ctx_orig, p->beta_fast, p->freq_base));
        high = ceil(yarn_corr_dim(n_rot, p->n_ctx_orig, p->beta_slow, p->freq_base));
        low = low < 0.0 ? 0.0 : low;
        high = high > n_rot - 1 ? n_rot - 1 : high;
        mscale *= 1.0 + 0.1 * log(1.0 / p->freq_scale);
    }
    for (int i = 0; i < half; i++) {
        freq[i] = pow((double)p->freq_base, -2.0 * i / n_rot);
        if (freq_factors != NULL) {
            freq[i] /= freq_factors[i];
        }
        mix[i] = 0.0;
        if (p->ext_factor != 0.0f) {
            double span = high - low > 0.001 ? high - low : 0.001;
            double y = (i - low) / span;
            y = y < 0.0 ? 0.0 : (y > 1.0 ? 1.0 : y);
            mix[i] = (1.0 - y) * p->ext_factor;
        }
    }

    float cs[KERN_ROPE_MAX_DIMS / 2], sn[KERN_ROPE_MAX_DIMS / 2];
    for (int64_t t = 0; t < n_tok; t++) {
        for (int i = 0; i < half; i++) {
            double extrap = (double)pos[t] * freq[i];
            double interp = p->freq_scale * extrap;
            double theta = interp * (1.0 - mix[i]) + extrap * mix[i];
            cs[i] = (float)(cos(theta) * mscale);
            sn[i] = (float)(sin(theta) * mscale);
        }
        for (int h = 0; h < n_heads; h++) {
            float *v = x + t * ld + (int64_t)h * head_dim;
            for (int i = 0; i < half; i++) {
                int i0 = p->type == MDL_ROPE_NEOX ? i : 2 * i;
                int i1 = p->type == MDL_ROPE_NEOX ? i + half : 2 * i + 1;
                float a = v[i0], b = v[i1];
                v[i0] = a * cs[i] - b * sn[i];
                v[i1] = a * sn[i] + b * cs[i];
            }
        }
    }
}
