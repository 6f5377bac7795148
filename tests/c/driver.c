/* A test driver for one kernel variant, built without Python: it reads problems on
 * stdin, runs the variant's forward (training) and backward on each, and writes the
 * results to stdout, for tests/test_variants_c.py to compare with the numpy oracle.
 * Built for an architecture or a libc this machine's Python cannot load (aarch64 under
 * qemu, musl) or for a layout the CPU cannot run natively (the AVX-512 variant's
 * 64-byte vectors and 12-row tiles, encoded for AVX2).
 *
 * The variant is the one dispatch.c holds (build with one LF_VARIANT_* and its
 * LF_HAVE_*). BLAS is a plain triple loop below, handed in through the table as scipy's
 * is in the extension.
 *
 * A problem: 12 int32 (cell, T, B, I, H, P, reverse, threads, has_lengths, has_bias,
 * dtype bytes 4 or 8, training mode 1), then lengths [B] int32 if has_lengths, then in
 * the dtype: x [N, I], w_ih [G*H, I], w_hh [G*H, P], b_ih, b_hh [G*H] if has_bias,
 * w_hr [P, H] if P != H, h0 [B, P], c0 [B, H] (LSTM), dy [N, P], dh_n [B, P],
 * dc_n [B, H] (LSTM). The answer: an int32 status, then y [N, P], h_n [B, P],
 * c_n [B, H] (LSTM), dx [N, I], dh0 [B, P], dc0 [B, H] (LSTM), dw_ih, dw_hh,
 * db_ih, db_hh (if has_bias), dw_hr (if P != H).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lstmfast.h"

#define NAIVE_GEMM(name, T)                                                               \
    static void name(char *ta, char *tb, int *m, int *n, int *k, T *alpha, T *a, int *lda, \
                     T *b, int *ldb, T *beta, T *c, int *ldc)                             \
    {                                                                                     \
        for (int j = 0; j < *n; j++)                                                      \
            for (int i = 0; i < *m; i++) {                                                \
                double s = 0;                                                             \
                for (int l = 0; l < *k; l++) {                                            \
                    T av = *ta == 'N' ? a[i + (size_t)l * *lda] : a[l + (size_t)i * *lda]; \
                    T bv = *tb == 'N' ? b[l + (size_t)j * *ldb] : b[j + (size_t)l * *ldb]; \
                    s += (double)av * bv;                                                 \
                }                                                                         \
                T *cij = c + i + (size_t)j * *ldc;                                        \
                *cij = (T)(*alpha * s + (*beta == 0 ? 0 : *beta * *cij));                 \
            }                                                                             \
    }
NAIVE_GEMM(naive_sgemm, float)
NAIVE_GEMM(naive_dgemm, double)

static void *take(size_t bytes)
{
    void *p = calloc(bytes ? bytes : 1, 1);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}

static void *read_array(size_t bytes)
{
    void *p = take(bytes);
    if (bytes && fread(p, 1, bytes, stdin) != bytes) { fprintf(stderr, "short input\n"); exit(2); }
    return p;
}

static void write_array(const void *p, size_t bytes)
{
    if (bytes) fwrite(p, 1, bytes, stdout);
}

int main(void)
{
    const lf_kernels *k = lf_kernels_get(0);
    if (!k) return 2;
    fprintf(stderr, "driver: %s kernels, %d-byte vectors, %d-row tiles\n", k->isa,
            k->vec_bytes, k->tile_rows);
    lf_blas bl = {naive_sgemm, naive_dgemm, NULL, NULL};
    int32_t hdr[12];
    while (fread(hdr, sizeof hdr, 1, stdin) == 1) {
        const int cell = hdr[0], T = hdr[1], B = hdr[2], I = hdr[3], H = hdr[4], P = hdr[5];
        const int has_len = hdr[8], has_bias = hdr[9], es = hdr[10];
        const int G = lf_num_gates(cell), GH = G * H, lstm = cell == LF_LSTM, proj = P != H;
        int32_t *lengths = has_len ? read_array((size_t)B * 4) : NULL;
        size_t N = 0;
        for (int b = 0; b < B; b++) N += lengths ? (size_t)lengths[b] : (size_t)T;
        lf_dims d = {cell, T, B, I, H, P, hdr[6], hdr[7], lengths, lf_pool_new()};
        void *x = read_array(N * I * es), *w_ih = read_array((size_t)GH * I * es);
        void *w_hh = read_array((size_t)GH * P * es);
        void *b_ih = has_bias ? read_array((size_t)GH * es) : NULL;
        void *b_hh = has_bias ? read_array((size_t)GH * es) : NULL;
        void *w_hr = proj ? read_array((size_t)P * H * es) : NULL;
        void *h0 = read_array((size_t)B * P * es), *c0 = lstm ? read_array((size_t)B * H * es) : NULL;
        void *dy = read_array(N * P * es), *dh_n = read_array((size_t)B * P * es);
        void *dc_n = lstm ? read_array((size_t)B * H * es) : NULL;
        void *y = take(N * P * es), *h_n = take((size_t)B * P * es);
        void *c_n = lstm ? take((size_t)B * H * es) : NULL;
        void *gates = take(N * GH * es), *aux = take(N * (size_t)lf_aux_size(cell, H) * es);
        void *dx = take(N * I * es), *dh0 = take((size_t)B * P * es);
        void *dc0 = lstm ? take((size_t)B * H * es) : NULL;
        void *dw_ih = take((size_t)GH * I * es), *dw_hh = take((size_t)GH * P * es);
        void *db_ih = has_bias ? take((size_t)GH * es) : NULL;
        void *db_hh = has_bias ? take((size_t)GH * es) : NULL;
        void *dw_hr = proj ? take((size_t)P * H * es) : NULL;
        const size_t fw = es == 4 ? k->forward_work_size_f32(&d, 1) : k->forward_work_size_f64(&d, 1);
        const size_t bw = es == 4 ? k->backward_work_size_f32(&d) : k->backward_work_size_f64(&d);
        void *work = take((fw > bw ? fw : bw) * es);
        int rc;
        lf_forward_args fa = {&bl, d, x, I, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, y, P, h_n,
                              c_n, gates, aux, work, 0};
        lf_backward_args ba = {&bl, d, x, I, w_ih, w_hh, w_hr, h0, c0, y, P, gates, aux,
                               dy, P, dh_n, dc_n, dx, I, 0, dh0, dc0, dw_ih, dw_hh, db_ih,
                               db_hh, dw_hr, NULL, work};
#define RUN(fwd, bwd)              \
    rc = k->fwd(&fa);              \
    if (rc == LF_OK) rc = k->bwd(&ba);
        if (es == 4) {
            RUN(forward_f32, backward_f32)
        } else {
            RUN(forward_f64, backward_f64)
        }
#undef RUN
        int32_t status = rc;
        write_array(&status, 4);
        write_array(y, N * P * es); write_array(h_n, (size_t)B * P * es);
        if (lstm) write_array(c_n, (size_t)B * H * es);
        write_array(dx, N * I * es); write_array(dh0, (size_t)B * P * es);
        if (lstm) write_array(dc0, (size_t)B * H * es);
        write_array(dw_ih, (size_t)GH * I * es); write_array(dw_hh, (size_t)GH * P * es);
        if (has_bias) { write_array(db_ih, (size_t)GH * es); write_array(db_hh, (size_t)GH * es); }
        if (proj) write_array(dw_hr, (size_t)P * H * es);
        fflush(stdout);
        void *all[] = {lengths, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, dy, dh_n, dc_n, y,
                       h_n, c_n, gates, aux, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr,
                       work};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
        lf_pool_free(d.pool);
    }
    return 0;
}
