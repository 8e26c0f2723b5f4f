/*
 * pool.c - kern_ctx_t: the chosen ISA, a pthread pool and scratch buffers;
 * kern_parallel_for.
 *
 * The calling thread is thread 0; n_threads - 1 workers wait for a job. A job is
 * published by writing it into one of two slots and bumping `cur` (its id); workers
 * spin briefly on `cur` (decode issues many short matmuls back to back, and a
 * condition-variable wake-up costs tens of microseconds) and then sleep on cv_work.
 * Every thread, the caller included, takes chunks from the job's atomic counter until
 * none are left, and adds the items it finished to `done`. The caller returns as soon as
 * every item is done: it never waits for a worker that has not started (on a machine
 * shared with other work a worker may not get a CPU for milliseconds, and the caller
 * simply runs its chunks), only for chunks already taken, yielding the CPU while it
 * waits. A worker that wakes late finds the job over; the two slots and their `active`
 * counts make sure a late worker never reads a slot while the caller rewrites it.
 */
#include "kernels/cpu/pool.h"

#include "common/cpu_features.h"
#include "common/mem.h"
#include "kernels/cpu/types_cpu.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define KERN_SPIN_ITERS   4096
#define KERN_YIELD_AFTER  256 /* caller's spins on unfinished chunks before yielding */
#define KERN_CHUNKS_PER_T 4   /* chunks per thread a job is cut into, for balance */

typedef struct kern_worker {
    kern_ctx_t *ctx;
    int idx;
    void *scratch;
    size_t scratch_cap;
} kern_worker_t;

/* One job. Its fields are written only while `active` is 0 and `cur` names another
 * job, so no worker can be reading them. */
typedef struct kern_job {
    kern_task_fn fn;
    void *arg;
    int64_t n, chunk;
    atomic_int_fast64_t next;
    atomic_int_fast64_t done; /* items finished */
    atomic_int active;        /* workers inside this slot */
} kern_job_t;

struct kern_ctx {
    int n_threads;
    kern_isa_t isa;
    int amx; /* Q4_K products on AMX (kern_ctx_amx) */

    pthread_t *threads; /* n_threads - 1 workers (indices 1..n_threads-1) */
    int n_started;
    kern_worker_t *workers; /* n_threads entries; [0] is the calling thread's scratch */

    pthread_mutex_t mu;
    pthread_cond_t cv_work;
    atomic_uint_fast64_t cur; /* id of the latest job; its slot is jobs[cur & 1] */
    atomic_int n_sleeping;
    atomic_int stop;
    kern_job_t jobs[2];

    void *shared;
    size_t shared_cap;
};

/* Which context's task, if any, this thread is running (nested calls run serially). */
static _Thread_local const kern_ctx_t *tls_task_ctx;
static _Thread_local int tls_task_idx;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

int kern_in_task(void)
{
    return tls_task_ctx != NULL;
}

static void run_chunks(kern_ctx_t *ctx, kern_job_t *job, int idx)
{
    const kern_ctx_t *saved_ctx = tls_task_ctx;
    const int saved_idx = tls_task_idx;
    tls_task_ctx = ctx;
    tls_task_idx = idx;
    for (;;) {
        const int64_t begin =
            atomic_fetch_add_explicit(&job->next, job->chunk, memory_order_relaxed);
        if (begin >= job->n) {
            break;
        }
        const int64_t end = begin + job->chunk < job->n ? begin + job->chunk : job->n;
        job->fn(job->arg, begin, end, idx);
        atomic_fetch_add_explicit(&job->done, end - begin, memory_order_release);
    }
    tls_task_ctx = saved_ctx;
    tls_task_idx = saved_idx;
}

static void *worker_main(void *p)
{
    kern_worker_t *w = p;
    kern_ctx_t *ctx = w->ctx;
    uint_fast64_t seen = 0;
    for (;;) {
        uint_fast64_t g = atomic_load(&ctx->cur);
        for (int i = 0; g == seen && i < KERN_SPIN_ITERS && !atomic_load(&ctx->stop); i++) {
            cpu_relax();
            g = atomic_load(&ctx->cur);
        }
        if (g == seen) {
            pthread_mutex_lock(&ctx->mu);
            atomic_fetch_add(&ctx->n_sleeping, 1);
            while ((g = atomic_load(&ctx->cur)) == seen && !atomic_load(&ctx->stop)) {
                pthread_cond_wait(&ctx->cv_work, &ctx->mu);
            }
            atomic_fetch_sub(&ctx->n_sleeping, 1);
            pthread_mutex_unlock(&ctx->mu);
        }
        if (atomic_load(&ctx->stop)) {
            break;
        }
        seen = g;
        kern_job_t *job = &ctx->jobs[g & 1];
        atomic_fetch_add(&job->active, 1);
        /* Still the current job? If not, the caller may be rewriting this slot. */
        if (atomic_load(&ctx->cur) == g) {
            run_chunks(ctx, job, w->idx);
        }
        atomic_fetch_sub_explicit(&job->active, 1, memory_order_release);
    }
    return NULL;
}

/* Asks the kernel for the AMX tile state (once per process is enough; repeating it is
 * harmless). 0 where AMX is not built or not granted. */
static int amx_request(void)
{
#if defined(KERN_HAVE_AMX)
    return kern_amx_request();
#else
    return 0;
#endif
}

tdm_status_t kern_ctx_create(int n_threads, kern_isa_t isa_override, kern_ctx_t **out,
                             tdm_error_t *err)
{
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    if (n_threads <= 0) {
        n_threads = f.n_cpus > 0 ? f.n_cpus : 1;
    }
    if (n_threads > 1024) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "kern_ctx_create: %d threads is too many",
                             n_threads);
    }
    kern_isa_t isa = kern_cpu_isa_best(&f);
    if (isa_override != KERN_ISA_COUNT) {
        if ((unsigned)isa_override >= KERN_ISA_COUNT || !kern_isa_supported(isa_override, &f)) {
            return tdm_error_set(err, TDM_ERR_UNSUPPORTED,
                                 "kern_ctx_create: ISA %s is not supported by this build or CPU",
                                 kern_isa_name(isa_override));
        }
        isa = isa_override;
    }

    kern_ctx_t *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kern_ctx_create: out of memory");
    }
    ctx->n_threads = n_threads;
    ctx->isa = isa;
    /* AMX belongs to the AVX-512 level (TANDEM_CPU_ISA=avx2 turns it off with the rest);
     * TANDEM_CPU_AMX=0 keeps AVX-512 without it, for comparison */
    const char *amx_env = getenv("TANDEM_CPU_AMX");
    ctx->amx = isa == KERN_ISA_AVX512 && f.amx_int8 && kern_gemm_amx_get(TDM_TYPE_Q4_K) != NULL &&
               (amx_env == NULL || strcmp(amx_env, "0") != 0) && amx_request();
    atomic_init(&ctx->cur, 0);
    atomic_init(&ctx->n_sleeping, 0);
    atomic_init(&ctx->stop, 0);
    for (int i = 0; i < 2; i++) {
        atomic_init(&ctx->jobs[i].next, 0);
        atomic_init(&ctx->jobs[i].done, 0);
        atomic_init(&ctx->jobs[i].active, 0);
    }
    ctx->workers = calloc((size_t)n_threads, sizeof(*ctx->workers));
    ctx->threads = n_threads > 1 ? calloc((size_t)n_threads - 1, sizeof(pthread_t)) : NULL;
    if (ctx->workers == NULL || (n_threads > 1 && ctx->threads == NULL)) {
        free(ctx->workers);
        free(ctx->threads);
        free(ctx);
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "kern_ctx_create: out of memory");
    }
    pthread_mutex_init(&ctx->mu, NULL);
    pthread_cond_init(&ctx->cv_work, NULL);
    for (int i = 0; i < n_threads; i++) {
        ctx->workers[i].ctx = ctx;
        ctx->workers[i].idx = i;
    }
    for (int i = 1; i < n_threads; i++) {
        int rc = pthread_create(&ctx->threads[i - 1], NULL, worker_main, &ctx->workers[i]);
        if (rc != 0) {
            kern_ctx_destroy(ctx);
            return tdm_error_set(err, TDM_ERR_NO_MEMORY,
                                 "kern_ctx_create: pthread_create failed for worker %d: %s", i,
                                 strerror(rc));
        }
        ctx->n_started++;
    }
    *out = ctx;
    return TDM_OK;
}

void kern_ctx_destroy(kern_ctx_t *ctx)
{
    if (ctx == NULL) {
        return;
    }
    pthread_mutex_lock(&ctx->mu);
    atomic_store(&ctx->stop, 1);
    pthread_cond_broadcast(&ctx->cv_work);
    pthread_mutex_unlock(&ctx->mu);
    for (int i = 0; i < ctx->n_started; i++) {
        pthread_join(ctx->threads[i], NULL);
    }
    pthread_cond_destroy(&ctx->cv_work);
    pthread_mutex_destroy(&ctx->mu);
    for (int i = 0; i < ctx->n_threads; i++) {
        free(ctx->workers[i].scratch);
    }
    free(ctx->workers);
    free(ctx->threads);
    free(ctx->shared);
    free(ctx);
}

int kern_ctx_n_threads(const kern_ctx_t *ctx)
{
    return ctx->n_threads;
}

kern_isa_t kern_ctx_isa(const kern_ctx_t *ctx)
{
    return ctx->isa;
}

int kern_ctx_amx(const kern_ctx_t *ctx)
{
    return ctx->amx;
}

void kern_parallel_for(kern_ctx_t *ctx, int64_t n, int64_t grain, kern_task_fn fn, void *arg)
{
    if (n <= 0) {
        return;
    }
    if (grain < 1) {
        grain = 1;
    }
    if (tls_task_ctx != NULL) { /* nested: serially, as the calling thread */
        fn(arg, 0, n, tls_task_ctx == ctx ? tls_task_idx : 0);
        return;
    }
    const int nt = ctx->n_threads;
    if (nt == 1 || n <= grain) {
        tls_task_ctx = ctx;
        tls_task_idx = 0;
        fn(arg, 0, n, 0);
        tls_task_ctx = NULL;
        return;
    }
    int64_t chunk = (n + (int64_t)nt * KERN_CHUNKS_PER_T - 1) / ((int64_t)nt * KERN_CHUNKS_PER_T);
    if (chunk < grain) {
        chunk = grain;
    }
    const uint_fast64_t id = atomic_load_explicit(&ctx->cur, memory_order_relaxed) + 1;
    kern_job_t *job = &ctx->jobs[id & 1];
    /* The slot last served job id - 2; a worker may still be leaving it. */
    for (int i = 0; atomic_load(&job->active) != 0; i++) {
        if (i < KERN_YIELD_AFTER) {
            cpu_relax();
        } else {
            sched_yield();
        }
    }
    job->fn = fn;
    job->arg = arg;
    job->n = n;
    job->chunk = chunk;
    atomic_store_explicit(&job->next, 0, memory_order_relaxed);
    atomic_store_explicit(&job->done, 0, memory_order_relaxed);
    atomic_store(&ctx->cur, id); /* publishes the fields above */
    if (atomic_load(&ctx->n_sleeping) > 0) {
        pthread_mutex_lock(&ctx->mu);
        pthread_cond_broadcast(&ctx->cv_work);
        pthread_mutex_unlock(&ctx->mu);
    }

    run_chunks(ctx, job, 0);

    /* Only chunks another thread took can be outstanding. */
    for (int i = 0; atomic_load_explicit(&job->done, memory_order_acquire) < n; i++) {
        if (i < KERN_YIELD_AFTER) {
            cpu_relax();
        } else {
            sched_yield(); /* let a descheduled worker finish its chunk */
        }
    }
}

static void *grow(void **buf, size_t *cap, size_t bytes)
{
    if (bytes <= *cap && *buf != NULL) {
        return *buf;
    }
    size_t want = bytes < 4096 ? 4096 : bytes + bytes / 4;
    void *p = tdm_aligned_alloc(want);
    if (p == NULL) {
        return NULL;
    }
    free(*buf);
    *buf = p;
    *cap = want;
    return p;
}

void *kern_ctx_shared_scratch(kern_ctx_t *ctx, size_t bytes)
{
    return grow(&ctx->shared, &ctx->shared_cap, bytes);
}

void *kern_ctx_thread_scratch(kern_ctx_t *ctx, int thread_idx, size_t bytes)
{
    if (thread_idx < 0 || thread_idx >= ctx->n_threads) {
        return NULL;
    }
    kern_worker_t *w = &ctx->workers[thread_idx];
    return grow(&w->scratch, &w->scratch_cap, bytes);
}
