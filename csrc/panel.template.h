/* The per-step GEMM: out[rows, cols] (+)= A[rows, K] W, with W packed once per call (or
 * kept packed between inference calls: pack_cached).
 * Included once per dtype by recurrence.c (TYPE, FN() defined).
 *
 * Why not BLAS: the recurrent GEMM runs T times on a small A (the batch) against the
 * same W; OpenBLAS re-packs W on every call and stays single-threaded below ~262k
 * multiply-adds, which dominates at small batch. Here W is packed once into panels and a
 * register-blocked kernel streams it, each panel computed by one thread (whole output
 * columns), so the steps need no BLAS call and the threads share no output.
 *
 * A panel holds NV vectors of VL columns for every k: [K][NV*VL], contiguous, zero
 * padded. The vectors of all panels in order, gv = p*NV + v, are the column blocks:
 *   gate-interleaved (forward, W_hh [G*H, P] as W^T): gv is gate gv % G of the unit
 *   block gv / G (units VL*(gv/G) ..), so consecutive panels carry every gate of their
 *   units and the cell's pointwise step can follow on exactly the units just computed
 *   (a range of panels covers whole unit blocks when it starts and ends on a multiple
 *   of G vectors);
 *   plain (backward, projection): gv is column block gv.
 * A may come in two segments along K (rows of W 0..K1 from A1, K1..K from A2): the
 * GRU's recurrent gradient is dG on the r, z columns but lives apart for n.
 */

/* VL: elements per vector of the variant (LF_VEC_BYTES, recurrence.c). */
#define VL (LF_VEC_BYTES / TYPE_BYTES)
/* Vectors per panel: tiles of 6 rows x 2 vectors keep more of the FMA units busy than
 * 3 x 4 or 4 x 3 (measured with AVX2 on one core at H = 512, 16-64 rows: 91-92 GFLOP/s
 * against 83-85 and 86-88); with 32 registers, 12 x 2. panel_gemm has tiles for this
 * width only. */
#ifndef LF_PANEL_NV
#define LF_PANEL_NV 2
#endif
typedef TYPE FN(vec) __attribute__((vector_size(LF_VEC_BYTES)));

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
    const int gv = p * pk->NV + v, G = pk->G ? pk->G : 1;
    const int u0 = gv / G * VL, units = (pk->G ? pk->H : pk->ncols) - u0;
    *n = units < 0 ? 0 : units > VL ? VL : units;
    return (gv % G) * pk->H + u0;
}

/* Units (output columns per gate) of the unit blocks that panels [p0, p1) touch. */
static inline void FN(panel_units)(const FN(panels) *pk, int p0, int p1, int *u0, int *u1)
{
    const int G = pk->G ? pk->G : 1, total = pk->G ? pk->H : pk->ncols;
    const int b0 = p0 * pk->NV / G, b1 = (p1 * pk->NV + G - 1) / G;
    *u0 = b0 * VL < total ? b0 * VL : total;
    *u1 = b1 * VL < total ? b1 * VL : total;
}

/* cols[v], ns[v] = colmap(p, v) for every vector of panel p (NV <= 8); whether every
 * vector is whole (ns[v] == VL). */
static inline int FN(panel_cols)(const FN(panels) *pk, int p, int *cols, int *ns)
{
    int full = 1;
    for (int v = 0; v < pk->NV; v++) {
        cols[v] = FN(colmap)(pk, p, v, &ns[v]);
        full &= ns[v] == VL;
    }
    return full;
}

/* Panels over K for G gates of H units (G > 0) or ncols plain columns, to be packed
 * from w (see FN(panels)). */
static void FN(panels_init)(FN(panels) *pk, int K, int G, int H, int ncols, const TYPE *w,
                            int ldw, int trans_w)
{
    const int NV = LF_PANEL_NV;
    pk->data = NULL; pk->K = K; pk->NV = NV; pk->G = G; pk->H = H;
    pk->ncols = G ? G * H : ncols;
    pk->w = w; pk->ldw = ldw; pk->trans_w = trans_w;
    const int total = G ? H : ncols, vectors = (total + VL - 1) / VL * (G ? G : 1);
    pk->npanels = (vectors + NV - 1) / NV;
}

static size_t FN(panels_size)(const FN(panels) *pk)
{
    return (size_t)pk->npanels * pk->K * pk->NV * VL;
}

static inline __attribute__((always_inline)) FN(vec) FN(load)(const TYPE *p)
{
    FN(vec) v;
    memcpy(&v, p, sizeof v);  /* an unaligned vector load */
    return v;
}

/* Transposes for packing W^T: a TB x TB block at a time, in vectors of TB elements
 * (at most 32 bytes, so that a wide variant transposes its vector's 16 x 16 block as
 * four 8 x 8 ones). __builtin_shuffle is gcc's spelling before gcc 12. */
#if VL * TYPE_BYTES > 32
#define TB (32 / TYPE_BYTES)
#else
#define TB VL
#endif
typedef TYPE FN(tvec) __attribute__((vector_size(TB * TYPE_BYTES)));
typedef ITYPE FN(tmask) __attribute__((vector_size(TB * TYPE_BYTES)));
#if defined(__clang__) || __GNUC__ >= 12
#define LF_SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define LF_SHUF(a, b, ...) __builtin_shuffle(a, b, (FN(tmask)){__VA_ARGS__})
#endif

/* r[l] = column l of the TB x TB block whose rows are r[0..TB) */
static inline __attribute__((always_inline)) void FN(transpose)(FN(tvec) *r)
{
#if TB == 8
    FN(tvec) t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = LF_SHUF(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = LF_SHUF(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int i = 0; i < 8; i += 4)
        for (int j = 0; j < 2; j++) {
            u[i + 2 * j] = LF_SHUF(t[i + j], t[i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
            u[i + 2 * j + 1] = LF_SHUF(t[i + j], t[i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        }
    for (int i = 0; i < 4; i++) {
        r[i] = LF_SHUF(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        r[i + 4] = LF_SHUF(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
#elif TB == 4
    FN(tvec) t0 = LF_SHUF(r[0], r[1], 0, 4, 2, 6);
    FN(tvec) t1 = LF_SHUF(r[0], r[1], 1, 5, 3, 7);
    FN(tvec) t2 = LF_SHUF(r[2], r[3], 0, 4, 2, 6);
    FN(tvec) t3 = LF_SHUF(r[2], r[3], 1, 5, 3, 7);
    r[0] = LF_SHUF(t0, t2, 0, 1, 4, 5);
    r[1] = LF_SHUF(t1, t3, 0, 1, 4, 5);
    r[2] = LF_SHUF(t0, t2, 2, 3, 6, 7);
    r[3] = LF_SHUF(t1, t3, 2, 3, 6, 7);
#else
    FN(tvec) t0 = LF_SHUF(r[0], r[1], 0, 2);
    r[1] = LF_SHUF(r[0], r[1], 1, 3);
    r[0] = t0;
#endif
}
#undef LF_SHUF

/* Pack panels [p0, p1) from pk->w: whole vectors by copies (W) or VL x VL register
 * transposes (W^T), the edges element by element. */
static void FN(pack)(FN(panels) *pk, int p0, int p1)
{
    const int K = pk->K, NV = pk->NV, ldw = pk->ldw, trans_w = pk->trans_w;
    const size_t ldd = (size_t)NV * VL;
    const TYPE *w = pk->w;
    for (int p = p0; p < p1; p++) {
        TYPE *dst = pk->data + (size_t)p * K * ldd;
        int n[8], col[8];
        const int full = FN(panel_cols)(pk, p, col, n);
        int k = 0;
        if (full && trans_w) {
            /* a block of TB rows of dst at a time: whole cache lines written once */
            for (; k + TB <= K; k += TB)
                for (int v = 0; v < NV; v++)
                    for (int c = 0; c < VL; c += TB) {
                        FN(tvec) r[TB];
                        for (int l = 0; l < TB; l++)
                            memcpy(&r[l], w + (size_t)(col[v] + c + l) * ldw + k, sizeof r[l]);
                        FN(transpose)(r);
                        for (int l = 0; l < TB; l++)
                            memcpy(dst + (k + l) * ldd + v * VL + c, &r[l], sizeof r[l]);
                    }
        } else if (full) {
            for (; k < K; k++)
                for (int v = 0; v < NV; v++)
                    memcpy(dst + k * ldd + v * VL, w + (size_t)k * ldw + col[v], sizeof(FN(vec)));
        }
        for (; k < K; k++)
            for (int v = 0; v < NV; v++)
                for (int l = 0; l < VL; l++)
                    dst[k * ldd + v * VL + l] =
                        l >= n[v] ? 0 : trans_w ? w[(size_t)(col[v] + l) * ldw + k]
                                                : w[(size_t)k * ldw + col[v] + l];
    }
}

/* Pack panels [p0, p1), or leave them when copy (the ncols x K weights they were packed
 * from, or NULL: no copy kept) still equals pk->w on every source row: comparing reads
 * W and the copy in order, packing reads W across rows and writes the panels. reuse:
 * 0, the panels are not from an earlier call; 1, they are; 2, they are and W has not
 * changed since (lf_forward_args.work_reused), so they are left unchecked. */
static void FN(pack_cached)(FN(panels) *pk, TYPE *copy, int p0, int p1, int reuse)
{
    if (reuse == 2 && copy) return;
    if (!copy) {
        FN(pack)(pk, p0, p1);
        return;
    }
    int u0, u1;
    FN(panel_units)(pk, p0, p1, &u0, &u1);
    const int G = pk->G ? pk->G : 1, H = pk->G ? pk->H : 0, K = pk->K;
    const size_t bytes = (size_t)K * sizeof(TYPE);
    int same = reuse;
    for (int g = 0; g < G && same; g++)
        for (int u = u0; u < u1 && same; u++) {
            const size_t row = (size_t)g * H + u;
            same = memcmp(copy + row * K, pk->w + row * pk->ldw, bytes) == 0;
        }
    if (same) return;
    FN(pack)(pk, p0, p1);
    for (int g = 0; g < G; g++)
        for (int u = u0; u < u1; u++) {
            const size_t row = (size_t)g * H + u;
            memcpy(copy + row * K, pk->w + row * pk->ldw, bytes);
        }
}

/* One MR x NV tile of out, computed in registers and stored (added) at the panel's
 * output columns cols[v] (ns[v] of them valid).
 * Instantiated for each (MR, NV) with exact array sizes so that gcc keeps acc and wv in
 * vector registers. */
#define LF_TILE(MR, NV)                                                                 \
    static inline __attribute__((always_inline)) void FN(tile_##MR##x##NV)(            \
        const int *cols, const int *ns, const TYPE *pan, int K1, const TYPE *A1, int lda1, \
        int K2, const TYPE *A2, int lda2, TYPE *out, int ldo, int accumulate)            \
    {                                                                                   \
        const FN(vec) ones = (FN(vec)){0} + 1;                                          \
        FN(vec) acc[MR][NV], acc2[MR][NV];                                              \
        /* the rows added to may be far from cache (the input projection of a chunk of  \
         * steps, computed steps ago): fetch them while the tile runs */               \
        for (int i = 0; i < MR && accumulate; i++)                                      \
            for (int v = 0; v < NV; v++)                                                \
                __builtin_prefetch(out + (size_t)i * ldo + cols[v], 0, 3);              \
        _Pragma("GCC unroll 12")                                                        \
        for (int i = 0; i < MR; i++)                                                    \
            _Pragma("GCC unroll 4")                                                     \
            for (int v = 0; v < NV; v++) acc[i][v] = acc2[i][v] = (FN(vec)){0};         \
        const TYPE *w = pan;                                                            \
        for (int seg = 0; seg < 2; seg++) {                                             \
            const int K = seg ? K2 : K1, lda = seg ? lda2 : lda1;                       \
            const TYPE *A = seg ? A2 : A1;                                              \
            int k = 0;                                                                  \
            /* with fewer than 8 accumulators the FMA latency binds: a second set       \
             * takes the odd k */                                                       \
            for (; MR * NV < 8 && k + 1 < K; k += 2, w += 2 * NV * VL) {                 \
                _Pragma("GCC unroll 12")                                                \
                for (int i = 0; i < MR; i++) {                                          \
                    const FN(vec) a = ones * A[(size_t)i * lda + k];                    \
                    const FN(vec) a2 = ones * A[(size_t)i * lda + k + 1];               \
                    _Pragma("GCC unroll 4")                                             \
                    for (int v = 0; v < NV; v++) {                                      \
                        acc[i][v] += a * FN(load)(w + v * VL);                          \
                        acc2[i][v] += a2 * FN(load)(w + (NV + v) * VL);                 \
                    }                                                                   \
                }                                                                       \
            }                                                                           \
            for (; k < K; k++, w += NV * VL) {                                          \
                FN(vec) wv[NV];                                                         \
                _Pragma("GCC unroll 4")                                                 \
                for (int v = 0; v < NV; v++) wv[v] = FN(load)(w + v * VL);              \
                _Pragma("GCC unroll 12")                                                \
                for (int i = 0; i < MR; i++) {                                          \
                    const FN(vec) a = ones * A[(size_t)i * lda + k];                    \
                    _Pragma("GCC unroll 4")                                             \
                    for (int v = 0; v < NV; v++) acc[i][v] += a * wv[v];                \
                }                                                                       \
            }                                                                           \
        }                                                                               \
        if (MR * NV < 8)                                                                \
            for (int i = 0; i < MR; i++)                                                \
                for (int v = 0; v < NV; v++) acc[i][v] += acc2[i][v];                   \
        for (int v = 0; v < NV; v++) {                                                  \
            const int n = ns[v], col = cols[v];                                         \
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
#if LF_TILE_ROWS > 6
LF_TILE(7, 2) LF_TILE(8, 2) LF_TILE(9, 2) LF_TILE(10, 2) LF_TILE(11, 2) LF_TILE(12, 2)
#endif
#undef LF_TILE

/* The FMA ceiling of this variant on one core, for the benchmark's "% of peak": n
 * rounds of 2 * LF_TILE_ROWS independent vector multiply-add chains (as many as a tile
 * keeps), in registers. Returns the flops done; *out keeps the result alive. */
static double FN(fma_peak)(long n, TYPE *out)
{
    enum { CHAINS = 2 * LF_TILE_ROWS };
    FN(vec) acc[CHAINS];
    const FN(vec) a = (FN(vec)){0} + (TYPE)0.999, b = (FN(vec)){0} + (TYPE)0.001;
    for (int j = 0; j < CHAINS; j++) acc[j] = (FN(vec)){0} + (TYPE)j;
    for (long i = 0; i < n; i++) {
        _Pragma("GCC unroll 24")
        for (int j = 0; j < CHAINS; j++) acc[j] = acc[j] * a + b;
    }
    TYPE sum = 0;
    for (int j = 0; j < CHAINS; j++)
        for (int l = 0; l < VL; l++) sum += acc[j][l];
    *out = sum;
    return 2.0 * n * CHAINS * VL;
}

#define LF_TILE_CASE(mr, nv)                                                           \
    case (mr) * 16 + (nv):                                                              \
        FN(tile_##mr##x##nv)(cols, ns, pan + (size_t)kb * NV * VL, k1, A1 + (size_t)r * lda1 + kb, \
                             lda1, k2, A2 ? A2 + (size_t)r * lda2 + b2 : NULL, lda2,   \
                             out + (size_t)r * ldo, ldo, acc);                         \
        break;

/* out[rows, colmap(panels p0..p1)] (+)= [A1 | A2][rows, K] W. Row blocks of
 * LF_TILE_ROWS rows keep 12 accumulators of 16 vector registers (24 of 32) busy. */
static void FN(panel_gemm)(const FN(panels) *pk, int p0, int p1, int rows,
                                     int K1, const TYPE *A1, int lda1,
                                     const TYPE *A2, int lda2,
                                     TYPE *out, int ldo, int accumulate)
{
    const int NV = pk->NV, K = pk->K;
    const int MR = LF_TILE_ROWS;
    /* rows a chunk at a time, so that the chunk of A (~128 KiB) stays in L2 while every
     * panel passes over it; at least 18 rows, as every chunk streams W once more
     * (measured: a training step at B = 8, K = 4 * 1536 in the backward, 1.10x) */
    int chunk = (int)(32768 / (K > 0 ? K : 1)) / MR * MR + MR;
    if (chunk < 3 * MR) chunk = 3 * MR;
    /* and K a block at a time, so that the block of the panel (16 KiB) stays in L1 for
     * every row block: the tile needs more of W per cycle than L2 delivers */
    const int KC = 16384 / (NV * LF_VEC_BYTES);
    for (int rc = 0; rc < rows; rc += chunk)
    for (int p = p0; p < p1; p++) {
        const TYPE *pan = pk->data + (size_t)p * K * NV * VL;
        int cols[8], ns[8];  /* where the panel's vectors go */
        FN(panel_cols)(pk, p, cols, ns);
        const int rend = rows - rc < chunk ? rows : rc + chunk;
        for (int kb = 0; kb < K || kb == 0; kb += KC) {
            const int ke = K - kb < KC ? K : kb + KC;
            /* the block [kb, ke) of K, in A1's columns [kb, K1) and A2's [b2, b2+k2) */
            const int k1 = ke < K1 ? ke - kb : K1 > kb ? K1 - kb : 0;
            const int b2 = kb > K1 ? kb - K1 : 0, k2 = ke - kb - k1;
            const int acc = accumulate || kb > 0;
            for (int r = rc; r < rend; r += MR) {
                const int mr = rend - r < MR ? rend - r : MR;
                switch (mr * 16 + NV) {
                    LF_TILE_CASE(1, 2) LF_TILE_CASE(2, 2) LF_TILE_CASE(3, 2)
                    LF_TILE_CASE(4, 2) LF_TILE_CASE(5, 2) LF_TILE_CASE(6, 2)
#if LF_TILE_ROWS > 6
                    LF_TILE_CASE(7, 2) LF_TILE_CASE(8, 2) LF_TILE_CASE(9, 2)
                    LF_TILE_CASE(10, 2) LF_TILE_CASE(11, 2) LF_TILE_CASE(12, 2)
#endif
                }
            }
        }
    }
}
#undef LF_TILE_CASE

/* C[M, N] += A^T B over K rows, A [K, >= M] and B [K, >= N] row major (row strides
 * lda, ldb): a weight gradient, dW = dG^T X over every row of a sequence, where K is
 * large and M, N often small. BLAS packs both operands for this shape with transposing
 * copies, which took up to 0.85x the time of its kernel (T*B = 15360, M = 128, N = 64).
 * Here both packings are row copies: blocks of K by 6 columns of A, and B's block as
 * plain panels (pack), zero padded, then 6 x 2 tiles on them (GotoBLAS's scheme; like
 * panel_gemm's tiles, for LF_PANEL_NV = 2 only). Every element sums its K blocks in
 * order, whatever M range a thread takes. scratch: tn_scratch elements, a multiple of
 * 64 bytes. */
#define LF_TN_KC 256
#define LF_TN_MC 96
#define LF_TN_NC 256

static size_t FN(tn_scratch)(void)
{
    return (size_t)LF_TN_KC * (LF_TN_MC + LF_TN_NC);
}

static inline __attribute__((always_inline)) void FN(tile_tn)(
    const TYPE *ap, const TYPE *bp, int kc, TYPE *C, int ldc, int rows, int cols)
{
    const FN(vec) ones = (FN(vec)){0} + 1;
    FN(vec) acc[6][2];
    for (int i = 0; i < 6; i++) acc[i][0] = acc[i][1] = (FN(vec)){0};
    for (int k = 0; k < kc; k++, ap += 6, bp += 2 * VL) {
        const FN(vec) b0 = FN(load)(bp), b1 = FN(load)(bp + VL);
        _Pragma("GCC unroll 6")
        for (int i = 0; i < 6; i++) {
            const FN(vec) a = ones * ap[i];
            acc[i][0] += a * b0;
            acc[i][1] += a * b1;
        }
    }
    for (int i = 0; i < rows; i++) {
        TYPE *o = C + (size_t)i * ldc;
        if (cols == 2 * VL) {
            for (int v = 0; v < 2; v++) {
                FN(vec) cur = FN(load)(o + v * VL) + acc[i][v];
                memcpy(o + v * VL, &cur, sizeof cur);
            }
        } else {
            TYPE t[2 * VL];
            memcpy(t, acc[i], sizeof t);
            for (int l = 0; l < cols; l++) o[l] += t[l];
        }
    }
}

static void FN(gemm_tn)(int M, int N, int K, const TYPE *A, int lda, const TYPE *B,
                                  int ldb, TYPE *C, int ldc, TYPE *scratch)
{
    const int NW = LF_PANEL_NV * VL;
    TYPE *ap = scratch, *bp = scratch + (size_t)LF_TN_KC * LF_TN_MC;
    for (int n0 = 0; n0 < N; n0 += LF_TN_NC) {
        const int nc = N - n0 < LF_TN_NC ? N - n0 : LF_TN_NC, npan = (nc + NW - 1) / NW;
        for (int k0 = 0; k0 < K; k0 += LF_TN_KC) {
            const int kc = K - k0 < LF_TN_KC ? K - k0 : LF_TN_KC;
            FN(panels) pb;  /* B's block as plain panels of NW columns, zero padded */
            FN(panels_init)(&pb, kc, 0, 0, nc, B + (size_t)k0 * ldb + n0, ldb, 0);
            pb.data = bp;
            FN(pack)(&pb, 0, npan);
            for (int m0 = 0; m0 < M; m0 += LF_TN_MC) {
                const int mc = M - m0 < LF_TN_MC ? M - m0 : LF_TN_MC, mpan = (mc + 5) / 6;
                for (int i = 0; i < mpan; i++) {
                    const int r0 = m0 + 6 * i, w = M - r0 < 6 ? M - r0 : 6;
                    TYPE *dst = ap + (size_t)i * kc * 6;
                    for (int k = 0; k < kc; k++, dst += 6) {
                        const TYPE *src = A + (size_t)(k0 + k) * lda + r0;
                        if (w == 6)
                            memcpy(dst, src, 6 * sizeof(TYPE));
                        else
                            for (int l = 0; l < 6; l++) dst[l] = l < w ? src[l] : 0;
                    }
                }
                for (int j = 0; j < npan; j++) {
                    const int c0 = n0 + j * NW, cols = N - c0 < NW ? N - c0 : NW;
                    for (int i = 0; i < mpan; i++) {
                        const int r0 = m0 + 6 * i, rows = M - r0 < 6 ? M - r0 : 6;
                        FN(tile_tn)(ap + (size_t)i * kc * 6, bp + (size_t)j * kc * NW, kc,
                                    C + (size_t)r0 * ldc + c0, ldc, rows, cols);
                    }
                }
            }
        }
    }
}
#undef LF_TN_KC
#undef LF_TN_MC
#undef LF_TN_NC
#undef TB
