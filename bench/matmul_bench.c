/*
 * matmul_bench.c - speed of kern_matmul per weight type, decode- and prefill-shaped.
 *
 *   tandem-matmul-bench [--threads N] [--isa scalar|avx2|avx512|neon|neon+dotprod]
 *                       [--types mxfp4,q4_k,q4_0] [--shapes 2880x2880,5760x2880]
 *                       [--tokens 1,64,512] [--reps R] [--pool-mib M] [--hot]
 *
 * A shape is ROWSxCOLS: N output rows (features) by K columns (the dot length, a multiple
 * of the type's block). Weights are random valid blocks (kern_quantize of Gaussian
 * values). Every (type, shape, tokens) line gives the median over R calls of one
 * kern_matmul (activation conversion included), the fastest call (a check on noise from
 * other work on the machine), the median CPU time of the process per call (with one
 * thread: the call's time less what other work on a shared machine took), and from the
 * median the weight bytes streamed per second
 * and GFLOP/s (2 * N * K * tokens / time).
 *
 * Decode (1 token) cycles through copies of the weight filling --pool-mib (default
 * 1024 MiB, larger than the caches), so each call streams its weight from memory as a
 * decode step does; --hot reuses one copy (in-cache speed). Prefill reuses one copy:
 * each weight row is read once per call and reused across the tokens. A shape whose K is
 * not a multiple of a type's block is skipped with a note (Q4_K needs K % 256 == 0).
 */
#include "kernels/cpu/types_cpu.h"
#include "kernels/kern.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define MAX_LIST 16

typedef struct bench_opts {
    int threads;    /* 0: one per online CPU */
    kern_isa_t isa; /* KERN_ISA_COUNT: the best one */
    tdm_type_t types[MAX_LIST];
    int n_types;
    int64_t rows[MAX_LIST], cols[MAX_LIST];
    int n_shapes;
    int64_t toks[MAX_LIST];
    int n_toks;
    int reps; /* 0: per regime default */
    size_t pool_mib;
    int hot;
} bench_opts_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU time of the whole process: with one thread, the call's time without the time other
 * work on a shared machine took the core away (what compares kernels on a busy VM). */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static float rng_normal(void)
{
    float u = 0.0f;
    for (int i = 0; i < 6; i++) {
        rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
        u += (float)((rng_state >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
    }
    return u * 0.7071f;
}

static int parse_type(const char *s, tdm_type_t *out)
{
    for (int t = 0; t < TDM_TYPE_COUNT; t++) {
        const char *name = tdm_type_name((tdm_type_t)t);
        if (name != NULL && strcasecmp(name, s) == 0 && kern_type_supported((tdm_type_t)t)) {
            *out = (tdm_type_t)t;
            return 0;
        }
    }
    return -1;
}

static int parse_args(int argc, char **argv, bench_opts_t *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--hot") == 0) {
            o->hot = 1;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "matmul-bench: %s needs a value\n", a);
            return -1;
        }
        i++;
        char buf[512];
        snprintf(buf, sizeof(buf), "%s", v);
        if (strcmp(a, "--threads") == 0) {
            o->threads = atoi(v);
        } else if (strcmp(a, "--reps") == 0) {
            o->reps = atoi(v);
        } else if (strcmp(a, "--pool-mib") == 0) {
            o->pool_mib = (size_t)atol(v);
        } else if (strcmp(a, "--isa") == 0) {
            o->isa = KERN_ISA_COUNT + 1;
            for (int k = 0; k < KERN_ISA_COUNT; k++) {
                if (strcasecmp(kern_isa_name((kern_isa_t)k), v) == 0) {
                    o->isa = (kern_isa_t)k;
                }
            }
            if (o->isa > KERN_ISA_COUNT) {
                fprintf(stderr, "matmul-bench: unknown ISA %s\n", v);
                return -1;
            }
        } else if (strcmp(a, "--types") == 0) {
            o->n_types = 0;
            for (char *t = strtok(buf, ","); t != NULL && o->n_types < MAX_LIST;
                 t = strtok(NULL, ",")) {
                if (parse_type(t, &o->types[o->n_types++]) != 0) {
                    fprintf(stderr, "matmul-bench: unknown or unsupported type %s\n", t);
                    return -1;
                }
            }
        } else if (strcmp(a, "--shapes") == 0) {
            o->n_shapes = 0;
            for (char *t = strtok(buf, ","); t != NULL && o->n_shapes < MAX_LIST;
                 t = strtok(NULL, ",")) {
                long long r, c;
                if (sscanf(t, "%lldx%lld", &r, &c) != 2 || r <= 0 || c <= 0) {
                    fprintf(stderr, "matmul-bench: bad shape %s (ROWSxCOLS)\n", t);
                    return -1;
                }
                o->rows[o->n_shapes] = r;
                o->cols[o->n_shapes++] = c;
            }
        } else if (strcmp(a, "--tokens") == 0) {
            o->n_toks = 0;
            for (char *t = strtok(buf, ","); t != NULL && o->n_toks < MAX_LIST;
                 t = strtok(NULL, ",")) {
                o->toks[o->n_toks] = atoll(t);
                if (o->toks[o->n_toks++] <= 0) {
                    fprintf(stderr, "matmul-bench: bad token count %s\n", t);
                    return -1;
                }
            }
        } else {
            fprintf(stderr, "matmul-bench: unknown option %s\n", a);
            return -1;
        }
    }
    return 0;
}

/* Which multi-token / multi-row kernels kern_matmul will use for t at isa. */
static const char *kernels_used(tdm_type_t t, kern_isa_t isa, int64_t n_tok)
{
    if (n_tok == 1) {
        return kern_vec_dot_rows_get(t, isa) != NULL ? "rows" : "vec_dot";
    }
    const int tile = kern_vec_dot_tile_get(t, isa) != NULL;
    const int tile2 = kern_vec_dot_tile2_get(t, isa) != NULL;
    if (kern_vec_dot_tile4_get(t, isa) != NULL) {
        return tile2 ? "tile4+2+1" : "tile4";
    }
    return tile2 ? (tile ? "tile2+tile" : "tile2") : tile ? "tile" : "vec_dot";
}

static int run_one(kern_ctx_t *ctx, const bench_opts_t *o, tdm_type_t t, int64_t n_rows, int64_t k,
                   int64_t n_tok)
{
    const size_t row_bytes = tdm_type_row_size(t, k);
    const size_t w_bytes = row_bytes * (size_t)n_rows;
    /* one quantized weight, copied over the pool for decode */
    float *src = malloc((size_t)k * sizeof(float));
    uint8_t *w0 = malloc(w_bytes);
    if (src == NULL || w0 == NULL) {
        return -1;
    }
    for (int64_t r = 0; r < n_rows; r++) {
        for (int64_t c = 0; c < k; c++) {
            src[c] = rng_normal();
        }
        if (kern_quantize(t, src, w0 + (size_t)r * row_bytes, 1, k, NULL) != TDM_OK) {
            return -1;
        }
    }
    free(src);
    size_t n_copies = 1;
    if (n_tok == 1 && !o->hot) {
        n_copies = (o->pool_mib << 20) / w_bytes + 1;
    }
    uint8_t *pool = malloc(w_bytes * n_copies);
    if (pool == NULL) {
        return -1;
    }
    for (size_t c = 0; c < n_copies; c++) {
        memcpy(pool + c * w_bytes, w0, w_bytes);
    }
    free(w0);
    float *x = malloc((size_t)(n_tok * k) * sizeof(float));
    float *y = malloc((size_t)(n_tok * n_rows) * sizeof(float));
    if (x == NULL || y == NULL) {
        return -1;
    }
    for (int64_t i = 0; i < n_tok * k; i++) {
        x[i] = rng_normal();
    }
    const int reps = o->reps > 0 ? o->reps : n_tok == 1 ? 200 : n_tok <= 64 ? 15 : 5;
    double *times = malloc((size_t)reps * sizeof(double));
    double *cpu = malloc((size_t)reps * sizeof(double));
    if (times == NULL || cpu == NULL) {
        return -1;
    }
    const int warm = n_tok == 1 ? (int)(n_copies < 20 ? n_copies : 20) : 1;
    size_t c = 0;
    tdm_error_t err = {0};
    for (int i = -warm; i < reps; i++) {
        const kern_weight_t w = {t, k, n_rows, row_bytes, pool + c * w_bytes};
        c = (c + 1) % n_copies;
        const double t0 = now_s(), c0 = cpu_s();
        if (kern_matmul(ctx, &w, x, k, n_tok, y, n_rows, &err) != TDM_OK) {
            fprintf(stderr, "matmul-bench: %s\n", err.msg);
            return -1;
        }
        if (i >= 0) {
            times[i] = now_s() - t0;
            cpu[i] = cpu_s() - c0;
        }
    }
    qsort(times, (size_t)reps, sizeof(double), cmp_double);
    qsort(cpu, (size_t)reps, sizeof(double), cmp_double);
    const double med = times[reps / 2];
    printf("%-6s %6lld %6lld %5lld %3d %-7s %-10s %10.3f %9.3f %9.3f %9.2f %9.2f  %.6g\n",
           tdm_type_name(t), (long long)n_rows, (long long)k, (long long)n_tok,
           kern_ctx_n_threads(ctx), kern_isa_name(kern_ctx_isa(ctx)),
           kernels_used(t, kern_ctx_isa(ctx), n_tok), med * 1e3, times[0] * 1e3,
           cpu[reps / 2] * 1e3, (double)w_bytes / med * 1e-9,
           2.0 * (double)n_rows * (double)k * (double)n_tok / med * 1e-9, (double)y[0]);
    fflush(stdout);
    free(times);
    free(cpu);
    free(pool);
    free(x);
    free(y);
    return 0;
}

int main(int argc, char **argv)
{
    bench_opts_t o = {.isa = KERN_ISA_COUNT, .pool_mib = 1024};
    const char *def_types[] = {"mxfp4", "q4_k", "q4_0"};
    for (int i = 0; i < 3; i++) {
        if (parse_type(def_types[i], &o.types[o.n_types]) == 0) {
            o.n_types++;
        }
    }
    o.rows[0] = 2880, o.cols[0] = 2880;
    o.rows[1] = 5760, o.cols[1] = 2880;
    o.rows[2] = 2880, o.cols[2] = 3072;
    o.n_shapes = 3;
    o.toks[0] = 1, o.toks[1] = 64, o.toks[2] = 512;
    o.n_toks = 3;
    if (parse_args(argc, argv, &o) != 0) {
        return 2;
    }
    kern_ctx_t *ctx = NULL;
    tdm_error_t err = {0};
    if (kern_ctx_create(o.threads, o.isa, &ctx, &err) != TDM_OK) {
        fprintf(stderr, "matmul-bench: %s\n", err.msg);
        return 1;
    }
    printf("# decode: %s; GB/s = weight bytes / median time; reps %s\n",
           o.hot ? "one weight copy (hot)" : "weights cycled over the pool (cold)",
           o.reps > 0 ? "as given" : "200 decode, 15 up to 64 tokens, 5 above");
    printf("%-6s %6s %6s %5s %3s %-7s %-10s %10s %9s %9s %9s %9s  %s\n", "type", "rows", "cols",
           "tok", "thr", "isa", "kernels", "median_ms", "best_ms", "cpu_ms", "GB/s", "GFLOP/s",
           "y[0]");
    for (int ti = 0; ti < o.n_types; ti++) {
        for (int si = 0; si < o.n_shapes; si++) {
            const uint32_t blck = tdm_type_traits(o.types[ti])->blck;
            if (o.cols[si] % blck != 0) {
                printf("# %s %lldx%lld skipped: %lld columns is not a multiple of %u\n",
                       tdm_type_name(o.types[ti]), (long long)o.rows[si], (long long)o.cols[si],
                       (long long)o.cols[si], blck);
                continue;
            }
            for (int ki = 0; ki < o.n_toks; ki++) {
                if (run_one(ctx, &o, o.types[ti], o.rows[si], o.cols[si], o.toks[ki]) != 0) {
                    fprintf(stderr, "matmul-bench: out of memory or kern_matmul failed\n");
                    kern_ctx_destroy(ctx);
                    return 1;
                }
            }
        }
    }
    kern_ctx_destroy(ctx);
    return 0;
}
