/* The shared recurrence driver for every cell type, one direction of one layer.
 * Included once per dtype by recurrence.c, after cells.template.h and panel.template.h.
 *
 * Layout: sequences are packed time-major, the way PyTorch packs them. Step t holds
 * the nb(t) rows whose length exceeds t (a prefix of the batch, since lengths are
 * sorted non-increasing) at packed rows off(t) .. off(t)+nb(t); without lengths this
 * is the plain [T, B] layout. So x, y, gates and aux are [N, .] with N = sum(lengths).
 *
 * Forward: the input projection of all steps at once (in inference, of a chunk of
 * steps at a time so that memory stays O(B*H)), by our own tiles on packed W_ih for a
 * narrow input or few rows, else by BLAS; then per step the recurrent GEMM
 * h_{t-1} W_hh^T on packed W_hh (panel.template.h), each few panels followed at once by
 * the cell's pointwise step on the units they produced. Inference keeps the packed
 * weights in the work buffer between calls, checked against a copy of the weights. The
 * cache for backward is the gate activations and the cell's aux rows (LSTM: c_t); h_t
 * is y itself.
 * Backward: per step the pointwise step giving dG, then dh_{t-1} = dG W_hh on packed
 * panels; afterwards the weight gradients and dx as BLAS GEMMs over all N rows.
 *
 * Threads: the work of a forward step goes in chunks of panels (hidden units), each
 * thread taking its own chunks first and then any not yet started; the backward's is
 * split by units. One spin barrier per step (two with a projection). Inference with
 * fewer chunks of units than threads splits the batch instead (split_batch). The
 * BLAS GEMMs are split by rows, each thread calling BLAS held at one thread (blas.c), so
 * no BLAS worker competes with ours for the cores. Every output element is computed by
 * one thread in a fixed order: results depend on the thread count only through the BLAS
 * row split and, with a split batch, through the tiles a thread's rows fall in (a tile
 * of fewer than 4 rows sums odd and even k apart).
 */

/* C[M, N] = A op(B) + beta C for a few rows of A, as dot products (B^T, M <= 16, four
 * rows sharing each load of B) or row updates (B, M <= 4): BLAS packs all of B on every
 * call, which costs more than the product itself when A has a handful of rows (a single
 * step, a batch of one, a thread's share of a short input projection). */
static inline TYPE FN(hsum)(FN(vec) v)
{
    TYPE s = 0;
    for (int l = 0; l < VL; l++) s += v[l];
    return s;
}

static void FN(small_gemm)(int tb, int M, int N, int K, const TYPE *A, int lda,
                                     const TYPE *B, int ldb, TYPE beta, TYPE *C, int ldc)
{
    if (tb && M == 1) {  /* one row (a cell step at batch 1): four sums along K keep
                            * four FMAs in flight, where one sum waits on each */
        for (int n = 0; n < N; n++) {
            const TYPE *b = B + (size_t)n * ldb;
            FN(vec) acc[4] = {{0}, {0}, {0}, {0}};
            int k = 0;
            for (; k + 4 * VL <= K; k += 4 * VL)
                for (int u = 0; u < 4; u++)
                    acc[u] += FN(load)(A + k + u * VL) * FN(load)(b + k + u * VL);
            for (; k + VL <= K; k += VL) acc[0] += FN(load)(A + k) * FN(load)(b + k);
            TYPE sum = FN(hsum)((acc[0] + acc[1]) + (acc[2] + acc[3]));
            for (; k < K; k++) sum += A[k] * b[k];
            C[n] = beta == 0 ? sum : beta * C[n] + sum;
        }
        return;
    }
    if (tb) {
        for (int i0 = 0; i0 < M; i0 += 4) {
            const int mr = M - i0 < 4 ? M - i0 : 4;
            const TYPE *a[4];
            for (int i = 0; i < 4; i++) a[i] = A + (size_t)(i0 + (i < mr ? i : 0)) * lda;
            for (int n = 0; n < N; n++) {
                const TYPE *b = B + (size_t)n * ldb;
                FN(vec) acc[4] = {{0}, {0}, {0}, {0}};
                int k = 0;
                for (; k + VL <= K; k += VL) {
                    const FN(vec) bv = FN(load)(b + k);
                    for (int i = 0; i < 4; i++) acc[i] += FN(load)(a[i] + k) * bv;
                }
                for (int i = 0; i < mr; i++) {
                    TYPE sum = FN(hsum)(acc[i]);
                    for (int kk = k; kk < K; kk++) sum += a[i][kk] * b[kk];
                    TYPE *c = C + (size_t)(i0 + i) * ldc + n;
                    *c = beta == 0 ? sum : beta * *c + sum;
                }
            }
        }
        return;
    }
    for (int i = 0; i < M; i++) {
        TYPE *c = C + (size_t)i * ldc;
        for (int n = 0; n < N; n++) c[n] = beta == 0 ? 0 : beta * c[n];
        for (int k = 0; k < K; k++) {
            const TYPE aik = A[(size_t)i * lda + k];
            const TYPE *b = B + (size_t)k * ldb;
LF_IVDEP
            for (int n = 0; n < N; n++) c[n] += aik * b[n];
        }
    }
}

/* C[M,N] = alpha op(A) op(B) + beta C for row-major operands: column-major BLAS sees
 * every row-major matrix transposed, so it computes C^T = op(B)^T op(A)^T. */
static void FN(gemm)(const lf_blas *bl, int ta, int tb, int M, int N, int K,
                     TYPE alpha, const TYPE *A, int lda, const TYPE *B, int ldb,
                     TYPE beta, TYPE *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    if (!ta && alpha == 1 && (M <= 4 || (tb && M <= 16))) {
        FN(small_gemm)(tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
    BLAS_GEMM(bl)(&cb, &ca, &N, &M, &K, &alpha, (TYPE *)B, &ldb, (TYPE *)A, &lda,
                  &beta, C, &ldc);
}

/* dst[r, c0:c1] = src[r, c0:c1] for rows r < rows */
static void FN(copy_cols)(int rows, int c0, int c1, const TYPE *src, int lds, TYPE *dst,
                          int ldd)
{
    if (c1 <= c0) return;
    for (int r = 0; r < rows; r++)
        memcpy(dst + (size_t)r * ldd + c0, src + (size_t)r * lds + c0,
               (size_t)(c1 - c0) * sizeof(TYPE));
}

/* Combined biases: bx goes into every gate pre-activation; for GRU the n block of the
 * recurrent bias (b_hn) stays apart in bh, because r multiplies it. */
static void FN(prepare_bias)(const lf_dims *d, const TYPE *b_ih, const TYPE *b_hh,
                             TYPE *bx, TYPE *bh)
{
    const int GH = lf_num_gates(d->cell) * d->hidden_size;
    const int split = d->cell == LF_GRU ? 2 * d->hidden_size : GH;
    for (int j = 0; j < GH; j++) {
        TYPE bi = b_ih ? b_ih[j] : 0, bhj = b_hh ? b_hh[j] : 0;
        bx[j] = bi + (j < split ? bhj : 0);
        bh[j] = bhj;
    }
}

/* The packed-weight layouts, shared by the work-size functions and the kernels. */
static void FN(fwd_panels)(const lf_dims *d, FN(panels) *pw, FN(panels) *pr,
                           FN(panels) *pi, const TYPE *w_hh, const TYPE *w_hr,
                           const TYPE *w_ih)
{
    const int G = lf_num_gates(d->cell), H = d->hidden_size, P = d->out_size;
    const int I = d->input_size;
    FN(panels_init)(pw, P, G, H, 0, w_hh, P, 1);      /* g += h W_hh^T */
    FN(panels_init)(pr, H, 0, 0, P, w_hr, H, 1);      /* y = m W_hr^T */
    /* g = x W_ih^T in W_hh's layout: each thread projects the input for its own units */
    FN(panels_init)(pi, I, G, H, 0, w_ih, I, 1);
}

static void FN(bwd_panels)(const lf_dims *d, FN(panels) *pb, FN(panels) *prt,
                           FN(panels) *pdx, const TYPE *w_hh, const TYPE *w_hr,
                           const TYPE *w_ih)
{
    const int GH = lf_num_gates(d->cell) * d->hidden_size, H = d->hidden_size;
    const int P = d->out_size, I = d->input_size;
    FN(panels_init)(pb, GH, 0, 0, P, w_hh, P, 0);     /* dh = dG W_hh */
    FN(panels_init)(prt, P, 0, 0, H, w_hr, H, 0);     /* dm = dh W_hr */
    FN(panels_init)(pdx, GH, 0, 0, I, w_ih, I, 0);    /* dx = dG W_ih (LF_OWN_GEMMS) */
}


/* A single step does not pay for packing W (it is read once either way): then the
 * per-step GEMMs go to BLAS, on one thread of ours. */
static int FN(use_panels)(const lf_dims *d)
{
    return d->seq_len > 1;
}

/* Unit blocks (of VL units) per chunk of a forward step's work: 32 units of an LSTM or
 * GRU, 64 of an RNN, at most 4 or 8 blocks; wider vectors make fewer, larger blocks, and
 * a step with fewer chunks than threads leaves threads idle at its barrier. */
static int FN(chunk_blocks)(int cell)
{
    const int units = cell == LF_LSTM || cell == LF_GRU ? 32 : 64;
    return units / (VL > 8 ? VL : 8);
}

/* Inference whose step's chunks of units (chunk_blocks) do not share out evenly between
 * the threads (the busiest has 15% more units than an even share: 32, 48, 96 or 160
 * units of an LSTM on two threads) splits the batch instead, while W_hh stays in a
 * core's cache: each thread runs its own rows through a chunk of steps with no barrier
 * between steps (the chunk's input projection split by rows, between two barriers).
 * Measured on a Zen 3, 2 threads, T = 30-100, B = 8-64, alternating runs: H = 32, 48,
 * 96, 160 1.2-1.6x faster; with even shares (H = 64, 128, B = 4-64) 0-13% slower. */
static int FN(split_batch)(const lf_dims *d, int training)
{
    if (training || !FN(use_panels)(d)) return 0;
    FN(panels) pw, pr, pi;
    FN(fwd_panels)(d, &pw, &pr, &pi, NULL, NULL, NULL);
    const int team = lf_team_size(d, pw.npanels), H = d->hidden_size;
    const int units = FN(chunk_blocks)(d->cell) * VL, nchunks = (H + units - 1) / units;
    const int busiest = (nchunks + team - 1) / team * units;
    return team > 1 && d->batch >= 2 * team && (busiest < H ? busiest : H) * team > 1.15 * H &&
           (double)pw.ncols * pw.K * sizeof(TYPE) <= 512 * 1024;
}

/* dx by our own tiles on packed W_ih rather than BLAS (see LF_OWN_GEMMS). */
static int FN(own_dx)(const lf_dims *d)
{
    return LF_OWN_GEMMS && FN(use_panels)(d);
}

/* out[rows, panels p0..p1] (+)= [A1 | A2] W: packed panels, or BLAS on W unpacked (then
 * over all columns: p0 = 0, p1 = npanels). */
static void FN(step_gemm)(const lf_blas *bl, const FN(panels) *pk, int p0, int p1, int rows,
                          int K1, const TYPE *A1, int lda1, const TYPE *A2, int lda2,
                          TYPE *out, int ldo, int accumulate)
{
    if (pk->data) {
        FN(panel_gemm)(pk, p0, p1, rows, K1, A1, lda1, A2, lda2, out, ldo, accumulate);
        return;
    }
    const TYPE beta = accumulate ? 1 : 0;
    if (pk->trans_w) {
        FN(gemm)(bl, 0, 1, rows, pk->ncols, K1, 1, A1, lda1, pk->w, pk->ldw, beta, out, ldo);
        return;
    }
    FN(gemm)(bl, 0, 0, rows, pk->ncols, K1, 1, A1, lda1, pk->w, pk->ldw, beta, out, ldo);
    if (A2 && pk->K > K1)
        FN(gemm)(bl, 0, 0, rows, pk->ncols, pk->K - K1, 1, A2, lda2,
                 pk->w + (size_t)K1 * pk->ldw, pk->ldw, 1, out, ldo);
}

/* Our tiles project the input, each thread its own units (no barrier, no per-thread
 * packing of W_ih inside BLAS), when it is narrow or there are few rows to project at a
 * time: BLAS packs all of W_ih on every call, which a hundred rows do not pay for
 * (measured at I = 1024, 25 x 4 rows: 1.16x faster with our tiles). Many rows of a wide
 * input go to BLAS, split by rows, for its cache blocking (measured with our tiles at
 * I = 1024 and 1536, 400-800 rows: 0.89-1.0x of BLAS's speed). */
static int FN(own_input_projection)(const lf_dims *d, int training)
{
    if (LF_OWN_GEMMS || FN(split_batch)(d, training)) return FN(use_panels)(d);
    const int steps = training ? d->seq_len : lf_chunk_steps(d);  /* rows per pass / B */
    return FN(use_panels)(d) && (d->input_size <= 512 || (double)steps * d->batch <= 128);
}

/* Inference keeps its packed weights in the work buffer between calls (with the
 * weights they came from, to compare); training's weights change every step. */
static int FN(keeps_panels)(const lf_dims *d, int training)
{
    return FN(use_panels)(d) && !training;
}

/* A signature of the packed layout (shapes, dtype, the variant's vector width and
 * instruction set), 0 for none: a buffer packed by another variant is packed again. */
static unsigned FN(panels_signature)(const lf_dims *d, int training)
{
    if (!FN(keeps_panels)(d, training)) return 0;
    unsigned h = 2166136261u;
    const char *isa = LF_STR(LF_ISA);
    for (; *isa; isa++) h = (h ^ (unsigned char)*isa) * 16777619u;
    const int v[] = {d->cell, d->input_size, d->hidden_size, d->out_size, (int)sizeof(TYPE),
                     FN(own_input_projection)(d, training), LF_VEC_BYTES, LF_PANEL_NV};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) h = (h ^ (unsigned)v[i]) * 16777619u;
    return h | 1;
}


/* Elements of work, with room to align the panels to 64 bytes. */
static size_t FN(lf_forward_work_size)(const lf_dims *d, int training)
{
    const size_t GH = (size_t)lf_num_gates(d->cell) * d->hidden_size, B = d->batch;
    const size_t H = d->hidden_size;
    FN(panels) pw, pr, pi;
    FN(fwd_panels)(d, &pw, &pr, &pi, NULL, NULL, NULL);
    size_t n = LF_WORK_SLACK / sizeof(TYPE) + FN(panels_size)(&pw) + 2 * GH;
    if (FN(own_input_projection)(d, training)) n += FN(panels_size)(&pi);
    if (FN(keeps_panels)(d, training)) {  /* the copies the panels were packed from */
        n += (size_t)pw.ncols * pw.K;
        if (FN(own_input_projection)(d, training)) n += (size_t)pi.ncols * pi.K;
        if (lf_has_proj(d)) n += (size_t)pr.ncols * pr.K;
    }
    if (d->cell == LF_GRU) n += B * GH + B * H;
    if (lf_has_proj(d)) n += B * H + FN(panels_size)(&pr);
    if (!training) n += (size_t)lf_chunk_steps(d) * B * GH;
    return n;
}

static size_t FN(lf_backward_work_size)(const lf_dims *d)
{
    const size_t B = d->batch, H = d->hidden_size, P = d->out_size;
    const size_t N = (size_t)lf_total_rows(d);
    FN(panels) pb, prt, pdx;
    FN(bwd_panels)(d, &pb, &prt, &pdx, NULL, NULL, NULL);
    size_t n = LF_WORK_SLACK / sizeof(TYPE) + FN(panels_size)(&pb) + B * P + N * P;
    if (FN(own_dx)(d)) n += FN(panels_size)(&pdx);
    n += (LF_MAX_THREADS * (size_t)d->seq_len * sizeof(double) + sizeof(TYPE) - 1) / sizeof(TYPE);
    if (d->cell == LF_LSTM) n += B * H;
    if (lf_has_proj(d)) n += FN(panels_size)(&prt) + B * H + N * H + N * P;
    n += (size_t)lf_max_team(d) * FN(tn_scratch)();
    n += 2 * (size_t)lf_num_gates(d->cell) * H + 64 / sizeof(TYPE);  /* dbias, aligned */
    return n;
}

/* Carve n elements off *w, keeping 64-byte alignment for the next piece. */
static TYPE *FN(take)(TYPE **w, size_t n)
{
    TYPE *p = *w;
    const size_t line = 64 / sizeof(TYPE);
    *w += (n + line - 1) / line * line;
    return p;
}

typedef struct {
    const lf_blas *bl;
    const lf_dims *d;
    const TYPE *x, *w_ih, *w_hh, *w_hr, *h0, *c0;
    TYPE *y, *h_n, *c_n, *gates, *aux;
    int ldx, ldy, training, Tc;
    TYPE *bx, *bh, *gh, *m, *ghn, *gbuf;
    FN(panels) pw, pr, pi;
    TYPE *cw, *cr, *ci;   /* copies of the weights the panels hold, or NULL */
    int reuse;            /* the panels and copies are from an earlier call: pack_cached */
    int stop;             /* thread 0's cancel, named for a barrier: lf_team_stops */
    int split;            /* each thread runs every step for its own rows: split_batch */
    double next_poll;
    lf_team team;
    lf_counter next[2][LF_MAX_THREADS];  /* per step parity: each thread's next chunk */
} FN(fwd_ctx);

/* Where the gates of the chunk starting at packed row chunk0 go: training keeps every
 * step's gates (the cache), inference one chunk's. */
static TYPE *FN(chunk_gates)(const FN(fwd_ctx) *c, ptrdiff_t chunk0)
{
    return c->training ? c->gates + chunk0 * lf_num_gates(c->d->cell) * c->d->hidden_size
                       : c->gbuf;
}

static void FN(fwd_worker)(void *arg, int tid)
{
    FN(fwd_ctx) *c = arg;
    const lf_dims *d = c->d;
    const int cell = d->cell, T = d->seq_len, I = d->input_size, H = d->hidden_size;
    const int P = d->out_size, GH = lf_num_gates(cell) * H, nt = c->team.n;
    const int lstm = cell == LF_LSTM, gru = cell == LF_GRU, proj = c->w_hr != NULL;
    const int ldx = c->ldx, ldy = c->ldy, Tc = c->Tc;

    /* The step's panels go a few unit blocks at a time (the gates just computed are
     * still in cache for the pointwise step), in chunks handed out from per-thread
     * counters: each thread takes its own chunks (the same every step, so its panels
     * stay in its cache), then any another thread has not yet started. A thread held up
     * (the machine is shared) no longer holds up the step; every chunk is computed by
     * one thread the same way, so the results do not depend on who does what. */
    const int per = c->pw.data ? FN(chunk_blocks)(cell) * lf_num_gates(cell) / c->pw.NV
                               : c->pw.npanels;
    const int nchunks = (c->pw.npanels + per - 1) / per;
    int k0, k1, p0, p1, q0 = 0, q1 = 0, v0 = 0, v1 = 0;
    lf_split(nchunks, nt, tid, &k0, &k1);  /* this thread's own chunks, packed by it */
    p0 = k0 * per < c->pw.npanels ? k0 * per : c->pw.npanels;
    p1 = k1 * per < c->pw.npanels ? k1 * per : c->pw.npanels;
    if (c->pw.data) FN(pack_cached)(&c->pw, c->cw, p0, p1, c->reuse);
    if (c->pi.data) FN(pack_cached)(&c->pi, c->ci, p0, p1, c->reuse);
    if (proj) {  /* this thread's units of the projected h */
        lf_split(c->pr.npanels, nt, tid, &q0, &q1);
        if (c->pr.data) FN(pack_cached)(&c->pr, c->cr, q0, q1, c->reuse);
        if (c->split) { q0 = 0; q1 = c->pr.npanels; }
        FN(panel_units)(&c->pr, q0, q1, &v0, &v1);
    }
    /* the rows this thread runs: all, or with split its own share, every step */
    int b0 = 0, b1 = d->batch;
    if (c->split) lf_split(d->batch, nt, tid, &b0, &b1);
    lf_barrier_wait(&c->team);

    ptrdiff_t off = lf_first_offset(d);
    ptrdiff_t chunk0 = 0;  /* packed row where gbuf starts */
    ptrdiff_t rows = 0;    /* rows of gbuf */
    for (int s = 0; s < T; s++) {
        const int t = d->reverse ? T - 1 - s : s;
        const int nb = lf_active(d, t);
        const int project = s % Tc == 0;
        if (project) {
            /* the packed rows of steps s .. s+Tc-1 are contiguous in either direction */
            const int steps = T - s < Tc ? T - s : Tc;
            rows = 0;
            for (int k = 0; k < steps; k++) rows += lf_active(d, d->reverse ? t - k : t + k);
            chunk0 = d->reverse ? off + nb - rows : off;
            /* every thread is done with the last chunk's gates; a split batch stops here */
            if (c->split && s > 0 &&
                lf_team_stops(&c->team, &c->stop, s, tid, d->cancel, &c->next_poll))
                return;
            int r0, r1;  /* with a split batch, the chunk's rows split between threads */
            lf_split((int)rows, nt, tid, &r0, &r1);
            if (c->split)
                FN(panel_gemm)(&c->pi, 0, c->pi.npanels, r1 - r0, I,
                               c->x + (chunk0 + r0) * ldx, ldx, NULL, 0,
                               FN(chunk_gates)(c, chunk0) + (size_t)r0 * GH, GH, 0);
            else if (!c->pi.data)
                FN(gemm)(c->bl, 0, 1, r1 - r0, GH, I, 1, c->x + (chunk0 + r0) * ldx, ldx,
                         c->w_ih, I, 0, FN(chunk_gates)(c, chunk0) + (size_t)r0 * GH, GH);
            if (c->split || !c->pi.data) lf_barrier_wait(&c->team);
        }
        ptrdiff_t offprev;
        const int carried_all = lf_carried(d, s, t, nb, off, &offprev);
        /* rows whose sequence ends here: forward direction, length t+1; reverse, all at t=0 */
        const int nb_next = s + 1 < T ? lf_active(d, d->reverse ? t - 1 : t + 1) : 0;
        const int end0_all = nb_next < nb ? nb_next : nb;
        /* from here on, rows count from b0: this thread's window of the step's rows */
        const int nb_w = lf_window(nb, b0, b1);
        const int carried = lf_window(carried_all, b0, b1);
        const int end0 = lf_window(end0_all, b0, b1);
        TYPE *g = FN(chunk_gates)(c, chunk0) + (off - chunk0 + b0) * GH;
        TYPE *yt = c->y + (off + b0) * ldy;
        const TYPE *hp = c->y + (offprev + b0) * ldy;  /* valid for rows < carried */
        const TYPE *h0 = c->h0 + (size_t)b0 * P;
        TYPE *h_n = c->h_n + (size_t)b0 * P;
        TYPE *rec = gru ? c->gh + (size_t)b0 * GH : g;  /* GRU keeps the recurrent part apart */
        TYPE *hout = proj ? c->m + (size_t)b0 * H : yt;
        const int ldhout = proj ? H : ldy;
        /* LSTM: c_t goes to the cache in training; in inference c_n holds the running
         * state in place (rows that have not started yet still hold c0) */
        TYPE *auxt = lf_aux_size(cell, H) == 0 ? NULL
                     : (c->training ? c->aux + off * lf_aux_size(cell, H) : lstm ? c->c_n : c->ghn)
                       + (size_t)b0 * H;
        const TYPE *cprev = lstm ? (c->training ? c->aux + offprev * H : c->c_n) + (size_t)b0 * H
                                 : NULL;
        const TYPE *cprev_new = lstm ? (c->training ? c->c0 : c->c_n) + (size_t)b0 * H : NULL;
        TYPE *c_n = lstm ? c->c_n + (size_t)b0 * H : NULL;

        for (int i = 0; i < (c->split ? 1 : nt); i++) {
            const int owner = (tid + i) % nt;
            int c0 = 0, c1 = nchunks;
            if (!c->split) lf_split(nchunks, nt, owner, &c0, &c1);
            for (;;) {
                const int k = c0 + __atomic_fetch_add(&c->next[s & 1][owner].n, 1,
                                                      __ATOMIC_RELAXED);
                if (k >= c1) break;
                const int pc = k * per, pe = pc + per < c->pw.npanels ? pc + per
                                                                       : c->pw.npanels;
                int a0, a1;
                FN(panel_units)(&c->pw, pc, pe, &a0, &a1);
                if (project && c->pi.data && !c->split)  /* the input's part of their gates */
                    FN(panel_gemm)(&c->pi, pc, pe, (int)rows, I, c->x + chunk0 * ldx, ldx,
                                   NULL, 0, FN(chunk_gates)(c, chunk0), GH, 0);
                FN(step_gemm)(c->bl, &c->pw, pc, pe, carried, P, hp, ldy, NULL, 0, rec, GH,
                              !gru);
                FN(step_gemm)(c->bl, &c->pw, pc, pe, nb_w - carried, P,
                              h0 + (size_t)carried * P, P, NULL, 0,
                              rec + (size_t)carried * GH, GH, !gru);
                for (int part = 0; part < 2; part++) {
                    const int r0 = part ? carried : 0, r1 = part ? nb_w : carried;
                    if (r1 <= r0) continue;
                    FN(fwd_step) a;
                    a.rows = r1 - r0; a.H = H; a.u0 = a0; a.u1 = a1;
                    a.g = g + (size_t)r0 * GH;
                    a.gh = gru ? rec + (size_t)r0 * GH : NULL;
                    a.bx = c->bx; a.bh = c->bh;
                    a.h_prev = part ? h0 + (size_t)r0 * P : hp + (size_t)r0 * ldy;
                    a.ld_hp = part ? P : ldy;
                    a.c_prev = lstm ? (part ? cprev_new : cprev) + (size_t)r0 * H : NULL;
                    a.aux = auxt ? auxt + (size_t)r0 * H : NULL;
                    a.h = hout + (size_t)r0 * ldhout; a.ld_h = ldhout;
                    FN(cell_fwd)[cell](&a);
                }
                if (!proj)
                    FN(copy_cols)(nb_w - end0, a0, a1, yt + (size_t)end0 * ldy, ldy,
                                  h_n + (size_t)end0 * P, P);
                if (lstm && c->training)
                    FN(copy_cols)(nb_w - end0, a0, a1, auxt + (size_t)end0 * H, H,
                                  c_n + (size_t)end0 * H, H);
            }
        }
        /* this thread's counter for step s+1: step s-1, its last user, is over */
        c->next[(s + 1) & 1][tid].n = 0;
        if (proj) {
            if (!c->split) lf_barrier_wait(&c->team);
            FN(step_gemm)(c->bl, &c->pr, q0, q1, nb_w, H, hout, H, NULL, 0, yt, ldy, 0);
            FN(copy_cols)(nb_w - end0, v0, v1, yt + (size_t)end0 * ldy, ldy,
                          h_n + (size_t)end0 * P, P);
        }
        if (!c->split && lf_team_stops(&c->team, &c->stop, s, tid, d->cancel, &c->next_poll))
            return;
        off = lf_next_offset(d, t, nb, off);
    }
}

static int FN(forward)(const lf_blas *bl, const lf_dims *d,
                   const TYPE *x, int ldx, const TYPE *w_ih, const TYPE *w_hh,
                   const TYPE *b_ih, const TYPE *b_hh, const TYPE *w_hr,
                   const TYPE *h0, const TYPE *c0,
                   TYPE *y, int ldy, TYPE *h_n, TYPE *c_n,
                   TYPE *gates, TYPE *aux, TYPE *work, int work_reused)
{
    const int rc = lf_check_shared(bl, d, x, w_ih, w_hh, h0, y);
    if (rc != LF_OK) return rc;
    LF_REQUIRE(h_n, LF_FIELD_H_N);
    LF_REQUIRE(work, LF_FIELD_WORK);
    const int cell = d->cell, B = d->batch, H = d->hidden_size;
    const int GH = lf_num_gates(cell) * H;
    const int training = gates != NULL;
    const int lstm = cell == LF_LSTM, gru = cell == LF_GRU;
    LF_REQUIRE(!lstm || c0, LF_FIELD_C0);
    LF_REQUIRE(!lstm || c_n, LF_FIELD_C_N);
    LF_REQUIRE(!training || !lf_aux_size(cell, H) || aux, LF_FIELD_AUX);
    LF_REQUIRE((w_hr != NULL) == lf_has_proj(d), LF_FIELD_W_HR);

    FN(fwd_ctx) c;
    memset(c.next, 0, sizeof c.next);
    c.bl = bl; c.d = d; c.x = x; c.w_ih = w_ih; c.w_hh = w_hh; c.w_hr = w_hr;
    c.h0 = h0; c.c0 = c0; c.y = y; c.h_n = h_n; c.c_n = c_n; c.gates = gates; c.aux = aux;
    c.ldx = ldx; c.ldy = ldy; c.training = training;
    c.split = FN(split_batch)(d, training);
    c.Tc = training ? lf_train_chunk_steps(d) : lf_chunk_steps(d);
    FN(fwd_panels)(d, &c.pw, &c.pr, &c.pi, w_hh, w_hr, w_ih);
    TYPE *w = (TYPE *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    /* the header says which packed weights the buffer holds; cleared while this call
     * may overwrite them */
    unsigned *header = (unsigned *)w;
    const unsigned signature = FN(panels_signature)(d, training);
    c.reuse = work_reused && signature && header[0] == signature ? work_reused : 0;
    header[0] = 0;
    w += LF_WORK_HEADER / sizeof(TYPE);
    const int packed = FN(use_panels)(d), keep = FN(keeps_panels)(d, training);
    c.pw.data = packed ? FN(take)(&w, FN(panels_size)(&c.pw)) : NULL;
    c.pi.data = FN(own_input_projection)(d, training) ? FN(take)(&w, FN(panels_size)(&c.pi))
                                                       : NULL;
    c.pr.data = packed && w_hr ? FN(take)(&w, FN(panels_size)(&c.pr)) : NULL;
    c.cw = keep ? FN(take)(&w, (size_t)c.pw.ncols * c.pw.K) : NULL;
    c.ci = keep && c.pi.data ? FN(take)(&w, (size_t)c.pi.ncols * c.pi.K) : NULL;
    c.cr = keep && c.pr.data ? FN(take)(&w, (size_t)c.pr.ncols * c.pr.K) : NULL;
    c.bx = FN(take)(&w, GH);
    c.bh = FN(take)(&w, GH);
    c.gh = gru ? FN(take)(&w, (size_t)B * GH) : NULL;
    c.m = w_hr ? FN(take)(&w, (size_t)B * H) : NULL;
    c.ghn = gru ? FN(take)(&w, (size_t)B * H) : NULL;
    c.gbuf = training ? gates : FN(take)(&w, (size_t)c.Tc * B * GH);
    FN(prepare_bias)(d, b_ih, b_hh, c.bx, c.bh);
    c.stop = 0;
    c.next_poll = lf_poll_start();
    if (lstm && !training) memcpy(c_n, c0, (size_t)B * H * sizeof(TYPE));
    /* with our own input projection and panels no BLAS runs: leave its pool alone
     * (changing its size wakes its threads, which then spin beside ours) */
    const int blas = !c.pi.data;
    if (blas) lf_blas_single_enter(bl);
    lf_team_run(&c.team, d->pool, packed ? lf_team_size(d, c.pw.npanels) : 1, FN(fwd_worker),
                &c);
    if (blas) lf_blas_single_leave(bl);
    header[0] = signature;
    return c.stop ? LF_ECANCELLED : LF_OK;
}

typedef struct {
    const lf_blas *bl;
    const lf_dims *d;
    const TYPE *x, *w_ih, *w_hh, *w_hr, *h0, *c0, *y, *dy;
    TYPE *gates, *aux, *dx, *dh0, *dc0, *dw_ih, *dw_hh, *db_ih, *db_hh, *dw_hr;
    double *dh_norms, *norms_part;
    int ldx, ldy, lddy, lddx, accumulate_dx;
    TYPE *dh, *dc, *hprev, *dm, *m_all, *dh_all;
    TYPE *tn;  /* gemm_tn's scratch, tn_scratch() per thread */
    TYPE *dbias;  /* [2, GH]: the bias gradients of this call, added to db_* at its end */
    FN(panels) pb, prt, pdx;
    int stop;  /* as in fwd_ctx */
    double next_poll;
    lf_team team;
} FN(bwd_ctx);

/* The bias gradients: column sums of this step's dG rows (for the GRU's recurrent n
 * block, of its gradient in aux) for the gates of units [u0, u1), added while the rows
 * are in cache, into the call's own sums (c->dbias), which go to db_* after the last
 * step: a cancelled call leaves the caller's gradients as they were. Every column belongs to one thread and is summed in the same order
 * whatever the number of threads. */
static void FN(add_bias_grads)(const FN(bwd_ctx) *c, int nb, const TYPE *g, const TYPE *aux,
                               int u0, int u1)
{
    const int H = c->d->hidden_size, G = lf_num_gates(c->d->cell);
    const int GH = G * H, split = lf_hh_split(c->d->cell, H);
    for (int r = 0; r < nb; r++) {
        const TYPE *gr = g + (size_t)r * GH;
        for (int k = 0; k < G; k++) {
            TYPE *db_ih = c->db_ih ? c->dbias + k * H : NULL;
            TYPE *db_hh = c->db_hh ? c->dbias + GH + k * H : NULL;
            const TYPE *dg = gr + k * H;
            const TYPE *dgh = k * H < split ? dg : aux + (size_t)r * H;
            if (db_ih)
                for (int u = u0; u < u1; u++) db_ih[u] += dg[u];
            if (db_hh)
                for (int u = u0; u < u1; u++) db_hh[u] += dgh[u];
        }
    }
}

/* dW[M, N] += A^T B over K rows: by gemm_tn where BLAS's packing weighs most (small M
 * and N: a training step at 30,512,64,64, M = 128 and N = 64 per thread, 1.01-1.12x,
 * 1.07x on average over five interleaved runs), else by BLAS, whose kernel is faster on
 * big blocks (gemm_tn 0.90-0.95x at 25,16,512 and 25,32,1024). In between (150,32,256;
 * 100,64,125,320) the two were level within the noise (0.95-1.06x). */
static void FN(weight_grad)(const lf_blas *bl, int M, int N, int K, const TYPE *A, int lda,
                            const TYPE *B, int ldb, TYPE *dw, int ldw, TYPE *scratch)
{
    if (M <= 0) return;
    if (LF_OWN_GEMMS || 1.0 / M + 1.0 / N > 0.01)
        FN(gemm_tn)(M, N, K, A, lda, B, ldb, dw, ldw, scratch);
    else
        FN(gemm)(bl, 1, 0, M, N, K, 1, A, lda, B, ldb, 1, dw, ldw);
}

static void FN(bwd_weights)(FN(bwd_ctx) *c, int tid);

static void FN(bwd_worker)(void *arg, int tid)
{
    FN(bwd_ctx) *c = arg;
    const lf_dims *d = c->d;
    const int cell = d->cell, T = d->seq_len, I = d->input_size, H = d->hidden_size;
    const int P = d->out_size, GH = lf_num_gates(cell) * H, nt = c->team.n;
    const int lstm = cell == LF_LSTM, gru = cell == LF_GRU, proj = c->w_hr != NULL;
    const int split = lf_hh_split(cell, H), ldy = c->ldy, lddy = c->lddy;
    const ptrdiff_t N = lf_total_rows(d);
    TYPE *dh = c->dh, *dc = c->dc, *hprev = c->hprev;

    int p0, p1, q0 = 0, q1 = 0, u0, u1, v0, v1;
    lf_split(c->pb.npanels, nt, tid, &p0, &p1);
    if (c->pb.data) FN(pack)(&c->pb, p0, p1);
    FN(panel_units)(&c->pb, p0, p1, &v0, &v1);       /* this thread's units of h */
    u0 = v0; u1 = v1;                                /* and its hidden units */
    if (proj) {
        lf_split(c->prt.npanels, nt, tid, &q0, &q1);
        if (c->prt.data) FN(pack)(&c->prt, q0, q1);
        FN(panel_units)(&c->prt, q0, q1, &u0, &u1);
    }

    /* Gather h_{t-1} of every packed row (this thread's columns), so that the
     * weight-gradient GEMM runs once over all rows. */
    ptrdiff_t off = lf_first_offset(d);
    for (int s = 0; s < T; s++) {
        const int t = d->reverse ? T - 1 - s : s;
        const int nb = lf_active(d, t);
        ptrdiff_t offprev;
        const int carried = lf_carried(d, s, t, nb, off, &offprev);
        FN(copy_cols)(carried, v0, v1, c->y + offprev * ldy, ldy, hprev + off * P, P);
        FN(copy_cols)(nb - carried, v0, v1, c->h0 + (size_t)carried * P, P,
                      hprev + (off + carried) * P, P);
        if (s + 1 < T) off = lf_next_offset(d, t, nb, off);
    }
    lf_barrier_wait(&c->team);

    /* BPTT, visiting the steps in the opposite order to the forward. */
    for (int s = T - 1; s >= 0; s--) {
        const int t = d->reverse ? T - 1 - s : s;
        const int nb = lf_active(d, t);
        ptrdiff_t offprev;  /* the forward's previous step, visited next */
        const int carried = lf_carried(d, s, t, nb, off, &offprev);
        TYPE *g = c->gates + off * GH;
        TYPE *auxt = c->aux ? c->aux + off * lf_aux_size(cell, H) : NULL;
        const TYPE *dyt = c->dy + off * lddy;

        /* dh becomes the total dL/dh_t: through the recurrence plus from the output */
        for (int r = 0; r < nb; r++) {
            TYPE *dhr = dh + (size_t)r * P;
            const TYPE *dyr = dyt + (size_t)r * lddy;
            for (int j = v0; j < v1; j++) dhr[j] += dyr[j];
        }
        if (c->dh_norms) {  /* a serial sum in double: only when asked for */
            double sq = 0;
            for (int r = 0; r < nb; r++)
                for (int j = v0; j < v1; j++) {
                    const double v = dh[(size_t)r * P + j];
                    sq += v * v;
                }
            c->norms_part[(size_t)tid * T + t] = sq;
        }
        TYPE *dhin = dh;
        int lddh = P;
        if (proj) {
            /* h = W_hr m: dm = dh W_hr; dW_hr += dh^T m later, with m = o * tanh(c_t)
             * recomputed here while g still holds o */
            FN(copy_cols)(nb, v0, v1, dh, P, c->dh_all + off * P, P);
            for (int r = 0; r < nb; r++)
                for (int j = u0; j < u1; j++)
                    c->m_all[(off + r) * H + j] = g[(size_t)r * GH + 3 * H + j] *
                                                  FN(lf_tanh)(auxt[(size_t)r * H + j]);
            lf_barrier_wait(&c->team);
            FN(step_gemm)(c->bl, &c->prt, q0, q1, nb, P, dh, P, NULL, 0, c->dm, H, 0);
            dhin = c->dm; lddh = H;
        }
        for (int part = 0; part < 2; part++) {
            const int r0 = part ? carried : 0, r1 = part ? nb : carried;
            if (r1 <= r0) continue;
            FN(bwd_step) a;
            a.rows = r1 - r0; a.H = H; a.u0 = u0; a.u1 = u1;
            a.g = g + (size_t)r0 * GH;
            a.aux = auxt ? auxt + (size_t)r0 * H : NULL;
            a.h_prev = hprev + (off + r0) * P; a.ld_hp = P;
            a.c_prev = lstm ? (part ? c->c0 + (size_t)r0 * H : c->aux + (offprev + r0) * H)
                            : NULL;
            a.dh = dhin + (size_t)r0 * lddh; a.ld_dh = lddh;
            a.dc = lstm ? dc + (size_t)r0 * H : NULL;
            FN(cell_bwd)[cell](&a);
        }
        if (c->db_ih || c->db_hh)
            FN(add_bias_grads)(c, nb, g, auxt, u0, u1);
        if (lf_team_stops(&c->team, &c->stop, s, tid, d->cancel, &c->next_poll)) return;
        /* dh_{t-1} = dG_hh W_hh (+ the GRU's direct path z * dh_t, left in dh) */
        FN(step_gemm)(c->bl, &c->pb, p0, p1, nb, split, g, GH, split < GH ? auxt : NULL, H,
                      dh, P, gru);
        if (s > 0) off = offprev;
    }
    lf_barrier_wait(&c->team);
    if (tid == 0) {
        memcpy(c->dh0, dh, (size_t)d->batch * P * sizeof(TYPE));
        if (lstm) memcpy(c->dc0, dc, (size_t)d->batch * H * sizeof(TYPE));
        if (c->dh_norms)
            for (int t = 0; t < T; t++) {
                double sq = 0;
                for (int k = 0; k < nt; k++) sq += c->norms_part[(size_t)k * T + t];
                c->dh_norms[t] = sqrt(sq);
            }
    }

    /* dx = dG W_ih over all N rows */
    const int n = (int)N;
    int r0, r1;
    if (c->pdx.data) {  /* by columns of dx: each thread packs and uses its own panels */
        lf_split(c->pdx.npanels, nt, tid, &r0, &r1);
        FN(pack)(&c->pdx, r0, r1);
        FN(panel_gemm)(&c->pdx, r0, r1, n, GH, c->gates, GH, NULL, 0, c->dx, c->lddx,
                       c->accumulate_dx);
    } else {
        lf_split(n, nt, tid, &r0, &r1);
        FN(gemm)(c->bl, 0, 0, r1 - r0, I, GH, 1, c->gates + (size_t)r0 * GH, GH, c->w_ih, I,
                 c->accumulate_dx ? 1 : 0, c->dx + (size_t)r0 * c->lddx, c->lddx);
    }
    if (d->part == LF_BWD_ALL)  /* everything it reads is complete since the last barrier */
        FN(bwd_weights)(c, tid);
}

/* The weight and bias gradients, from the gate gradients the recurrence left in the
 * cache and the h_{t-1} (and projection inputs) it gathered in work: GEMMs over all N
 * rows, split by output rows between the threads. */
static void FN(bwd_weights)(FN(bwd_ctx) *c, int tid)
{
    const lf_dims *d = c->d;
    const int cell = d->cell, I = d->input_size, H = d->hidden_size, P = d->out_size;
    const int GH = lf_num_gates(cell) * H, nt = c->team.n, proj = c->w_hr != NULL;
    const int split = lf_hh_split(cell, H), n = (int)lf_total_rows(d);
    const TYPE *hprev = c->hprev;
    int r0, r1;
    lf_split(H, nt, tid, &r0, &r1);
    for (int k = 0; k < lf_num_gates(cell); k++)
        for (int u = r0; u < r1; u++) {
            if (c->db_ih) c->db_ih[k * H + u] += c->dbias[k * H + u];
            if (c->db_hh) c->db_hh[k * H + u] += c->dbias[GH + k * H + u];
        }
    TYPE *gates = c->gates;
    TYPE *tn = c->tn + (size_t)tid * FN(tn_scratch)();
    lf_split(GH, nt, tid, &r0, &r1);
    FN(weight_grad)(c->bl, r1 - r0, I, n, gates + r0, GH, c->x, c->ldx,
                    c->dw_ih + (size_t)r0 * I, I, tn);
    if (r0 < split) {
        const int e = r1 < split ? r1 : split;
        FN(weight_grad)(c->bl, e - r0, P, n, gates + r0, GH, hprev, P,
                        c->dw_hh + (size_t)r0 * P, P, tn);
    }
    if (r1 > split) {
        const int b = r0 > split ? r0 : split;
        FN(weight_grad)(c->bl, r1 - b, P, n, c->aux + (b - split), H, hprev, P,
                        c->dw_hh + (size_t)b * P, P, tn);
    }
    if (proj) {
        lf_split(P, nt, tid, &r0, &r1);
        FN(weight_grad)(c->bl, r1 - r0, H, n, c->dh_all + r0, P, c->m_all, H,
                        c->dw_hr + (size_t)r0 * H, H, tn);
    }
}

static void FN(bwd_weights_worker)(void *arg, int tid)
{
    FN(bwd_weights)(arg, tid);
}

static int FN(backward)(const lf_blas *bl, const lf_dims *d,
                    const TYPE *x, int ldx, const TYPE *w_ih, const TYPE *w_hh,
                    const TYPE *w_hr, const TYPE *h0, const TYPE *c0,
                    const TYPE *y, int ldy, TYPE *gates, TYPE *aux,
                    const TYPE *dy, int lddy, const TYPE *dh_n, const TYPE *dc_n,
                    TYPE *dx, int lddx, int accumulate_dx, TYPE *dh0, TYPE *dc0,
                    TYPE *dw_ih, TYPE *dw_hh, TYPE *db_ih, TYPE *db_hh, TYPE *dw_hr,
                    double *dh_norms, TYPE *work)
{
    const int rc = lf_check_shared(bl, d, x, w_ih, w_hh, h0, y);
    if (rc != LF_OK) return rc;
    LF_REQUIRE(gates, LF_FIELD_GATES);
    LF_REQUIRE(dy, LF_FIELD_DY);
    LF_REQUIRE(dh_n, LF_FIELD_DH_N);
    LF_REQUIRE(dx, LF_FIELD_DX);
    LF_REQUIRE(dh0, LF_FIELD_DH0);
    LF_REQUIRE(dw_ih, LF_FIELD_DW_IH);
    LF_REQUIRE(dw_hh, LF_FIELD_DW_HH);
    LF_REQUIRE(work, LF_FIELD_WORK);
    const int cell = d->cell, B = d->batch, H = d->hidden_size, P = d->out_size;
    const int lstm = cell == LF_LSTM;
    LF_REQUIRE(!lstm || c0, LF_FIELD_C0);
    LF_REQUIRE(!lstm || dc_n, LF_FIELD_DC_N);
    LF_REQUIRE(!lstm || dc0, LF_FIELD_DC0);
    LF_REQUIRE(!lf_aux_size(cell, H) || aux, LF_FIELD_AUX);
    LF_REQUIRE((w_hr != NULL) == lf_has_proj(d), LF_FIELD_W_HR);
    LF_REQUIRE(!w_hr || dw_hr, LF_FIELD_DW_HR);

    const size_t N = (size_t)lf_total_rows(d);
    FN(bwd_ctx) c;
    c.bl = bl; c.d = d; c.x = x; c.w_ih = w_ih; c.w_hh = w_hh; c.w_hr = w_hr;
    c.h0 = h0; c.c0 = c0; c.y = y; c.dy = dy; c.gates = gates; c.aux = aux; c.dx = dx;
    c.dh0 = dh0; c.dc0 = dc0; c.dw_ih = dw_ih; c.dw_hh = dw_hh; c.db_ih = db_ih;
    c.db_hh = db_hh; c.dw_hr = dw_hr; c.dh_norms = dh_norms;
    c.ldx = ldx; c.ldy = ldy; c.lddy = lddy; c.lddx = lddx; c.accumulate_dx = accumulate_dx;
    FN(bwd_panels)(d, &c.pb, &c.prt, &c.pdx, w_hh, w_hr, w_ih);
    TYPE *w = (TYPE *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    const int packed = FN(use_panels)(d);
    c.pb.data = packed ? FN(take)(&w, FN(panels_size)(&c.pb)) : NULL;
    c.pdx.data = FN(own_dx)(d) ? FN(take)(&w, FN(panels_size)(&c.pdx)) : NULL;
    c.norms_part = (double *)FN(take)(
        &w, (LF_MAX_THREADS * (size_t)d->seq_len * sizeof(double) + sizeof(TYPE) - 1) /
                sizeof(TYPE));
    c.tn = FN(take)(&w, (size_t)lf_max_team(d) * FN(tn_scratch)());
    c.dbias = FN(take)(&w, 2 * (size_t)lf_num_gates(cell) * H);
    c.stop = 0;
    c.next_poll = lf_poll_start();
    c.dh = FN(take)(&w, (size_t)B * P);
    c.dc = lstm ? FN(take)(&w, (size_t)B * H) : NULL;
    c.hprev = FN(take)(&w, N * P);
    if (w_hr) {
        c.prt.data = packed ? FN(take)(&w, FN(panels_size)(&c.prt)) : NULL;
        c.dm = FN(take)(&w, (size_t)B * H);
        c.m_all = FN(take)(&w, N * H);
        c.dh_all = FN(take)(&w, N * P);
    }
    const int team = packed ? lf_team_size(d, c.pb.npanels) : 1;
    lf_blas_single_enter(bl);
    if (d->part == LF_BWD_WEIGHTS) {
        lf_team_run(&c.team, d->pool, team, FN(bwd_weights_worker), &c);
    } else {
        memset(c.dbias, 0, 2 * (size_t)lf_num_gates(cell) * H * sizeof(TYPE));
        memcpy(c.dh, dh_n, (size_t)B * P * sizeof(TYPE));
        if (lstm) memcpy(c.dc, dc_n, (size_t)B * H * sizeof(TYPE));
        lf_team_run(&c.team, d->pool, team, FN(bwd_worker), &c);
    }
    lf_blas_single_leave(bl);
    return c.stop ? LF_ECANCELLED : LF_OK;
}

/* The entry points: one argument struct each (lstmfast.h). */
static int FN(lf_forward)(const lf_forward_args *a)
{
    LF_REQUIRE(a, LF_FIELD_DIMS);
    return FN(forward)(a->blas, &a->dims, a->x, a->ldx, a->w_ih, a->w_hh, a->b_ih, a->b_hh,
                       a->w_hr, a->h0, a->c0, a->y, a->ldy, a->h_n, a->c_n, a->gates, a->aux,
                       a->work, a->work_reused);
}

static int FN(lf_backward)(const lf_backward_args *a)
{
    LF_REQUIRE(a, LF_FIELD_DIMS);
    return FN(backward)(a->blas, &a->dims, a->x, a->ldx, a->w_ih, a->w_hh, a->w_hr, a->h0,
                        a->c0, a->y, a->ldy, a->gates, a->aux, a->dy, a->lddy, a->dh_n,
                        a->dc_n, a->dx, a->lddx, a->accumulate_dx, a->dh0, a->dc0, a->dw_ih,
                        a->dw_hh, a->db_ih, a->db_hh, a->dw_hr, a->dh_norms, a->work);
}
