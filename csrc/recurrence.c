/* One kernel variant: the recurrence driver, the packed per-step GEMM and the cells
 * for float and double from one template each (recurrence.template.h,
 * panel.template.h, cells.template.h), plus the dtype-free helpers: shapes, lengths.
 *
 * setup.py compiles this file once per instruction set it can build, each time with
 * that set's compiler flags and one LF_VARIANT_* macro; everything here is static but
 * the variant's table, lf_kernels_<isa>, through which the binding calls it. So no
 * function built for a wider instruction set can be reached except through a table
 * that dispatch.c hands out only when the CPU has that set. Per variant:
 *   LF_VEC_BYTES  the vector width, which is also the packed panels' column group
 *   LF_TILE_ROWS  rows of a register tile of 2 vectors: 12 accumulators of 16
 *                 registers (SSE2, AVX2), 24 of 32 (AVX-512, NEON)
 * (both may be given on the command line, so that a test can build the wide layout
 * for a narrower instruction set: see tests/c/). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "lstmfast.h"
#include "pointwise.h"
#include "threads.h"

#if defined(LF_VARIANT_AVX512)
#define LF_ISA avx512
#define LF_ISA_VEC 64
#define LF_ISA_ROWS 12
#if !defined(__AVX512F__) && !defined(LF_VEC_BYTES)
#error "the avx512 variant needs the x86-64-v4 features (setup.py, X86_V4)"
#endif
#elif defined(LF_VARIANT_AVX2)
#define LF_ISA avx2
#define LF_ISA_VEC 32
#define LF_ISA_ROWS 6
#if !defined(__AVX2__) || !defined(__FMA__)
#error "the avx2 variant needs the x86-64-v3 features (setup.py, X86_V3)"
#endif
#elif defined(LF_VARIANT_NEON)
#define LF_ISA neon
#define LF_ISA_VEC 16
#define LF_ISA_ROWS 12
#if !defined(__aarch64__)
#error "the neon variant is for aarch64"
#endif
#else
#define LF_ISA baseline
#define LF_ISA_VEC 16
#define LF_ISA_ROWS 6
#endif
#ifndef LF_VEC_BYTES
#define LF_VEC_BYTES LF_ISA_VEC
#endif
#ifndef LF_TILE_ROWS
#define LF_TILE_ROWS LF_ISA_ROWS
#endif
/* The big GEMMs of a layer (the input projection of many rows of a wide input, the
 * weight gradients, dx) go to BLAS where its kernels are as wide as ours, and to our own
 * tiles where ours are wider: scipy's OpenBLAS may run narrower kernels than the CPU
 * has (OPENBLAS_CORETYPE=Haswell, set on some Zen 5 machines, makes it run AVX2). On AVX2
 * our tiles ran these at 0.90-1.0x of OpenBLAS's rate (see weight_grad and
 * own_input_projection), so at twice the width they are ahead. */
#ifndef LF_OWN_GEMMS
#define LF_OWN_GEMMS (LF_VEC_BYTES >= 64)
#endif
#define LF_STR2(x) #x
#define LF_STR(x) LF_STR2(x)
#define LF_CAT2(a, b) a##b
#define LF_CAT(a, b) LF_CAT2(a, b)

/* Columns of dG that are also the recurrent-side gradient (see cells.template.h). */
static int lf_hh_split(int cell, int H)
{
    return cell == LF_GRU ? 2 * H : lf_num_gates(cell) * H;
}

static int lf_has_proj(const lf_dims *d)
{
    return d->cell == LF_LSTM && d->out_size != d->hidden_size;
}

/* Return the code naming `field` unless cond holds (lstmfast.h: LF_EFIELD). */
#define LF_REQUIRE(cond, field) \
    do { if (!(cond)) return LF_EFIELD - (field); } while (0)

static int lf_dims_valid(const lf_dims *d)
{
    if (!d || d->cell < LF_LSTM || d->cell > LF_RNN_RELU || d->seq_len < 1 || d->batch < 1 ||
        d->input_size < 1 || d->hidden_size < 1 || d->out_size < 1 || d->out_size > d->hidden_size || (d->out_size != d->hidden_size && d->cell != LF_LSTM) ||
        d->part < LF_BWD_ALL || d->part > LF_BWD_WEIGHTS)
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

/* Rows [b0, b1) of the first n, counted from b0: a thread's window of a step's rows. */
static inline int lf_window(int n, int b0, int b1)
{
    return (n < b0 ? b0 : n > b1 ? b1 : n) - b0;
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

/* The fields forward and backward both require. */
static int lf_check_shared(const lf_blas *bl, const lf_dims *d, const void *x,
                           const void *w_ih, const void *w_hh, const void *h0, const void *y)
{
    LF_REQUIRE(bl && bl->sgemm && bl->dgemm, LF_FIELD_BLAS);
    LF_REQUIRE(lf_dims_valid(d), LF_FIELD_DIMS);
    LF_REQUIRE(x, LF_FIELD_X);
    LF_REQUIRE(w_ih, LF_FIELD_W_IH);
    LF_REQUIRE(w_hh, LF_FIELD_W_HH);
    LF_REQUIRE(h0, LF_FIELD_H0);
    LF_REQUIRE(y, LF_FIELD_Y);
    return LF_OK;
}

/* Training projects the input in chunks of about 2 GFLOP (at least 512 rows): big
 * GEMMs, and a call that can be stopped (lf_cancel) between chunks within ~20 ms. */
static int lf_train_chunk_steps(const lf_dims *d)
{
    const double per_row = (double)lf_num_gates(d->cell) * d->hidden_size * d->input_size;
    double rows = 1e9 / per_row;
    if (rows < 512) rows = 512;
    const double steps = rows / d->batch;
    return steps < 1 ? 1 : steps < d->seq_len ? (int)steps : d->seq_len;
}

/* ---- threads ------------------------------------------------------------------- */

/* room for aligning the work buffer and each piece carved from it */
#define LF_WORK_SLACK (64 + 16 * 64 + LF_WORK_HEADER)
/* the start of a forward's work buffer: what its packed weights are (lf_forward) */
#define LF_WORK_HEADER 64

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

#define TYPE float
#define TYPE_BYTES 4
#define ITYPE int32_t
#define FN(name) name##_f32
#define BLAS_GEMM(bl) ((bl)->sgemm)
#include "cells.template.h"
#include "panel.template.h"
#include "recurrence.template.h"
#undef TYPE
#undef TYPE_BYTES
#undef ITYPE
#undef FN
#undef BLAS_GEMM
#undef VL

#define TYPE double
#define TYPE_BYTES 8
#define ITYPE int64_t
#define FN(name) name##_f64
#define BLAS_GEMM(bl) ((bl)->dgemm)
#include "cells.template.h"
#include "panel.template.h"
#include "recurrence.template.h"
#undef TYPE
#undef TYPE_BYTES
#undef ITYPE
#undef FN
#undef BLAS_GEMM
#undef VL

const lf_kernels LF_CAT(lf_kernels_, LF_ISA) = {
    LF_STR(LF_ISA), LF_VEC_BYTES, LF_TILE_ROWS,
    lf_forward_work_size_f32, lf_forward_work_size_f64,
    lf_backward_work_size_f32, lf_backward_work_size_f64,
    lf_forward_f32, lf_forward_f64, lf_backward_f32, lf_backward_f64,
    fma_peak_f32, fma_peak_f64,
};
