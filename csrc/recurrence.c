/* Instantiates the recurrence driver and the cells for float and double from one
 * template (recurrence.template.h, cells.template.h), plus the dtype-free helpers. */
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

/* Inference projects the input a chunk of steps at a time: enough rows for an
 * efficient GEMM, while memory stays independent of T. */
static int lf_chunk_steps(const lf_dims *d)
{
    int steps = 512 / d->batch;
    if (steps < 1) steps = 1;
    return steps < d->seq_len ? steps : d->seq_len;
}

size_t lf_forward_work_size(const lf_dims *d, int training)
{
    const size_t GH = (size_t)lf_num_gates(d->cell) * d->hidden_size, B = d->batch;
    size_t n = 2 * GH;
    if (d->cell == LF_GRU) n += B * GH;
    if (lf_has_proj(d)) n += B * d->hidden_size;
    if (d->cell == LF_GRU) n += B * d->hidden_size;
    if (!training) n += (size_t)lf_chunk_steps(d) * B * GH;
    return n;
}

size_t lf_backward_work_size(const lf_dims *d)
{
    const size_t B = d->batch, H = d->hidden_size, P = d->out_size;
    size_t n = B * P + (size_t)lf_total_rows(d) * P;
    if (d->cell == LF_LSTM) n += B * H;
    if (lf_has_proj(d)) n += 2 * B * H;
    return n;
}

#define TYPE float
#define FN(name) name##_f32
#define BLAS_GEMM(bl) ((bl)->sgemm)
#include "cells.template.h"
#include "recurrence.template.h"
#undef TYPE
#undef FN
#undef BLAS_GEMM

#define TYPE double
#define FN(name) name##_f64
#define BLAS_GEMM(bl) ((bl)->dgemm)
#include "cells.template.h"
#include "recurrence.template.h"
#undef TYPE
#undef FN
#undef BLAS_GEMM
