/* Internal: the threads of one kernel call (threads.c), shared by every kernel variant.
 * Only this header's inline functions are compiled into the variants; threads.c is
 * built once, with the baseline flags. */
#ifndef LSTMFAST_THREADS_H
#define LSTMFAST_THREADS_H

#include <sched.h>
#include <time.h>
#include "lstmfast.h"

#define LF_MAX_THREADS 64

/* A team of threads for one kernel call (the caller is thread 0), with a spin
 * barrier: the threads meet once or twice per timestep, microseconds apart, too often
 * to sleep in between. */
typedef struct {
    int n;
    int count, gen, go;
} lf_team;

static inline void lf_pause(int *spins)
{
    if (++*spins > 2000) {  /* someone else has the core: let them run */
        sched_yield();
        *spins = 0;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static inline void lf_barrier_wait(lf_team *tm)
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

/* [lo, hi): part i of n items split into parts */
static inline void lf_split(int n, int parts, int i, int *lo, int *hi)
{
    *lo = (int)((long long)n * i / parts);
    *hi = (int)((long long)n * (i + 1) / parts);
}

/* Whether the caller asks the call to stop: polled by thread 0 once per step, which
 * costs a clock read until `next` (seconds, CLOCK_MONOTONIC) is reached. Start with
 * next = lf_poll_start(). */
static inline double lf_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline double lf_poll_start(void)
{
    return lf_now() + LF_POLL_SECONDS;
}

static inline int lf_should_stop(const lf_cancel *cancel, double *next)
{
    if (!cancel) return 0;
    const double now = lf_now();
    if (now < *next) return 0;
    *next = now + LF_POLL_SECONDS;
    return cancel->poll(cancel->arg) != 0;
}

/* Whether every thread of the team leaves at this barrier, the one after step s: thread
 * 0 polls the caller's cancel before it and, to stop, sets *stop to s + 1, which every
 * thread reads after it. The step is named so that a thread that reads *stop late (held
 * up past thread 0's next poll) cannot take a decision for a later barrier for this one
 * and leave thread 0 waiting there. s >= 0, distinct for each barrier of a call. */
static inline int lf_team_stops(lf_team *tm, int *stop, int s, int tid,
                                const lf_cancel *cancel, double *next)
{
    if (tid == 0 && lf_should_stop(cancel, next)) __atomic_store_n(stop, s + 1, __ATOMIC_RELAXED);
    lf_barrier_wait(tm);
    return __atomic_load_n(stop, __ATOMIC_RELAXED) == s + 1;
}

/* Run fn(ctx, tid) on up to `want` threads, the caller being thread 0: the pool's
 * helpers, else threads started for this call. team->n is the number that really run,
 * fixed before any of them starts (a thread that cannot be created is simply absent).
 * Every helper runs fn in the caller's floating-point mode (rounding, flush-to-zero). */
void lf_team_run(lf_team *tm, lf_pool *pool, int want, void (*fn)(void *, int), void *ctx);

#endif
