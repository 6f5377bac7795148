/* The threads of a kernel call: helpers kept in a pool between calls (Linux) or
 * started for one call, pinned off the caller's core, each running its job in the
 * caller's floating-point mode. Built once with the baseline flags: nothing here is
 * vector code. */
#define _GNU_SOURCE  /* Linux: sched_getcpu, pthread_attr_setaffinity_np */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "threads.h"

/* The floating-point control state a helper must share with the caller: MXCSR on x86
 * (rounding, flush-to-zero, denormals-are-zero), FPCR on aarch64. A thread keeps the
 * mode it was created with, so a caller that turns on flush-to-zero later (torch's
 * set_flush_denormal does) would otherwise get mixed modes across its threads. */
typedef unsigned long long lf_fpmode;

static lf_fpmode lf_fpmode_get(void)
{
#if defined(__x86_64__)
    return __builtin_ia32_stmxcsr();
#elif defined(__aarch64__)
    unsigned long long v;
    __asm__ volatile("mrs %0, fpcr" : "=r"(v));
    return v;
#else
    return 0;
#endif
}

static void lf_fpmode_set(lf_fpmode m)
{
#if defined(__x86_64__)
    __builtin_ia32_ldmxcsr((unsigned)m);
#elif defined(__aarch64__)
    __asm__ volatile("msr fpcr, %0" : : "r"(m));
#else
    (void)m;
#endif
}

typedef struct {
    void (*fn)(void *, int);
    void *ctx;
    lf_team *team;
    int tid;
    lf_fpmode fpmode;  /* the caller's */
} lf_job;

#ifdef __linux__
/* Where helpers may run: every core this thread may use but the one it is on. Left to
 * itself the scheduler often starts a new thread on its creator's core (measured: in
 * about half of the calls after the process had been idle), where the two then take
 * turns spinning at every barrier and the call takes longer than on one thread. */
static int lf_other_cpus(cpu_set_t *set, int *here)
{
    *here = sched_getcpu();
    if (*here < 0 || *here >= CPU_SETSIZE || sched_getaffinity(0, sizeof *set, set) != 0 ||
        !CPU_ISSET(*here, set) || CPU_COUNT(set) < 2)
        return 0;
    CPU_CLR(*here, set);
    return 1;
}

/* attr, set to start a thread on cpus only, or NULL if it cannot be (destroy it after
 * use when not NULL). */
static pthread_attr_t *lf_pinned_attr(pthread_attr_t *attr, const cpu_set_t *cpus)
{
#ifdef __GLIBC__
    if (pthread_attr_init(attr) != 0) return NULL;
    if (pthread_attr_setaffinity_np(attr, sizeof *cpus, cpus) == 0) return attr;
    pthread_attr_destroy(attr);
#else
    (void)attr; (void)cpus;
#endif
    return NULL;
}
#endif

static void *lf_thread_main(void *arg)
{
    lf_job *job = arg;
    int spins = 0;
    while (!__atomic_load_n(&job->team->go, __ATOMIC_ACQUIRE)) lf_pause(&spins);
    lf_fpmode_set(job->fpmode);
    job->fn(job->ctx, job->tid);
    return NULL;
}

/* Start threads 1 .. want-1 of the team for this call only; how many started. */
static int lf_start_threads(lf_team *tm, int want, void (*fn)(void *, int), void *ctx,
                            pthread_t *th, lf_job *jobs)
{
    const lf_fpmode fpmode = lf_fpmode_get();
    int created = 0;
    pthread_attr_t *pattr = NULL;
#ifdef __linux__
    pthread_attr_t attr;
    cpu_set_t cpus;
    int here;
    if (want > 1 && lf_other_cpus(&cpus, &here)) pattr = lf_pinned_attr(&attr, &cpus);
#endif
    for (int i = 1; i < want; i++) {
        jobs[i].fn = fn; jobs[i].ctx = ctx; jobs[i].team = tm; jobs[i].tid = i;
        jobs[i].fpmode = fpmode;
        if (pthread_create(&th[i], pattr, lf_thread_main, &jobs[i]) != 0) break;
        created++;
    }
    if (pattr) pthread_attr_destroy(pattr);
    return created;
}

#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#if defined(__has_include)
#if __has_include(<linux/futex.h>)
#include <linux/futex.h>
#endif
#endif
#ifndef FUTEX_WAIT_PRIVATE  /* the kernel's ABI values, for a libc without its headers */
#define FUTEX_WAIT_PRIVATE 128
#define FUTEX_WAKE_PRIVATE 129
#endif

/* A helper sleeps on seq (a futex) until the caller bumps it with a job in hand. */
typedef struct {
    pthread_t th;
    int seq;
    lf_job job;       /* fn NULL: stop */
    int *pending;     /* the pool's count of helpers still at work */
} __attribute__((aligned(64))) lf_helper;

struct lf_pool {
    lf_openmp omp;    /* parallel NULL: none */
    lf_helper h[LF_MAX_THREADS];  /* h[1 .. n] started */
    int n;
    pid_t pid;    /* the process that started them */
    int cpu;      /* the core their affinity leaves out */
    int pending;
};

static void lf_futex(int *word, int op, int val)
{
    syscall(SYS_futex, word, op, val, NULL, NULL, 0);
}

static void *lf_helper_main(void *arg)
{
    lf_helper *h = arg;
    int seen = 0;
    for (;;) {
        int s;
        while ((s = __atomic_load_n(&h->seq, __ATOMIC_ACQUIRE)) == seen)
            lf_futex(&h->seq, FUTEX_WAIT_PRIVATE, seen);
        seen = s;
        if (!h->job.fn) return NULL;
        lf_fpmode_set(h->job.fpmode);
        h->job.fn(h->job.ctx, h->job.tid);
        __atomic_sub_fetch(h->pending, 1, __ATOMIC_RELEASE);
    }
}

static void lf_helper_post(lf_helper *h)
{
    __atomic_add_fetch(&h->seq, 1, __ATOMIC_RELEASE);
    lf_futex(&h->seq, FUTEX_WAKE_PRIVATE, 1);
}

lf_pool *lf_pool_new(void)
{
    lf_pool *pool = aligned_alloc(64, sizeof *pool);
    if (!pool) return NULL;
    memset(pool, 0, sizeof *pool);
    pool->pid = getpid();
    pool->cpu = -1;
    return pool;
}

void lf_pool_free(lf_pool *pool)
{
    if (!pool) return;
    if (pool->pid == getpid())
        for (int i = 1; i <= pool->n; i++) {
            pool->h[i].job.fn = NULL;
            lf_helper_post(&pool->h[i]);
            pthread_join(pool->h[i].th, NULL);
        }
    free(pool);
}

/* Helpers 1 .. want-1 of the pool, started if need be and kept off the caller's core;
 * how many there are. */
static int lf_pool_ready(lf_pool *pool, int want)
{
    if (pool->pid != getpid()) {  /* a forked child: the parent's helpers are not here */
        pool->pid = getpid();
        pool->n = 0;
        pool->cpu = -1;
    }
    cpu_set_t cpus;
    int here;
    const int other = lf_other_cpus(&cpus, &here);
    if (other && here != pool->cpu) {
        for (int i = 1; i <= pool->n; i++)
            pthread_setaffinity_np(pool->h[i].th, sizeof cpus, &cpus);
        pool->cpu = here;
    }
    pthread_attr_t attr, *pattr = NULL;
    if (pool->n + 1 < want && other) pattr = lf_pinned_attr(&attr, &cpus);
    while (pool->n + 1 < want) {
        lf_helper *h = &pool->h[pool->n + 1];
        h->seq = 0;
        h->pending = &pool->pending;
        if (pthread_create(&h->th, pattr, lf_helper_main, h) != 0) break;
        pool->n++;
    }
    if (pattr) pthread_attr_destroy(pattr);
    return pool->n + 1 < want ? pool->n : want - 1;
}

/* Run fn(ctx, tid) on the caller (tid 0) and up to want-1 helpers of the pool. */
static void lf_pool_run(lf_pool *pool, lf_team *tm, int want, void (*fn)(void *, int),
                        void *ctx)
{
    const int helpers = want > 1 ? lf_pool_ready(pool, want) : 0;
    const lf_fpmode fpmode = lf_fpmode_get();
    tm->n = helpers + 1;
    pool->pending = helpers;
    for (int i = 1; i <= helpers; i++) {
        lf_job *job = &pool->h[i].job;
        job->fn = fn; job->ctx = ctx; job->team = tm; job->tid = i; job->fpmode = fpmode;
        lf_helper_post(&pool->h[i]);
    }
    fn(ctx, 0);
    int spins = 0;  /* ctx lives on the caller's stack: wait until every helper is done */
    while (__atomic_load_n(&pool->pending, __ATOMIC_ACQUIRE)) lf_pause(&spins);
}
#else
struct lf_pool {
    lf_openmp omp;
};

lf_pool *lf_pool_new(void)
{
    return calloc(1, sizeof(lf_pool));
}

void lf_pool_free(lf_pool *pool)
{
    free(pool);
}
#endif

void lf_pool_use_openmp(lf_pool *pool, const lf_openmp *omp)
{
    pool->omp = *omp;
}

typedef struct {
    lf_job job;  /* tid unused: each thread asks the runtime */
    const lf_openmp *omp;
    unsigned want;
    int ran;     /* set by thread 0 when the team had the size asked for */
} lf_omp_job;

/* One thread of the OpenMP team: every thread sees the same team size, so either all
 * of them run the job or none does. The runtime's threads are the caller's to lend, not
 * ours: each gets its floating-point mode back afterwards. */
static void lf_omp_main(void *arg)
{
    lf_omp_job *oj = arg;
    if ((unsigned)oj->omp->num_threads() != oj->want) return;
    const int tid = oj->omp->thread_num();
    const lf_fpmode own = lf_fpmode_get();
    lf_fpmode_set(oj->job.fpmode);
    oj->job.fn(oj->job.ctx, tid);
    lf_fpmode_set(own);
    if (tid == 0) oj->ran = 1;
}

/* Run fn on `want` threads of the OpenMP team; 0 if the runtime gave another number. */
static int lf_omp_run(const lf_openmp *omp, lf_team *tm, int want, void (*fn)(void *, int),
                      void *ctx)
{
    lf_omp_job oj = {{fn, ctx, tm, 0, lf_fpmode_get()}, omp, (unsigned)want, 0};
    tm->n = want;
    omp->parallel(lf_omp_main, &oj, (unsigned)want, 0);
    return oj.ran;
}

void lf_team_run(lf_team *tm, lf_pool *pool, int want, void (*fn)(void *, int),
                        void *ctx)
{
    tm->count = tm->gen = tm->go = 0;
    if (want > LF_MAX_THREADS) want = LF_MAX_THREADS;
    if (pool && pool->omp.parallel && want > 1 && lf_omp_run(&pool->omp, tm, want, fn, ctx))
        return;
#ifdef __linux__
    if (pool) {
        lf_pool_run(pool, tm, want, fn, ctx);
        return;
    }
#else
    (void)pool;
#endif
    pthread_t th[LF_MAX_THREADS];
    lf_job jobs[LF_MAX_THREADS];
    tm->n = 1;
    const int created = want > 1 ? lf_start_threads(tm, want, fn, ctx, th, jobs) : 0;
    tm->n = created + 1;
    __atomic_store_n(&tm->go, 1, __ATOMIC_RELEASE);
    fn(ctx, 0);
    for (int i = 1; i <= created; i++) pthread_join(th[i], NULL);
}

