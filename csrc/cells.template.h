/* The per-cell pointwise steps: the only part of the recurrence that differs between
 * LSTM, GRU and vanilla RNN. Included once per dtype by recurrence.c with TYPE and FN()
 * defined (see there).
 *
 * Forward input: g [rows, G*H] holds the gate pre-activations without bias: the input
 * projection plus, for LSTM and RNN, the recurrent GEMM accumulated into it (GRU keeps
 * the recurrent part apart in gh, because r multiplies only its n block).
 * Backward input: dh is the total dL/dh_t (the driver has added the output's dy).
 * Backward output: g is overwritten with dG, the gradient of the input-side gate
 * pre-activations; the recurrent-side gradient equals it on the first hh_split columns
 * and, for GRU, lives in aux for the rest (d(W_hn h + b_hn) = dn_pre * r).
 */

typedef struct {
    int rows, H, u0, u1;             /* rows, hidden size, the units [u0, u1) to compute */
    TYPE *g;                         /* [rows, G*H]; overwritten with the activations */
    const TYPE *gh;                  /* GRU: [rows, 3H] h_prev @ W_hh^T, no bias */
    const TYPE *bx, *bh;             /* [G*H] bias added to g; GRU: b_hn for gh's n block */
    const TYPE *h_prev; int ld_hp;   /* GRU: [rows, H] */
    const TYPE *c_prev;              /* LSTM: [rows, H] */
    TYPE *aux;                       /* LSTM: c_t (may alias c_prev); GRU: gh_n + b_hn */
    TYPE *h; int ld_h;               /* h_t; for an LSTM with projection, o * tanh(c_t) */
} FN(fwd_step);

typedef struct {
    int rows, H, u0, u1;
    TYPE *g;                         /* in: activations; out: dG */
    TYPE *aux;                       /* LSTM: c_t; GRU: gh_n + b_hn in, its gradient out */
    const TYPE *h_prev; int ld_hp;   /* GRU */
    const TYPE *c_prev;              /* LSTM */
    TYPE *dh; int ld_dh;             /* in: dL/dh_t (total); GRU out: z * dL/dh_t */
    TYPE *dc;                        /* LSTM: in dL/dc_t, out dL/dc_{t-1} (row-wise in place) */
} FN(bwd_step);

/* The loops below are written for gcc to vectorise: local pointers, no branches, and
 * no index arithmetic in int (Python builds extensions with -fwrapv, under which gcc
 * cannot vectorise g[2 * H + j]).
 * ivdep: c may alias c_prev exactly (inference updates the state in place), which is
 * safe because each element is read before it is written in the same iteration. */

static void FN(lstm_fwd)(const FN(fwd_step) *a)
{
    const int H = a->H;
    const TYPE *bi = a->bx, *bf = bi + H, *bg = bf + H, *bo = bg + H;
    for (int r = 0; r < a->rows; r++) {
        TYPE *gi = a->g + (size_t)r * 4 * H, *gf = gi + H, *gg = gf + H, *go = gg + H;
        const TYPE *cp = a->c_prev + (size_t)r * H;
        TYPE *c = a->aux + (size_t)r * H;
        TYPE *h = a->h + (size_t)r * a->ld_h;
LF_IVDEP
        for (int j = a->u0; j < a->u1; j++) {
            TYPE i = FN(lf_sigmoid)(gi[j] + bi[j]);
            TYPE f = FN(lf_sigmoid)(gf[j] + bf[j]);
            TYPE g = FN(lf_tanh)(gg[j] + bg[j]);
            TYPE o = FN(lf_sigmoid)(go[j] + bo[j]);
            TYPE ct = f * cp[j] + i * g;
            c[j] = ct;
            h[j] = o * FN(lf_tanh)(ct);
            gi[j] = i; gf[j] = f; gg[j] = g; go[j] = o;
        }
    }
}

static void FN(lstm_bwd)(const FN(bwd_step) *a)
{
    const int H = a->H;
    for (int r = 0; r < a->rows; r++) {
        TYPE *gi = a->g + (size_t)r * 4 * H, *gf = gi + H, *gg = gf + H, *go = gg + H;
        const TYPE *c = a->aux + (size_t)r * H;
        const TYPE *cp = a->c_prev + (size_t)r * H;
        const TYPE *dh = a->dh + (size_t)r * a->ld_dh;
        TYPE *dc = a->dc + (size_t)r * H;
LF_IVDEP
        for (int j = a->u0; j < a->u1; j++) {
            TYPE i = gi[j], f = gf[j], g = gg[j], o = go[j];
            TYPE tc = FN(lf_tanh)(c[j]);
            TYPE dct = dc[j] + dh[j] * o * (1 - tc * tc);
            gi[j] = dct * g * i * (1 - i);
            gf[j] = dct * cp[j] * f * (1 - f);
            gg[j] = dct * i * (1 - g * g);
            go[j] = dh[j] * tc * o * (1 - o);
            dc[j] = dct * f;
        }
    }
}

static void FN(gru_fwd)(const FN(fwd_step) *a)
{
    const int H = a->H;
    const TYPE *br = a->bx, *bz = br + H, *bn = bz + H, *bhn = a->bh + 2 * H;
    for (int r = 0; r < a->rows; r++) {
        TYPE *gr = a->g + (size_t)r * 3 * H, *gz = gr + H, *gn = gz + H;
        const TYPE *hr = a->gh + (size_t)r * 3 * H, *hz = hr + H, *hn = hz + H;
        const TYPE *hp = a->h_prev + (size_t)r * a->ld_hp;
        TYPE *h = a->h + (size_t)r * a->ld_h;
        TYPE *ghn_out = a->aux + (size_t)r * H;
LF_IVDEP
        for (int j = a->u0; j < a->u1; j++) {
            TYPE rr = FN(lf_sigmoid)(gr[j] + br[j] + hr[j]);
            TYPE z = FN(lf_sigmoid)(gz[j] + bz[j] + hz[j]);
            TYPE ghn = hn[j] + bhn[j];
            TYPE n = FN(lf_tanh)(gn[j] + bn[j] + rr * ghn);
            h[j] = (1 - z) * n + z * hp[j];
            gr[j] = rr; gz[j] = z; gn[j] = n;
            ghn_out[j] = ghn;
        }
    }
}

static void FN(gru_bwd)(const FN(bwd_step) *a)
{
    const int H = a->H;
    for (int r = 0; r < a->rows; r++) {
        TYPE *gr = a->g + (size_t)r * 3 * H, *gz = gr + H, *gn = gz + H;
        TYPE *ghn = a->aux + (size_t)r * H;
        const TYPE *hp = a->h_prev + (size_t)r * a->ld_hp;
        TYPE *dh = a->dh + (size_t)r * a->ld_dh;
LF_IVDEP
        for (int j = a->u0; j < a->u1; j++) {
            TYPE rr = gr[j], z = gz[j], n = gn[j];
            TYPE dht = dh[j];
            TYPE dn = dht * (1 - z) * (1 - n * n);
            gr[j] = dn * ghn[j] * rr * (1 - rr);
            gz[j] = dht * (hp[j] - n) * z * (1 - z);
            gn[j] = dn;
            ghn[j] = dn * rr;
            dh[j] = dht * z;
        }
    }
}

/* Vanilla RNN: g holds h_t after the forward, which is all the backward needs. */
static inline void FN(rnn_fwd)(const FN(fwd_step) *a, const int relu)
{
    const int H = a->H;
    const TYPE *bx = a->bx;
    for (int r = 0; r < a->rows; r++) {
        TYPE *g = a->g + (size_t)r * H;
        TYPE *h = a->h + (size_t)r * a->ld_h;
LF_IVDEP
        for (int j = a->u0; j < a->u1; j++) {
            TYPE v = g[j] + bx[j];
            v = relu ? (v < 0 ? 0 : v) : FN(lf_tanh)(v);  /* NaN stays NaN, as in torch */
            h[j] = v;
            g[j] = v;
        }
    }
}

static inline void FN(rnn_bwd)(const FN(bwd_step) *a, const int relu)
{
    const int H = a->H;
    for (int r = 0; r < a->rows; r++) {
        TYPE *g = a->g + (size_t)r * H;
        const TYPE *dh = a->dh + (size_t)r * a->ld_dh;
LF_IVDEP
        for (int j = a->u0; j < a->u1; j++) {
            TYPE h = g[j];
            g[j] = relu ? (h > 0 ? dh[j] : 0) : dh[j] * (1 - h * h);
        }
    }
}

static void FN(rnn_tanh_fwd)(const FN(fwd_step) *a) { FN(rnn_fwd)(a, 0); }
static void FN(rnn_relu_fwd)(const FN(fwd_step) *a) { FN(rnn_fwd)(a, 1); }
static void FN(rnn_tanh_bwd)(const FN(bwd_step) *a) { FN(rnn_bwd)(a, 0); }
static void FN(rnn_relu_bwd)(const FN(bwd_step) *a) { FN(rnn_bwd)(a, 1); }

/* Indexed by enum lf_cell. */
static void (*const FN(cell_fwd)[])(const FN(fwd_step) *) = {
    FN(lstm_fwd), FN(gru_fwd), FN(rnn_tanh_fwd), FN(rnn_relu_fwd)};
static void (*const FN(cell_bwd)[])(const FN(bwd_step) *) = {
    FN(lstm_bwd), FN(gru_bwd), FN(rnn_tanh_bwd), FN(rnn_relu_bwd)};
