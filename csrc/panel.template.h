/* The per-step GEMM: out[rows, cols] (+)= A[rows, K] W, with W packed once per call.
 * Included once per dtype by recurrence.c (TYPE, FN() defined).
 *
 * Why not BLAS: the recurrent GEMM runs T times on a small A (the batch) against the
 * same W; OpenBLAS re-packs W on every call and stays single-threaded below ~262k
 * multiply-adds, which dominates at small batch. Here W is packed once into panels and a
 * register-blocked kernel streams it, each thread owning whole panels (output columns),
 * so the steps need no BLAS call and the threads share no output.
 *
 * A panel holds NV vectors of VL columns for every k: [K][NV*VL], contiguous, zero
 * padded. Vector v of panel p lands at output column colmap(p, v):
 *   gate-interleaved (forward, W_hh [G*H, P] as W^T): vector v is gate v % G of the
 *   unit block p*(NV/G) + v/G, so one panel carries every gate of its units and the
 *   cell's pointwise step can follow on exactly the units just computed;
 *   plain (backward, projection): vector v is column block p*NV + v.
 * A may come in two segments along K (rows of W 0..K1 from A1, K1..K from A2): the
 * GRU's recurrent gradient is dG on the r, z columns but lives apart for n.
 */

#define VL ((int)(32 / sizeof(TYPE)))
typedef TYPE FN(vec) __attribute__((vector_size(32)));

typedef struct {
    TYPE *data;        /* npanels * K * NV * VL, or NULL: W is used unpacked, through BLAS */
    int K, NV, G, H;   /* G > 0: gate-interleaved over G*H output columns; G = 0: plain */
    int ncols;         /* output columns */
    int npanels;
    const TYPE *w;     /* the source: [ncols, K] (trans_w) or [K, ncols], row stride ldw */
    int ldw, trans_w;
} FN(panels);

/* Output columns [col, col+n) of vector v of panel p (n < VL only at the edge). */
static inline int FN(colmap)(const FN(panels) *pk, int p, int v, int *n)
{
    int units, col;
    if (pk->G) {
        int u0 = (p * (pk->NV / pk->G) + v / pk->G) * VL;
        units = pk->H - u0;
        col = (v % pk->G) * pk->H + u0;
    } else {
        col = (p * pk->NV + v) * VL;
        units = pk->ncols - col;  /* plain: ncols are the units */
    }
    *n = units < 0 ? 0 : units > VL ? VL : units;
    return col;
}

/* Units (output columns per gate) covered by panels [p0, p1). */
static inline void FN(panel_units)(const FN(panels) *pk, int p0, int p1, int *u0, int *u1)
{
    int per = pk->G ? (pk->NV / pk->G) * VL : pk->NV * VL;
    int total = pk->G ? pk->H : pk->ncols;
    *u0 = p0 * per < total ? p0 * per : total;
    *u1 = p1 * per < total ? p1 * per : total;
}

/* Panels of NV vectors over K for G gates of H units (G > 0) or ncols plain columns,
 * to be packed from w (see FN(panels)). */
static void FN(panels_init)(FN(panels) *pk, int K, int NV, int G, int H, int ncols,
                            const TYPE *w, int ldw, int trans_w)
{
    pk->data = NULL; pk->K = K; pk->NV = NV; pk->G = G; pk->H = H;
    pk->ncols = G ? G * H : ncols;
    pk->w = w; pk->ldw = ldw; pk->trans_w = trans_w;
    const int per = G ? (NV / G) * VL : NV * VL, total = G ? H : ncols;
    pk->npanels = (total + per - 1) / per;
}

static size_t FN(panels_size)(const FN(panels) *pk)
{
    return (size_t)pk->npanels * pk->K * pk->NV * VL;
}

/* Pack panels [p0, p1) from pk->w. */
static void FN(pack)(FN(panels) *pk, int p0, int p1)
{
    const int K = pk->K, NV = pk->NV, ldw = pk->ldw, trans_w = pk->trans_w;
    const TYPE *w = pk->w;
    for (int p = p0; p < p1; p++) {
        TYPE *dst = pk->data + (size_t)p * K * NV * VL;
        for (int v = 0; v < NV; v++) {
            int n, col = FN(colmap)(pk, p, v, &n);
            for (int k = 0; k < K; k++) {
                TYPE *d = dst + (size_t)k * NV * VL + v * VL;
                for (int l = 0; l < VL; l++)
                    d[l] = l >= n ? 0 : trans_w ? w[(size_t)(col + l) * ldw + k]
                                                : w[(size_t)k * ldw + col + l];
            }
        }
    }
}

static inline __attribute__((always_inline)) FN(vec) FN(load)(const TYPE *p)
{
    FN(vec) v;
    memcpy(&v, p, sizeof v);  /* an unaligned vector load */
    return v;
}

/* One MR x NV tile of out, computed in registers and stored (added) through colmap.
 * Instantiated for each (MR, NV) with exact array sizes so that gcc keeps acc and wv in
 * vector registers. */
#define LF_TILE(MR, NV)                                                                 \
    static inline __attribute__((always_inline)) void FN(tile_##MR##x##NV)(            \
        const FN(panels) *pk, int p, const TYPE *pan, int K1, const TYPE *A1, int lda1,  \
        int K2, const TYPE *A2, int lda2, TYPE *out, int ldo, int accumulate)            \
    {                                                                                   \
        const FN(vec) ones = (FN(vec)){0} + 1;                                          \
        FN(vec) acc[MR][NV];                                                            \
        _Pragma("GCC unroll 6")                                                         \
        for (int i = 0; i < MR; i++)                                                    \
            _Pragma("GCC unroll 4")                                                     \
            for (int v = 0; v < NV; v++) acc[i][v] = (FN(vec)){0};                      \
        const TYPE *w = pan;                                                            \
        for (int seg = 0; seg < 2; seg++) {                                             \
            const int K = seg ? K2 : K1, lda = seg ? lda2 : lda1;                       \
            const TYPE *A = seg ? A2 : A1;                                              \
            for (int k = 0; k < K; k++, w += NV * VL) {                                 \
                FN(vec) wv[NV];                                                         \
                _Pragma("GCC unroll 4")                                                 \
                for (int v = 0; v < NV; v++) wv[v] = FN(load)(w + v * VL);              \
                _Pragma("GCC unroll 6")                                                 \
                for (int i = 0; i < MR; i++) {                                          \
                    const FN(vec) a = ones * A[(size_t)i * lda + k];                    \
                    _Pragma("GCC unroll 4")                                             \
                    for (int v = 0; v < NV; v++) acc[i][v] += a * wv[v];                \
                }                                                                       \
            }                                                                           \
        }                                                                               \
        for (int v = 0; v < NV; v++) {                                                  \
            int n, col = FN(colmap)(pk, p, v, &n);                                      \
            for (int i = 0; i < MR; i++) {                                              \
                TYPE *o = out + (size_t)i * ldo + col;                                  \
                if (n == VL) {                                                          \
                    FN(vec) cur = acc[i][v];                                            \
                    if (accumulate) {                                                   \
                        FN(vec) old;                                                    \
                        memcpy(&old, o, sizeof old);                                    \
                        cur += old;                                                     \
                    }                                                                   \
                    memcpy(o, &cur, sizeof cur);                                        \
                } else {                                                                \
                    TYPE tmp[VL];                                                       \
                    memcpy(tmp, &acc[i][v], sizeof tmp);                                \
                    for (int l = 0; l < n; l++) o[l] = accumulate ? o[l] + tmp[l] : tmp[l]; \
                }                                                                       \
            }                                                                           \
        }                                                                               \
    }

LF_TILE(1, 2) LF_TILE(2, 2) LF_TILE(3, 2) LF_TILE(4, 2) LF_TILE(5, 2) LF_TILE(6, 2)
LF_TILE(1, 3) LF_TILE(2, 3) LF_TILE(3, 3) LF_TILE(4, 3)
LF_TILE(1, 4) LF_TILE(2, 4) LF_TILE(3, 4)
#undef LF_TILE

#define LF_TILE_CASE(mr, nv)                                                           \
    case (mr) * 8 + (nv):                                                              \
        FN(tile_##mr##x##nv)(pk, p, pan, K1, A1 + (size_t)r * lda1, lda1, K2,          \
                             A2 ? A2 + (size_t)r * lda2 : NULL, lda2,                  \
                             out + (size_t)r * ldo, ldo, accumulate);                  \
        break;

/* out[rows, colmap(panels p0..p1)] (+)= [A1 | A2][rows, K] W. Row blocks of 12/NV rows
 * keep 12 accumulators of the 16 vector registers busy. */
LF_CLONES static void FN(panel_gemm)(const FN(panels) *pk, int p0, int p1, int rows,
                                     int K1, const TYPE *A1, int lda1,
                                     const TYPE *A2, int lda2,
                                     TYPE *out, int ldo, int accumulate)
{
    const int NV = pk->NV, K2 = pk->K - K1;
    const int MR = 12 / NV;
    /* rows a chunk at a time, so that the chunk of A (~128 KiB) stays in L2 while every
     * panel passes over it */
    const int chunk = (int)(32768 / (pk->K > 0 ? pk->K : 1)) / MR * MR + MR;
    for (int rc = 0; rc < rows; rc += chunk)
    for (int p = p0; p < p1; p++) {
        const TYPE *pan = pk->data + (size_t)p * pk->K * NV * VL;
        const int rend = rows - rc < chunk ? rows : rc + chunk;
        for (int r = rc; r < rend; r += MR) {
            const int mr = rend - r < MR ? rend - r : MR;
            switch (mr * 8 + NV) {
                LF_TILE_CASE(1, 2) LF_TILE_CASE(2, 2) LF_TILE_CASE(3, 2)
                LF_TILE_CASE(4, 2) LF_TILE_CASE(5, 2) LF_TILE_CASE(6, 2)
                LF_TILE_CASE(1, 3) LF_TILE_CASE(2, 3) LF_TILE_CASE(3, 3) LF_TILE_CASE(4, 3)
                LF_TILE_CASE(1, 4) LF_TILE_CASE(2, 4) LF_TILE_CASE(3, 4)
            }
        }
    }
}
#undef LF_TILE_CASE
