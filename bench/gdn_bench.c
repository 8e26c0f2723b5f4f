/*
 * gdn_bench.c - speed of the Gated DeltaNet ops of the CPU backend (kern_be_gdn_conv and
 * kern_be_gdn_rule) on one sequence, prefill-shaped (the chunked form) or one token at a
 * time (the recurrent form).
 *
 *   tandem-gdn-bench [--threads N] [--isa scalar|avx2|avx512|neon] [--tokens 129,512]
 *                    [--k-heads 16] [--v-heads 32] [--head-dim 128] [--reps R]
 *
 * The default shape is one Qwen3-Coder-Next DeltaNet layer (16 k heads, 32 v heads of 128,
 * conv 4). Each line: the median over R steps of conv + rule for a run of that many tokens
 * starting at position 0 (the state zeroed, as a new prompt), the fastest step, the median
 * CPU time of the process per step (with one thread: the step less what other work on a
 * shared machine took), and tokens per second from the median CPU time. Inputs are random;
 * the outputs are summed so the work cannot be skipped.
 */
#include "kernels/kern_backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_LIST 16

static double now_s(int clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static float frand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)((*s >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
}

static int parse_list(const char *s, int *out)
{
    int n = 0;
    while (*s != '\0' && n < MAX_LIST) {
        char *end = NULL;
        const long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 1 << 16) {
            return -1;
        }
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

static int parse_isa(const char *s, kern_isa_t *isa)
{
    static const struct {
        const char *name;
        kern_isa_t isa;
    } names[] = {{"scalar", KERN_ISA_SCALAR},
                 {"avx2", KERN_ISA_AVX2},
                 {"avx512", KERN_ISA_AVX512},
                 {"neon", KERN_ISA_NEON}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(s, names[i].name) == 0) {
            *isa = names[i].isa;
            return 0;
        }
    }
    return -1;
}

/* One line: R steps of `n` tokens. Returns 0, or -1 with the backend's error printed. */
static int bench_tokens(kern_backend_t *be, int nk, int nv, int d, int n, int reps, uint64_t *rs)
{
    const int K = 4, ch = (2 * nk + nv) * d, ldb = 2 * nv;
    float *cw = malloc((size_t)ch * K * sizeof(float)), *a = malloc((size_t)nv * sizeof(float));
    float *dt = malloc((size_t)nv * sizeof(float));
    float *x = malloc((size_t)n * ch * sizeof(float)),
          *qkv = malloc((size_t)n * ch * sizeof(float));
    float *ba = malloc((size_t)n * ldb * sizeof(float));
    float *out = malloc((size_t)n * nv * d * sizeof(float));
    void *conv_state = NULL, *ssm_state = NULL;
    int32_t *tok = calloc((size_t)n, sizeof(int32_t)), *pos = malloc((size_t)n * sizeof(int32_t));
    int32_t *seq = calloc((size_t)n, sizeof(int32_t));
    double *wall = malloc((size_t)reps * sizeof(double)),
           *cpu = malloc((size_t)reps * sizeof(double));
    int rc = -1;
    if (cw == NULL || a == NULL || dt == NULL || x == NULL || qkv == NULL || ba == NULL ||
        out == NULL || tok == NULL || pos == NULL || seq == NULL || wall == NULL || cpu == NULL ||
        kern_be_alloc(be, (size_t)(K - 1) * ch * sizeof(float), 0, "conv", &conv_state, NULL) !=
            TDM_OK ||
        kern_be_alloc(be, (size_t)nv * d * d * sizeof(float), 0, "ssm", &ssm_state, NULL) !=
            TDM_OK) {
        fprintf(stderr, "gdn-bench: out of memory\n");
        goto out;
    }
    for (int i = 0; i < ch * K; i++) {
        cw[i] = 0.6f * frand(rs);
    }
    for (int h = 0; h < nv; h++) {
        a[h] = -expf(1.5f * frand(rs) - 1.0f);
        dt[h] = frand(rs);
    }
    for (int i = 0; i < n * ch; i++) {
        x[i] = frand(rs);
    }
    for (int i = 0; i < n * ldb; i++) {
        ba[i] = 2.0f * frand(rs);
    }
    for (int i = 0; i < n; i++) {
        pos[i] = i;
    }
    const kern_gdn_t g = {.n_k_heads = nk,
                          .n_v_heads = nv,
                          .head_dim = d,
                          .conv = K,
                          .eps = 1e-6f,
                          .conv_w = cw,
                          .a = a,
                          .dt_bias = dt,
                          .conv_state = conv_state,
                          .ssm_state = ssm_state,
                          .n_slots = 1};
    int32_t blk[1] = {0};
    kern_seq_t seqs[1] = {{blk, 1, NULL, 0, -1, -1}};
    const kern_step_t st = {
        .n_tokens = n, .token = tok, .pos = pos, .seq = seq, .n_seqs = 1, .seqs = seqs};
    double sum = 0.0;
    for (int r = -1; r < reps; r++) { /* one warm-up step */
        memcpy(qkv, x, (size_t)n * ch * sizeof(float));
        const double w0 = now_s(CLOCK_MONOTONIC), c0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
        kern_be_step_begin(be, &st, false);
        kern_be_gdn_conv(be, &g, qkv, ch);
        kern_be_gdn_rule(be, &g, qkv, ch, ba, ldb, ba + 2 * (nv / nk), ldb, 2 * (nv / nk), out);
        bool rerun = false;
        tdm_error_t err = {0};
        if (kern_be_step_end(be, &rerun, &err) != TDM_OK) {
            fprintf(stderr, "gdn-bench: %s\n", tdm_error_msg(&err));
            goto out;
        }
        if (r >= 0) {
            wall[r] = now_s(CLOCK_MONOTONIC) - w0;
            cpu[r] = now_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
        }
        sum += out[(size_t)(n - 1) * nv * d];
    }
    qsort(wall, (size_t)reps, sizeof(double), cmp_double);
    qsort(cpu, (size_t)reps, sizeof(double), cmp_double);
    printf("k %2d v %2d d %3d tokens %5d: median %8.3f ms (fastest %8.3f), cpu %8.3f ms, "
           "%9.1f tok/cpu-s  [checksum %.3g]\n",
           nk, nv, d, n, wall[reps / 2] * 1e3, wall[0] * 1e3, cpu[reps / 2] * 1e3,
           (double)n / cpu[reps / 2], sum);
    rc = 0;
out:
    kern_be_free(be, conv_state);
    kern_be_free(be, ssm_state);
    free(cw);
    free(a);
    free(dt);
    free(x);
    free(qkv);
    free(ba);
    free(out);
    free(tok);
    free(pos);
    free(seq);
    free(wall);
    free(cpu);
    return rc;
}

int main(int argc, char **argv)
{
    int threads = 1, nk = 16, nv = 32, d = 128, reps = 9;
    int toks[MAX_LIST] = {1, 16, 129, 512}, n_toks = 4;
    kern_isa_t isa = KERN_ISA_COUNT;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int one[MAX_LIST];
        if (v != NULL && strcmp(argv[i], "--threads") == 0 && parse_list(v, one) == 1) {
            threads = one[0];
        } else if (v != NULL && strcmp(argv[i], "--k-heads") == 0 && parse_list(v, one) == 1) {
            nk = one[0];
        } else if (v != NULL && strcmp(argv[i], "--v-heads") == 0 && parse_list(v, one) == 1) {
            nv = one[0];
        } else if (v != NULL && strcmp(argv[i], "--head-dim") == 0 && parse_list(v, one) == 1) {
            d = one[0];
        } else if (v != NULL && strcmp(argv[i], "--reps") == 0 && parse_list(v, one) == 1) {
            reps = one[0];
        } else if (v != NULL && strcmp(argv[i], "--tokens") == 0 &&
                   (n_toks = parse_list(v, toks)) > 0) {
        } else if (v != NULL && strcmp(argv[i], "--isa") == 0 && parse_isa(v, &isa) == 0) {
        } else {
            fprintf(stderr,
                    "usage: %s [--threads N] [--isa scalar|avx2|avx512|neon] [--tokens 1,129] "
                    "[--k-heads 16] [--v-heads 32] [--head-dim 128] [--reps R]\n",
                    argv[0]);
            return 2;
        }
        i++;
    }
    if (nv % nk != 0) {
        fprintf(stderr, "gdn-bench: --v-heads must be a multiple of --k-heads\n");
        return 2;
    }
    int max_tok = 1;
    for (int i = 0; i < n_toks; i++) {
        max_tok = toks[i] > max_tok ? toks[i] : max_tok;
    }
    kern_backend_t *be = NULL;
    tdm_error_t err = {0};
    const kern_backend_params_t bp = {.device = "cpu", .n_threads = threads, .isa_override = isa};
    const kern_reserve_t rsv = {.n_tok = max_tok,
                                .n_out = 1,
                                .n_ctx = max_tok,
                                .max_cols = 8,
                                .max_rows = 8,
                                .n_head = 1,
                                .head_dim = 8,
                                .n_embd = 8,
                                .gdn_head_dim = d};
    if (kern_backend_create(&bp, &be, &err) != TDM_OK ||
        kern_be_reserve(be, &rsv, &err) != TDM_OK) {
        fprintf(stderr, "gdn-bench: %s\n", tdm_error_msg(&err));
        kern_backend_destroy(be);
        return 1;
    }
    uint64_t rs = 88172645463325252ull;
    int rc = 0;
    for (int i = 0; i < n_toks && rc == 0; i++) {
        rc = bench_tokens(be, nk, nv, d, toks[i], reps, &rs);
    }
    kern_backend_destroy(be);
    return rc == 0 ? 0 : 1;
}
