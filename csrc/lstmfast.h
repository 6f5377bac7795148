/* lstmfast C API: one direction of one recurrent layer, forward and BPTT backward.
 *
 * All arrays are row-major and contiguous along their last axis; a row stride (ld*)
 * is given where a caller may pass a column slice (the two halves of a bidirectional
 * output). Shapes use T timesteps, B batch rows, I input features, H hidden units,
 * P = size of h (the projection size for an LSTM with projection, else H) and
 * G = gates per cell (LSTM 4: i f g o; GRU 3: r z n; RNN 1).
 *
 * The caller (the Cython binding) validates every size and pointer before a call and
 * allocates every buffer; kernels never allocate, hold no global state and call BLAS
 * only through the table they are handed, so they can run concurrently and without
 * the GIL. Kernels return LF_OK or a negative LF_E* code.
 *
 * The kernels come in variants, one per instruction set (lf_kernels below), compiled
 * from one source; the caller picks one with lf_kernels_get and lf_cpu_supports and
 * calls it through its table.
 */
#ifndef LSTMFAST_H
#define LSTMFAST_H

#include <stddef.h>

/* Fortran BLAS signatures, as scipy.linalg.cython_blas exports them. */
typedef void (*lf_sgemm_fn)(char *transa, char *transb, int *m, int *n, int *k,
                            float *alpha, float *a, int *lda, float *b, int *ldb,
                            float *beta, float *c, int *ldc);
typedef void (*lf_dgemm_fn)(char *transa, char *transb, int *m, int *n, int *k,
                            double *alpha, double *a, int *lda, double *b, int *ldb,
                            double *beta, double *c, int *ldc);

/* set_threads / get_threads: the BLAS pool's process-wide thread count (OpenBLAS), or
 * NULL for a BLAS we cannot steer; filled by lf_find_blas_threads. */
typedef struct {
    lf_sgemm_fn sgemm;
    lf_dgemm_fn dgemm;
    void (*set_threads)(int);
    int (*get_threads)(void);
} lf_blas;

/* Fill bl->set_threads / get_threads from the library that holds `gemm` (blas.c). */
void lf_find_blas_threads(lf_blas *bl, const void *gemm);

/* The BLAS library that holds `gemm`, as OpenBLAS describes itself (version and build
 * options; the kernel core it runs), or NULL for either when it cannot say (blas.c). */
void lf_blas_describe(const void *gemm, const char **config, const char **core);

/* Hold the BLAS pool at one thread while any kernel call is under way (blas.c). */
void lf_blas_single_enter(const lf_blas *bl);
void lf_blas_single_leave(const lf_blas *bl);

enum lf_cell { LF_LSTM = 0, LF_GRU = 1, LF_RNN_TANH = 2, LF_RNN_RELU = 3 };

enum { LF_OK = 0, LF_ECANCELLED = -2 };

/* The fields of the argument structs below, for error codes: an entry point that
 * rejects field f returns LF_EFIELD - f, and lf_field_name(code) names the field. */
enum {
    LF_FIELD_BLAS = 1, LF_FIELD_DIMS, LF_FIELD_X, LF_FIELD_W_IH, LF_FIELD_W_HH,
    LF_FIELD_W_HR, LF_FIELD_H0, LF_FIELD_C0, LF_FIELD_Y, LF_FIELD_H_N, LF_FIELD_C_N,
    LF_FIELD_GATES, LF_FIELD_AUX, LF_FIELD_WORK, LF_FIELD_DY, LF_FIELD_DH_N, LF_FIELD_DC_N,
    LF_FIELD_DX, LF_FIELD_DH0, LF_FIELD_DC0, LF_FIELD_DW_IH, LF_FIELD_DW_HH, LF_FIELD_DW_HR,
    LF_FIELD_COUNT
};
#define LF_EFIELD (-100)
const char *lf_field_name(int code);  /* dispatch.c; "" for a code that names none */

/* A way for the caller to stop a long call: poll(arg) is called by the calling thread
 * between timesteps, at most every LF_POLL_SECONDS (never in a call shorter than that);
 * nonzero stops the call, which then returns LF_ECANCELLED having changed nothing the
 * caller keeps but its outputs (a forward's y, h_n, c_n and cache; a backward's dx,
 * dh0, dc0, and the cache, whose gates it overwrites): never the weight or bias
 * gradients, which a backward adds only after its last step. */
typedef struct {
    int (*poll)(void *arg);
    void *arg;
} lf_cancel;

#define LF_POLL_SECONDS 0.02

/* The shape of one direction of one layer.
 * seq_len T, batch B, input_size I, hidden_size H, out_size P; threads: at most this
 * many threads (fewer when the work per step is too small to share).
 * lengths: NULL (every sequence has T steps) or [B] valid lengths in 1..T sorted in
 * non-increasing order, so that the rows active at any step are a prefix of the batch.
 * reverse: process t = T-1 .. 0; with lengths each row starts at its own last step. */
typedef struct {
    int cell, seq_len, batch, input_size, hidden_size, out_size, reverse, threads;
    const int *lengths;
    struct lf_pool *pool;  /* helpers kept between calls (lf_pool), or NULL */
    const lf_cancel *cancel;  /* NULL: the call cannot be stopped */
    int part;  /* lf_backward: which part of the work (LF_BWD_*); forward ignores it */
} lf_dims;

/* A backward in one call (LF_BWD_ALL), or in two: LF_BWD_RECURRENCE does everything
 * but the weight and bias gradients (dx, dh0, dc0, the cache's gate gradients) and
 * leaves what they need in work, then LF_BWD_WEIGHTS, given the same arguments and
 * work, adds them. Only the first part can be cancelled; a caller running several
 * layers runs every first part, then every second, so that a cancelled backward leaves
 * every gradient as it was. */
enum { LF_BWD_ALL = 0, LF_BWD_RECURRENCE = 1, LF_BWD_WEIGHTS = 2 };

/* Helper threads that sleep between kernel calls, for one caller at a time: a layer
 * keeps one, so that its calls wake threads (~15 us) instead of starting them (70-900
 * us, measured). They are started as calls need them and stopped by lf_pool_free; in a
 * forked child the parent's helpers do not exist and new ones are started. NULL when
 * out of memory. */
typedef struct lf_pool lf_pool;
lf_pool *lf_pool_new(void);
void lf_pool_free(lf_pool *pool);

/* An OpenMP runtime already loaded in the process (torch's): GOMP_parallel and
 * omp_get_thread_num / omp_get_num_threads, found by the caller. A pool given one runs
 * its calls on that runtime's team instead of its own helpers: inside a torch process
 * those threads spin for milliseconds after every torch operation, so helpers of our
 * own would fight them for the cores (measured: a 2-layer LSTM training step 1.3x
 * slower than with one thread). A team of another size than asked falls back to the
 * pool's own helpers. */
typedef struct {
    void (*parallel)(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
    int (*thread_num)(void);
    int (*num_threads)(void);
} lf_openmp;

void lf_pool_use_openmp(lf_pool *pool, const lf_openmp *omp);

/* Gates per cell, and the size of the per-step extra cache (LSTM: c_t, GRU: the
 * recurrent part of n, RNN: none) in elements per row. */
static inline int lf_num_gates(int cell)
{
    return cell == LF_LSTM ? 4 : cell == LF_GRU ? 3 : 1;
}

static inline int lf_aux_size(int cell, int H)
{
    return cell == LF_LSTM || cell == LF_GRU ? H : 0;
}

/* The entry points of one variant, in its table (lf_kernels): forward and backward take
 * one argument struct each (lf_forward_args, lf_backward_args: the fields below) and
 * return LF_OK, LF_ECANCELLED, or LF_EFIELD - LF_FIELD_<name> for the field they reject.
 * forward_work_size / backward_work_size: elements of scratch that forward / backward
 * need for these dims (the variants' packed layouts differ in size).
 *
 * Forward.
 *   x [T*B, I] (row stride ldx); w_ih [G*H, I]; w_hh [G*H, P]; b_ih, b_hh [G*H] or NULL;
 *   w_hr [P, H] (LSTM with projection, else NULL); h0 [B, P], c0 [B, H] or NULL (zeros).
 *   y [T*B, P] (row stride ldy) receives h_t, zero past each row's length;
 *   h_n [B, P], c_n [B, H] (c_n NULL unless LSTM) receive each row's final state.
 *   Training: gates [T*B, G*H] receives the gate activations and aux [T*B, aux_size]
 *   the extra cache; both feed lf_backward. Inference: gates and aux are NULL.
 *   work: lf_forward_work_size(d, training) elements. work_reused: work is the buffer
 *   an earlier call for the same weights' shapes was given (a layer keeps it). In
 *   inference the buffer then keeps the packed weights with a copy of the weights they
 *   were packed from: a call compares the weights with the copy (sequential reads) and
 *   packs again only where they differ, so a weight changed in place is always seen.
 *   work_reused == 2: the same, but the caller guarantees the weights have not changed
 *   since the call that packed them (a frozen layer, whose weights are read-only): the
 *   kept panels are used unchecked. A buffer another variant packed is packed again. */
typedef struct {
    const lf_blas *blas;
    lf_dims dims;
    const void *x;          /* the arrays are float * or double *, as the entry point */
    int ldx;
    const void *w_ih, *w_hh, *b_ih, *b_hh, *w_hr, *h0, *c0;
    void *y;
    int ldy;
    void *h_n, *c_n, *gates, *aux, *work;
    int work_reused;
} lf_forward_args;
typedef int lf_forward_fn(const lf_forward_args *args);

/* Backward through time, consuming the forward's cache: gates and aux are overwritten
 * with the gate pre-activation gradients, so each cache is good for one backward.
 *   x, weights, h0, c0, y as given to / produced by the training forward.
 *   dy [T*B, P] (row stride lddy); dh_n [B, P], dc_n [B, H] or NULL (zeros).
 *   dx [T*B, I] (row stride lddx): written, or added to when accumulate_dx is set
 *   (the second direction of a bidirectional layer); dh0 [B, P], dc0 [B, H] written
 *   (dc0 NULL unless LSTM). dw_ih, dw_hh, db_ih, db_hh, dw_hr are added to (db_* and
 *   dw_hr may be NULL when the layer has none).
 *   dh_norms: NULL, or [T] receiving ||dL/dh_t|| over the batch at each step t (the
 *   gradient-flow diagnostic: how much gradient reaches each timestep).
 *   work: lf_backward_work_size(d) elements. */
typedef struct {
    const lf_blas *blas;
    lf_dims dims;           /* dims.part: all of it, or one of its two parts (LF_BWD_*) */
    const void *x;          /* the arrays are float * or double *, as the entry point */
    int ldx;
    const void *w_ih, *w_hh, *w_hr, *h0, *c0, *y;
    int ldy;
    void *gates, *aux;
    const void *dy;
    int lddy;
    const void *dh_n, *dc_n;
    void *dx;
    int lddx, accumulate_dx;
    void *dh0, *dc0, *dw_ih, *dw_hh, *db_ih, *db_hh, *dw_hr;
    double *dh_norms;
    void *work;
} lf_backward_args;
typedef int lf_backward_fn(const lf_backward_args *args);

/* One variant of the kernels, built for one instruction set. */
typedef struct {
    const char *isa;     /* "avx512", "avx2", "neon" or "baseline" */
    int vec_bytes;       /* its vector width, and its packed panels' column group */
    int tile_rows;       /* rows of its per-step register tile */
    size_t (*forward_work_size_f32)(const lf_dims *d, int training);
    size_t (*forward_work_size_f64)(const lf_dims *d, int training);
    size_t (*backward_work_size_f32)(const lf_dims *d);
    size_t (*backward_work_size_f64)(const lf_dims *d);
    lf_forward_fn *forward_f32;
    lf_forward_fn *forward_f64;
    lf_backward_fn *backward_f32;
    lf_backward_fn *backward_f64;
    /* the variant's multiply-add ceiling: n rounds of register-resident vector FMAs;
     * returns the flops done (a benchmark times it) */
    double (*fma_peak_f32)(long n, float *out);
    double (*fma_peak_f64)(long n, double *out);
} lf_kernels;

/* The i-th variant this build holds, widest first; NULL past the last (dispatch.c).
 * Whether this CPU and its OS can run a variant: 1 or 0 (CPUID and XGETBV on x86-64). */
const lf_kernels *lf_kernels_get(int i);
int lf_cpu_supports(const char *isa);

/* The compiler this build came from, with its version. */
const char *lf_compiler(void);

#endif
