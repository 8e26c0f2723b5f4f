/*
 * membw.c - measured memory read bandwidth, the denominator of the decode roofline.
 *
 *   tandem-membw [--threads N] [--mib SIZE] [--reps R]
 *
 * Each thread sums its own slice of a buffer much larger than the caches (default
 * 1 GiB), R times; the best repetition's bytes / seconds is reported, like STREAM's
 * "read" kernel. Decode speed can never beat (bytes of weights read per token) / this.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct slice {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
    pthread_barrier_t *bar;
} slice_t;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *reader(void *arg)
{
    slice_t *s = arg;
    pthread_barrier_wait(s->bar);
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 4 <= s->n; i += 4) {
        a += s->p[i];
        b += s->p[i + 1];
        c += s->p[i + 2];
        d += s->p[i + 3];
    }
    for (; i < s->n; i++) {
        a += s->p[i];
    }
    s->sum = a + b + c + d;
    pthread_barrier_wait(s->bar);
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN), reps = 5;
    size_t mib = 1024;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--mib") == 0 && i + 1 < argc) {
            mib = (size_t)atol(argv[++i]);
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [--threads N] [--mib SIZE] [--reps R]\n", argv[0]);
            return 2;
        }
    }
    if (threads < 1 || threads > 1024 || mib < 1 || reps < 1) {
        fprintf(stderr, "membw: bad arguments\n");
        return 2;
    }
    size_t bytes = mib << 20, n = bytes / sizeof(uint64_t);
    uint64_t *buf = malloc(bytes);
    if (buf == NULL) {
        fprintf(stderr, "membw: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        buf[i] = i * 2654435761u; /* touch every page, defeat zero-page tricks */
    }
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)threads + 1);
    slice_t *sl = calloc((size_t)threads, sizeof(*sl));
    pthread_t *th = calloc((size_t)threads, sizeof(*th));
    double best = 0.0;
    uint64_t check = 0;
    for (int r = 0; r < reps; r++) {
        for (int t = 0; t < threads; t++) {
            size_t lo = n * (size_t)t / (size_t)threads, hi = n * (size_t)(t + 1) / (size_t)threads;
            sl[t] = (slice_t){buf + lo, hi - lo, 0, &bar};
            pthread_create(&th[t], NULL, reader, &sl[t]);
        }
        pthread_barrier_wait(&bar);
        double t0 = now();
        pthread_barrier_wait(&bar);
        double dt = now() - t0;
        for (int t = 0; t < threads; t++) {
            pthread_join(th[t], NULL);
            check += sl[t].sum;
        }
        double gbs = (double)bytes / dt / 1e9;
        best = gbs > best ? gbs : best;
    }
    printf("{\"threads\": %d, \"mib\": %zu, \"read_gb_per_s\": %.2f, \"checksum\": %llu}\n",
           threads, mib, best, (unsigned long long)(check & 0xFFFF));
    free(th);
    free(sl);
    free(buf);
    return 0;
}
