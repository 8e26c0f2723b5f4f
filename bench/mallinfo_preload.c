/*
 * mallinfo_preload.c - an LD_PRELOAD library for memory investigations (docs/benchmarks.md,
 * "The coordinator's RSS over 2 shards"): when MALLOC_LOG_DIR is set, a thread appends glibc's
 * own accounting (mallinfo2) every MALLOC_LOG_EVERY seconds (default 15) to
 * MALLOC_LOG_DIR/mallinfo-<pid>.txt, so that bytes in use can be told from bytes the arenas
 * hold. Not part of the build, and never loaded by Tandem itself:
 *
 *   cc -O2 -shared -fPIC -o /tmp/mallinfo.so bench/mallinfo_preload.c -lpthread
 *   LD_PRELOAD=/tmp/mallinfo.so MALLOC_LOG_DIR=/tmp/mi .venv/bin/python bench/soak.py ...
 *
 * The thread blocks every signal: it starts before main() and would otherwise be picked for a
 * SIGTERM that `tandem shard` waits for with sigwait() in its main thread.
 */
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void *log_loop(void *arg)
{
    (void)arg;
    const char *dir = getenv("MALLOC_LOG_DIR");
    const char *ev = getenv("MALLOC_LOG_EVERY");
    unsigned every = ev != NULL && atoi(ev) > 0 ? (unsigned)atoi(ev) : 15;
    char path[512];
    snprintf(path, sizeof(path), "%s/mallinfo-%d.txt", dir, (int)getpid());
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct mallinfo2 m = mallinfo2();
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        FILE *f = fopen(path, "a");
        if (f != NULL) {
            /* in use = small blocks in use + mmapped blocks; arena = what the arenas hold */
            fprintf(f, "%ld arena_kib=%zu mmap_kib=%zu inuse_kib=%zu free_kib=%zu\n",
                    (long)(t.tv_sec - t0.tv_sec), m.arena >> 10, m.hblkhd >> 10,
                    (m.uordblks + m.hblkhd) >> 10, m.fordblks >> 10);
            fclose(f);
        }
        sleep(every);
    }
    return NULL;
}

__attribute__((constructor)) static void mallinfo_log_start(void)
{
    if (getenv("MALLOC_LOG_DIR") == NULL) {
        return;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* inherited by the thread */
    pthread_attr_t a;
    pthread_t th;
    if (pthread_attr_init(&a) == 0) {
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        pthread_create(&th, &a, log_loop, NULL);
        pthread_attr_destroy(&a);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}
