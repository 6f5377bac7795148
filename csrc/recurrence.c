/* Instantiates the recurrence driver, the packed per-step GEMM and the cells for float
 * and double from one template each (recurrence.template.h, panel.template.h,
 * cells.template.h), plus the dtype-free helpers: shapes, lengths, threads. */
#define _GNU_SOURCE  /* Linux: sched_getcpu, pthread_attr_setaffinity_np */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "lstmfast.h"
#include "pointwise.h"

int lf_num_gates(int cell)
{
    return cell == LF_LSTM ? 4 : cell == LF_GRU ? 3 : 1;
}

int lf_aux_size(int cell, int H)
{
    return cell == LF_LSTM || cell == LF_GRU ? H : 0;
}

/* Columns of dG that are also the recurrent-side gradient (see cells.template.h). */
static int lf_hh_split(int cell, int H)
{
    return cell == LF_GRU ? 2 * H : lf_num_gates(cell) * H;
}

static int lf_has_proj(const lf_dims *d)
{
    return d->cell == LF_LSTM && d->out_size != d->hidden_size;
}

static int lf_dims_valid(const lf_dims *d)
{
    if (!d || d->cell < LF_LSTM || d->cell > LF_RNN_RELU || d->seq_len < 1 || d->batch < 1 ||
        d->input_size < 1 || d->hidden_size < 1 || d->out_size < 1 || d->out_size > d->hidden_size || (d->out_size != d->hidden_size && d->cell != LF_LSTM))
        return 0;
    if (d->lengths)
        for (int b = 0; b < d->batch; b++)
            if (d->lengths[b] < 1 || d->lengths[b] > d->seq_len ||
                (b > 0 && d->lengths[b] > d->lengths[b - 1]))
                return 0;
    return 1;
}

/* Rows active at step t: those with length > t, a prefix since lengths are sorted. */
static int lf_active(const lf_dims *d, int t)
{
    if (!d->lengths) return d->batch;
    int lo = 0, hi = d->batch;  /* first row with length <= t lies in [lo, hi] */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (d->lengths[mid] > t) lo = mid + 1; else hi = mid;
    }
    return lo;
}

static ptrdiff_t lf_total_rows(const lf_dims *d)
{
    if (!d->lengths) return (ptrdiff_t)d->seq_len * d->batch;
    ptrdiff_t n = 0;
    for (int b = 0; b < d->batch; b++) n += d->lengths[b];
    return n;
}

/* The packed rows of step t (the s-th in the forward's order, which starts at off): how
 * many of its nb rows carry the state of the forward's previous step (the others start
 * from h0: only in the reverse direction with lengths), and where that step's rows begin. */
static int lf_carried(const lf_dims *d, int s, int t, int nb, ptrdiff_t off,
                      ptrdiff_t *offprev)
{
    const int nprev = s == 0 ? 0 : lf_active(d, d->reverse ? t + 1 : t - 1);
    *offprev = d->reverse ? off + nb : off - nprev;
    return nb < nprev ? nb : nprev;
}

/* Where the packed rows of the first step in the forward's order begin. */
static ptrdiff_t lf_first_offset(const lf_dims *d)
{
    return d->reverse ? lf_total_rows(d) - lf_active(d, d->seq_len - 1) : 0;
}

/* From step t's rows (at off, nb of them) to the next step's in the forward's order. */
static ptrdiff_t lf_next_offset(const lf_dims *d, int t, int nb, ptrdiff_t off)
{
    return d->reverse ? off - (t > 0 ? lf_active(d, t - 1) : 0) : off + nb;
}

/* Inference projects the input a chunk of steps at a time: enough rows for an
 * efficient GEMM, while memory stays independent of T. */
static int lf_chunk_steps(const lf_dims *d)
{
    int steps = 512 / d->batch;
    if (steps < 1) steps = 1;
    return steps < d->seq_len ? steps : d->seq_len;
}

/* ---- threads ------------------------------------------------------------------- */

#define LF_MAX_THREADS 64
/* room for aligning the work buffer and each piece carved from it */
#define LF_WORK_SLACK (64 + 16 * 32 + LF_WORK_HEADER)
/* the start of a forward's work buffer: what its packed weights are (lf_forward) */
#define LF_WORK_HEADER 64

/* A team of threads for one kernel call (the caller is thread 0), with a spin
 * barrier: the threads meet once or twice per timestep, microseconds apart, too often
 * to sleep in between. */
typedef struct {
    int n;
    int count, gen, go;
} lf_team;

static void lf_pause(int *spins)
{
    if (++*spins > 2000) {  /* someone else has the core: let them run */
        sched_yield();
        *spins = 0;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void lf_barrier_wait(lf_team *tm)
{
    if (tm->n == 1) return;
    const int gen = __atomic_load_n(&tm->gen, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&tm->count, 1, __ATOMIC_ACQ_REL) == tm->n) {
        __atomic_store_n(&tm->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&tm->gen, gen + 1, __ATOMIC_RELEASE);
    } else {
        int spins = 0;
        while (__atomic_load_n(&tm->gen, __ATOMIC_ACQUIRE) == gen) lf_pause(&spins);
    }
}

/* A counter alone on its cache line: threads taking work from it do not slow down
 * the owners of its neighbours. */
typedef struct {
    int n;
    char pad[60];
} lf_counter;

typedef struct {
    void (*fn)(void *, int);
    void *ctx;
    lf_team *team;
    int tid;
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
    if (pthread_attr_init(attr) != 0) return NULL;
    if (pthread_attr_setaffinity_np(attr, sizeof *cpus, cpus) == 0) return attr;
    pthread_attr_destroy(attr);
    return NULL;
}
#endif

static void *lf_thread_main(void *arg)
{
    lf_job *job = arg;
    int spins = 0;
    while (!__atomic_load_n(&job->team->go, __ATOMIC_ACQUIRE)) lf_pause(&spins);
    job->fn(job->ctx, job->tid);
    return NULL;
}

/* Start threads 1 .. want-1 of the team for this call only; how many started. */
static int lf_start_threads(lf_team *tm, int want, void (*fn)(void *, int), void *ctx,
                            pthread_t *th, lf_job *jobs)
{
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
        if (pthread_create(&th[i], pattr, lf_thread_main, &jobs[i]) != 0) break;
        created++;
    }
    if (pattr) pthread_attr_destroy(pattr);
    return created;
}

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

/* A helper sleeps on seq (a futex) until the caller bumps it with a job in hand. */
typedef struct {
    pthread_t th;
    int seq;
    lf_job job;       /* fn NULL: stop */
    int *pending;     /* the pool's count of helpers still at work */
} __attribute__((aligned(64))) lf_helper;

struct lf_pool {
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
    tm->n = helpers + 1;
    pool->pending = helpers;
    for (int i = 1; i <= helpers; i++) {
        lf_job *job = &pool->h[i].job;
        job->fn = fn; job->ctx = ctx; job->team = tm; job->tid = i;
        lf_helper_post(&pool->h[i]);
    }
    fn(ctx, 0);
    int spins = 0;  /* ctx lives on the caller's stack: wait until every helper is done */
    while (__atomic_load_n(&pool->pending, __ATOMIC_ACQUIRE)) lf_pause(&spins);
}
#else
struct lf_pool {
    int unused;
};

lf_pool *lf_pool_new(void)
{
    return malloc(sizeof(lf_pool));
}

void lf_pool_free(lf_pool *pool)
{
    free(pool);
}
#endif

/* Run fn(ctx, tid) on up to `want` threads, the caller being thread 0: the pool's
 * helpers, else threads started for this call. team->n is the number that really run,
 * fixed before any of them starts (a thread that cannot be created is simply absent). */
static void lf_team_run(lf_team *tm, lf_pool *pool, int want, void (*fn)(void *, int),
                        void *ctx)
{
    tm->count = tm->gen = tm->go = 0;
    if (want > LF_MAX_THREADS) want = LF_MAX_THREADS;
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

/* The most threads a team for these dims can have (per-thread scratch). */
static int lf_max_team(const lf_dims *d)
{
    return d->threads < 1 ? 1 : d->threads > LF_MAX_THREADS ? LF_MAX_THREADS : d->threads;
}

/* Threads worth using: no more than requested or than there are panels to share, and
 * one when a step is too small to pay for a barrier or the call too small to pay for
 * waking a helper (~15 us) or starting a thread (70-900 us). Thresholds in
 * multiply-adds of the recurrent GEMM; measured at B = 1-2, H = 96-128: two threads
 * 1.1-1.25x faster in training, 1.0-1.2x in inference (pool). */
static int lf_team_size(const lf_dims *d, int npanels)
{
    int n = lf_max_team(d);
    if (n > npanels) n = npanels;
    double per_step = (double)d->batch * d->out_size * lf_num_gates(d->cell) * d->hidden_size;
    return per_step < 32768 || per_step * d->seq_len < (d->pool ? 1e6 : 4e6) ? 1 : n;
}

/* [lo, hi): part i of n items split into parts */
static void lf_split(int n, int parts, int i, int *lo, int *hi)
{
    *lo = (int)((long long)n * i / parts);
    *hi = (int)((long long)n * (i + 1) / parts);
}

#define TYPE float
#define VL_IS_8 1
#define FN(name) name##_f32
#define BLAS_GEMM(bl) ((bl)->sgemm)
#include "cells.template.h"
#include "panel.template.h"
#include "recurrence.template.h"
#undef TYPE
#undef FN
#undef BLAS_GEMM
#undef VL
#undef VL_IS_8

#define TYPE double
#define VL_IS_8 0
#define FN(name) name##_f64
#define BLAS_GEMM(bl) ((bl)->dgemm)
#include "cells.template.h"
#include "panel.template.h"
#include "recurrence.template.h"
#undef TYPE
#undef FN
#undef BLAS_GEMM
#undef VL
#undef VL_IS_8
