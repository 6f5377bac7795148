/* The shared recurrence driver for every cell type, one direction of one layer.
 * Included once per dtype by recurrence.c.
 *
 * Layout: sequences are packed time-major, the way PyTorch packs them. Step t holds
 * the nb(t) rows whose length exceeds t (a prefix of the batch, since lengths are
 * sorted non-increasing) at packed rows off(t) .. off(t)+nb(t); without lengths this
 * is the plain [T, B] layout. So x, y, gates and aux are [N, .] with N = sum(lengths).
 *
 * Forward: one GEMM for the input projection of all steps (in inference, of a chunk
 * of steps at a time, so memory stays O(B*H)), then per step one GEMM h_prev @ W_hh^T
 * (two when some rows start from h0 mid-way: the reverse direction with lengths) and
 * one fused pointwise pass. The cache kept for backward is the gate activations and
 * the cell's aux rows (LSTM: c_t); h_t is y itself.
 * Backward: per step one fused pointwise pass giving dG, then dh_prev = dG @ W_hh;
 * afterwards the weight gradients and dx as GEMMs over all N rows at once.
 */

/* C[M,N] = alpha op(A) op(B) + beta C for row-major operands: column-major BLAS sees
 * every row-major matrix transposed, so it computes C^T = op(B)^T op(A)^T. */
static void FN(gemm)(const lf_blas *bl, int ta, int tb, int M, int N, int K,
                     TYPE alpha, const TYPE *A, int lda, const TYPE *B, int ldb,
                     TYPE beta, TYPE *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
    BLAS_GEMM(bl)(&cb, &ca, &N, &M, &K, &alpha, (TYPE *)B, &ldb, (TYPE *)A, &lda,
                  &beta, C, &ldc);
}

static void FN(copy_rows)(int rows, int cols, const TYPE *src, int lds, TYPE *dst, int ldd)
{
    for (int r = 0; r < rows; r++)
        memcpy(dst + (size_t)r * ldd, src + (size_t)r * lds, (size_t)cols * sizeof(TYPE));
}

/* acc[j] += sum over rows of m[r, j] */
static void FN(add_colsum)(int rows, int cols, const TYPE *m, int ldm, TYPE *acc)
{
    for (int r = 0; r < rows; r++) {
        const TYPE *row = m + (size_t)r * ldm;
        for (int j = 0; j < cols; j++) acc[j] += row[j];
    }
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

int FN(lf_forward)(const lf_blas *bl, const lf_dims *d,
                   const TYPE *x, int ldx, const TYPE *w_ih, const TYPE *w_hh,
                   const TYPE *b_ih, const TYPE *b_hh, const TYPE *w_hr,
                   const TYPE *h0, const TYPE *c0,
                   TYPE *y, int ldy, TYPE *h_n, TYPE *c_n,
                   TYPE *gates, TYPE *aux, TYPE *work)
{
    if (!lf_dims_valid(d) || !x || !w_ih || !w_hh || !h0 || !y || !h_n || !work)
        return LF_EARG;
    const int cell = d->cell, T = d->seq_len, B = d->batch, I = d->input_size, H = d->hidden_size, P = d->out_size;
    const int GH = lf_num_gates(cell) * H;
    const int training = gates != NULL;
    const int lstm = cell == LF_LSTM, gru = cell == LF_GRU;
    if ((lstm && (!c0 || !c_n)) || (training && lf_aux_size(cell, H) && !aux) ||
        (w_hr != NULL) != lf_has_proj(d))
        return LF_EARG;

    const int Tc = training ? T : lf_chunk_steps(d);
    TYPE *bx = work, *bh = bx + GH;
    TYPE *gh = bh + GH;                       /* GRU: [B, GH] */
    TYPE *m = gh + (gru ? (size_t)B * GH : 0); /* projection: [B, H] */
    TYPE *ghn = m + (w_hr ? (size_t)B * H : 0); /* GRU inference: [B, H] scratch aux */
    TYPE *gbuf = training ? gates : ghn + (gru ? (size_t)B * H : 0);
    FN(prepare_bias)(d, b_ih, b_hh, bx, bh);
    if (lstm && !training) memcpy(c_n, c0, (size_t)B * H * sizeof(TYPE));

    const ptrdiff_t N = lf_total_rows(d);
    ptrdiff_t off = d->reverse ? N - lf_active(d, T - 1) : 0;
    ptrdiff_t chunk0 = 0; /* packed row where gbuf starts */
    int tprev = -1;
    for (int s = 0; s < T; s++) {
        const int t = d->reverse ? T - 1 - s : s;
        const int nb = lf_active(d, t);
        if (s % Tc == 0) {
            /* the packed rows of steps s .. s+Tc-1 are contiguous in either direction */
            int steps = T - s < Tc ? T - s : Tc;
            ptrdiff_t rows = 0;
            for (int k = 0; k < steps; k++) rows += lf_active(d, d->reverse ? t - k : t + k);
            chunk0 = d->reverse ? off + nb - rows : off;
            FN(gemm)(bl, 0, 1, (int)rows, GH, I, 1, x + chunk0 * ldx, ldx, w_ih, I, 0,
                     gbuf, GH);
        }
        TYPE *g = gbuf + (off - chunk0) * GH;
        TYPE *yt = y + off * ldy;
        const int nprev = tprev < 0 ? 0 : lf_active(d, tprev);
        const int carried = nb < nprev ? nb : nprev;
        const ptrdiff_t offprev = d->reverse ? off + nb : off - nprev;
        const TYPE *hp = y + offprev * ldy;       /* valid for rows < carried */

        /* recurrent GEMM: carried rows from the previous step's output, new rows from h0 */
        TYPE *rec = gru ? gh : g;
        const int ldrec = GH;
        const TYPE beta = gru ? 0 : 1;
        FN(gemm)(bl, 0, 1, carried, GH, P, 1, hp, ldy, w_hh, P, beta, rec, ldrec);
        FN(gemm)(bl, 0, 1, nb - carried, GH, P, 1, h0 + (size_t)carried * P, P, w_hh, P,
                 beta, rec + (size_t)carried * ldrec, ldrec);

        TYPE *hout = w_hr ? m : yt;
        const int ldhout = w_hr ? H : ldy;
        /* LSTM: c_t goes to the cache in training; in inference c_n holds the running
         * state in place (rows that have not started yet still hold c0) */
        TYPE *auxt = training ? aux + off * lf_aux_size(cell, H) : (lstm ? c_n : ghn);
        const TYPE *cprev = training ? aux + offprev * H : c_n;
        const TYPE *cprev_new = training ? c0 : c_n;
        for (int part = 0; part < 2; part++) {
            const int r0 = part ? carried : 0, r1 = part ? nb : carried;
            if (r1 <= r0) continue;
            FN(fwd_step) a;
            a.rows = r1 - r0; a.H = H;
            a.g = g + (size_t)r0 * GH;
            a.gh = gh + (size_t)r0 * GH;
            a.bx = bx; a.bh = bh;
            a.h_prev = part ? h0 + (size_t)r0 * P : hp + (size_t)r0 * ldy;
            a.ld_hp = part ? P : ldy;
            a.c_prev = lstm ? (part ? cprev_new : cprev) + (size_t)r0 * H : NULL;
            a.aux = lf_aux_size(cell, H) ? auxt + (size_t)r0 * H : NULL;
            a.h = hout + (size_t)r0 * ldhout; a.ld_h = ldhout;
            FN(cell_fwd)[cell](&a);
        }
        if (w_hr) FN(gemm)(bl, 0, 1, nb, P, H, 1, m, H, w_hr, H, 0, yt, ldy);

        /* rows whose sequence ends here: forward direction, length t+1; reverse, all at t=0 */
        const int nb_next = s + 1 < T ? lf_active(d, d->reverse ? t - 1 : t + 1) : 0;
        for (int r = nb_next < nb ? nb_next : nb; r < nb; r++) {
            memcpy(h_n + (size_t)r * P, yt + (size_t)r * ldy, (size_t)P * sizeof(TYPE));
            if (lstm && training)
                memcpy(c_n + (size_t)r * H, auxt + (size_t)r * H, (size_t)H * sizeof(TYPE));
        }
        tprev = t;
        off = d->reverse ? off - nb_next : off + nb;
    }
    return LF_OK;
}

int FN(lf_backward)(const lf_blas *bl, const lf_dims *d,
                    const TYPE *x, int ldx, const TYPE *w_ih, const TYPE *w_hh,
                    const TYPE *w_hr, const TYPE *h0, const TYPE *c0,
                    const TYPE *y, int ldy, TYPE *gates, TYPE *aux,
                    const TYPE *dy, int lddy, const TYPE *dh_n, const TYPE *dc_n,
                    TYPE *dx, int lddx, int accumulate_dx, TYPE *dh0, TYPE *dc0,
                    TYPE *dw_ih, TYPE *dw_hh, TYPE *db_ih, TYPE *db_hh, TYPE *dw_hr,
                    double *dh_norms, TYPE *work)
{
    if (!lf_dims_valid(d) || !x || !w_ih || !w_hh || !h0 || !y || !gates || !dy ||
        !dh_n || !dx || !dh0 || !dw_ih || !dw_hh || !work)
        return LF_EARG;
    const int cell = d->cell, T = d->seq_len, B = d->batch, I = d->input_size, H = d->hidden_size, P = d->out_size;
    const int GH = lf_num_gates(cell) * H;
    const int lstm = cell == LF_LSTM, gru = cell == LF_GRU;
    const int split = lf_hh_split(cell, H);
    if ((lstm && (!c0 || !dc_n || !dc0)) || (lf_aux_size(cell, H) && !aux) ||
        (w_hr != NULL) != lf_has_proj(d) || (w_hr && !dw_hr))
        return LF_EARG;

    const ptrdiff_t N = lf_total_rows(d);
    TYPE *dh = work;                       /* [B, P] */
    TYPE *dc = dh + (size_t)B * P;         /* LSTM: [B, H] */
    TYPE *hprev = dc + (lstm ? (size_t)B * H : 0);  /* [N, P]: h_{t-1} of every packed row */
    TYPE *m = hprev + (size_t)N * P;       /* projection: [B, H], [B, H] */
    TYPE *dm = m + (size_t)B * H;
    memcpy(dh, dh_n, (size_t)B * P * sizeof(TYPE));
    if (lstm) memcpy(dc, dc_n, (size_t)B * H * sizeof(TYPE));

    /* Gather h_{t-1} for every packed row: the weight-gradient GEMM then runs once. */
    ptrdiff_t off = d->reverse ? N - lf_active(d, T - 1) : 0;
    int tprev = -1;
    for (int s = 0; s < T; s++) {
        const int t = d->reverse ? T - 1 - s : s;
        const int nb = lf_active(d, t);
        const int nprev = tprev < 0 ? 0 : lf_active(d, tprev);
        const int carried = nb < nprev ? nb : nprev;
        const ptrdiff_t offprev = d->reverse ? off + nb : off - nprev;
        FN(copy_rows)(carried, P, y + offprev * ldy, ldy, hprev + off * P, P);
        FN(copy_rows)(nb - carried, P, h0 + (size_t)carried * P, P,
                      hprev + (off + carried) * P, P);
        tprev = t;
        if (s + 1 < T) off = d->reverse ? off - lf_active(d, t - 1) : off + nb;
    }

    /* BPTT, visiting the steps in the opposite order to the forward. */
    for (int s = T - 1; s >= 0; s--) {
        const int t = d->reverse ? T - 1 - s : s;
        const int nb = lf_active(d, t);
        const int tp = d->reverse ? t + 1 : t - 1;     /* the forward's previous step */
        const int nprev = s == 0 ? 0 : lf_active(d, tp);
        const int carried = nb < nprev ? nb : nprev;
        const ptrdiff_t offprev = d->reverse ? off + nb : off - nprev;
        TYPE *g = gates + off * GH;
        TYPE *auxt = aux ? aux + off * lf_aux_size(cell, H) : NULL;
        const TYPE *dyt = dy + off * lddy;

        /* dh becomes the total dL/dh_t: through the recurrence plus from the output */
        double sq = 0;
        for (int r = 0; r < nb; r++) {
            TYPE *dhr = dh + (size_t)r * P;
            const TYPE *dyr = dyt + (size_t)r * lddy;
            for (int j = 0; j < P; j++) {
                dhr[j] += dyr[j];
                sq += (double)dhr[j] * dhr[j];
            }
        }
        if (dh_norms) dh_norms[t] = sqrt(sq);
        TYPE *dhin = dh;
        int lddh = P;
        if (w_hr) {
            /* h = W_hr m: dm = dh W_hr, dW_hr += dh^T m, with m = o * tanh(c) recomputed */
            for (int r = 0; r < nb; r++)
                for (int j = 0; j < H; j++)
                    m[(size_t)r * H + j] = g[(size_t)r * GH + 3 * H + j] *
                                           FN(lf_tanh)(auxt[(size_t)r * H + j]);
            FN(gemm)(bl, 0, 0, nb, H, P, 1, dh, P, w_hr, H, 0, dm, H);
            FN(gemm)(bl, 1, 0, P, H, nb, 1, dh, P, m, H, 1, dw_hr, H);
            dhin = dm; lddh = H;
        }
        for (int part = 0; part < 2; part++) {
            const int r0 = part ? carried : 0, r1 = part ? nb : carried;
            if (r1 <= r0) continue;
            FN(bwd_step) a;
            a.rows = r1 - r0; a.H = H;
            a.g = g + (size_t)r0 * GH;
            a.aux = auxt ? auxt + (size_t)r0 * H : NULL;
            a.h_prev = hprev + (off + r0) * P; a.ld_hp = P;
            a.c_prev = lstm ? (part ? c0 + (size_t)r0 * H : aux + (offprev + r0) * H) : NULL;
            a.dh = dhin + (size_t)r0 * lddh; a.ld_dh = lddh;
            a.dc = lstm ? dc + (size_t)r0 * H : NULL;
            FN(cell_bwd)[cell](&a);
        }
        /* dh_{t-1} = dG_hh W_hh (+ the GRU's direct path z * dh_t, left in dh) */
        FN(gemm)(bl, 0, 0, nb, P, split, 1, g, GH, w_hh, P, gru ? 1 : 0, dh, P);
        if (split < GH)
            FN(gemm)(bl, 0, 0, nb, P, GH - split, 1, auxt, H, w_hh + (size_t)split * P, P,
                     1, dh, P);
        if (s > 0) off = d->reverse ? off + nb : off - lf_active(d, tp);
    }
    memcpy(dh0, dh, (size_t)B * P * sizeof(TYPE));
    if (lstm) memcpy(dc0, dc, (size_t)B * H * sizeof(TYPE));

    /* Everything that does not feed the recurrence, as GEMMs over all N rows. */
    const int n = (int)N;
    FN(gemm)(bl, 1, 0, GH, I, n, 1, gates, GH, x, ldx, 1, dw_ih, I);
    FN(gemm)(bl, 0, 0, n, I, GH, 1, gates, GH, w_ih, I, accumulate_dx ? 1 : 0, dx, lddx);
    FN(gemm)(bl, 1, 0, split, P, n, 1, gates, GH, hprev, P, 1, dw_hh, P);
    if (split < GH)
        FN(gemm)(bl, 1, 0, GH - split, P, n, 1, aux, H, hprev, P, 1,
                 dw_hh + (size_t)split * P, P);
    if (db_ih) FN(add_colsum)(n, GH, gates, GH, db_ih);
    if (db_hh) {
        FN(add_colsum)(n, split, gates, GH, db_hh);
        if (split < GH) FN(add_colsum)(n, GH - split, aux, H, db_hh + split);
    }
    return LF_OK;
}
