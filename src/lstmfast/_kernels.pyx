# cython: language_level=3, boundscheck=False, wraparound=False
"""Binding to the C kernels (csrc/): validates every array, then calls C without the GIL.

Arrays are packed time-major [N, features] (see csrc/recurrence.template.h); the layers
in layers.py do the packing. Every size, dtype, contiguity and aliasing condition the C
code relies on is checked here, so a bad call raises instead of reaching the kernel.
"""
import os
import threading

import numpy as np
cimport numpy as cnp
from cpython.exc cimport PyErr_CheckSignals
from scipy.linalg.cython_blas cimport sgemm, dgemm

cnp.import_array()

cdef extern from "lstmfast.h" nogil:
    ctypedef void (*lf_sgemm_fn)(char *, char *, int *, int *, int *, float *, float *,
                                 int *, float *, int *, float *, float *, int *) noexcept nogil
    ctypedef void (*lf_dgemm_fn)(char *, char *, int *, int *, int *, double *, double *,
                                 int *, double *, int *, double *, double *, int *) noexcept nogil
    ctypedef struct lf_blas:
        lf_sgemm_fn sgemm
        lf_dgemm_fn dgemm
    ctypedef struct lf_cancel:
        int (*poll)(void *) noexcept nogil
        void *arg
    ctypedef struct lf_dims:
        int cell, seq_len, batch, input_size, hidden_size, out_size, reverse, threads
        const int *lengths
        lf_pool *pool
        const lf_cancel *cancel
        int part
    ctypedef struct lf_pool:
        pass
    lf_pool *lf_pool_new() noexcept
    void lf_pool_free(lf_pool *pool) noexcept
    ctypedef struct lf_openmp:
        void (*parallel)(void (*)(void *) noexcept nogil, void *, unsigned, unsigned) noexcept nogil
        int (*thread_num)() noexcept nogil
        int (*num_threads)() noexcept nogil
    void lf_pool_use_openmp(lf_pool *pool, const lf_openmp *omp) noexcept
    int LF_OK
    int LF_ECANCELLED
    int lf_num_gates(int cell) noexcept
    int lf_aux_size(int cell, int H) noexcept
    void lf_find_blas_threads(lf_blas *bl, const void *gemm) noexcept
    ctypedef struct lf_forward_args:
        const lf_blas *blas
        lf_dims dims
        const void *x
        int ldx
        const void *w_ih
        const void *w_hh
        const void *b_ih
        const void *b_hh
        const void *w_hr
        const void *h0
        const void *c0
        void *y
        int ldy
        void *h_n
        void *c_n
        void *gates
        void *aux
        void *work
        int work_reused
    ctypedef struct lf_backward_args:
        const lf_blas *blas
        lf_dims dims
        const void *x
        int ldx
        const void *w_ih
        const void *w_hh
        const void *w_hr
        const void *h0
        const void *c0
        const void *y
        int ldy
        void *gates
        void *aux
        const void *dy
        int lddy
        const void *dh_n
        const void *dc_n
        void *dx
        int lddx
        int accumulate_dx
        void *dh0
        void *dc0
        void *dw_ih
        void *dw_hh
        void *db_ih
        void *db_hh
        void *dw_hr
        double *dh_norms
        void *work
    ctypedef int lf_forward_fn(const lf_forward_args *) noexcept nogil
    ctypedef int lf_backward_fn(const lf_backward_args *) noexcept nogil
    int LF_EFIELD
    const char *lf_field_name(int code) noexcept
    ctypedef struct lf_kernels:
        const char *isa
        int vec_bytes, tile_rows
        size_t (*forward_work_size_f32)(const lf_dims *, int) noexcept nogil
        size_t (*forward_work_size_f64)(const lf_dims *, int) noexcept nogil
        size_t (*backward_work_size_f32)(const lf_dims *) noexcept nogil
        size_t (*backward_work_size_f64)(const lf_dims *) noexcept nogil
        lf_forward_fn *forward_f32
        lf_forward_fn *forward_f64
        lf_backward_fn *backward_f32
        lf_backward_fn *backward_f64
        double (*fma_peak_f32)(long, float *) noexcept nogil
        double (*fma_peak_f64)(long, double *) noexcept nogil
    const lf_kernels *lf_kernels_get(int i) noexcept
    void lf_blas_describe(const void *gemm, const char **config, const char **core) noexcept
    int lf_cpu_supports(const char *isa) noexcept
    const char *lf_compiler() noexcept

# Read-only after import: the kernels receive it as a constant table.
cdef lf_blas _blas
_blas.sgemm = <lf_sgemm_fn>sgemm
_blas.dgemm = <lf_dgemm_fn>dgemm
lf_find_blas_threads(&_blas, <const void *>sgemm)


def compiled_isas():
    """The kernel variants this build holds, widest first."""
    names = []
    cdef int i = 0
    while lf_kernels_get(i) != NULL:
        names.append(lf_kernels_get(i).isa.decode())
        i += 1
    return names


def compiler():
    """The compiler that built the kernels, with its version."""
    return lf_compiler().decode()


def cpu_supports(str isa):
    """Whether this CPU (and its OS) can run the variant named isa."""
    return bool(lf_cpu_supports(isa.encode()))


cdef const lf_kernels *_find(str isa):
    cdef int i = 0
    while lf_kernels_get(i) != NULL:
        if lf_kernels_get(i).isa.decode() == isa:
            return lf_kernels_get(i)
        i += 1
    return NULL


def _choose(forced):
    """The variant to run and why: forced (LSTMFAST_ISA's value) or the widest that is
    both compiled and supported. ImportError for a variant that is unknown, not built,
    or not runnable here: forcing one is a promise that it runs, never a SIGILL."""
    built = compiled_isas()
    usable = [n for n in built if cpu_supports(n)]
    if forced is not None:
        forced = forced.strip().lower()
        if forced not in ("avx512", "avx2", "neon", "baseline"):
            raise ImportError(f"LSTMFAST_ISA={forced!r} is not a kernel variant; expected "
                              f"one of avx512, avx2, neon, baseline (usable here: "
                              f"{', '.join(usable)})")
        if forced not in built:
            raise ImportError(f"LSTMFAST_ISA={forced}: this build of lstmfast has no {forced} "
                              f"kernels (built: {', '.join(built)})")
        if forced not in usable:
            raise ImportError(f"LSTMFAST_ISA={forced}: this CPU cannot run the {forced} "
                              f"kernels (usable here: {', '.join(usable)})")
        return forced, "forced by LSTMFAST_ISA"
    if not usable:
        raise ImportError(f"lstmfast: no kernel variant runs on this CPU (built: "
                          f"{', '.join(built)})")
    return usable[0], "the widest variant built that this CPU supports"


# The variant every call runs, chosen once at import (read-only afterwards, but for
# _select, which tests use to run every variant in one process).
cdef const lf_kernels *_k = NULL
ISA = None
ISA_REASON = None


def _select(str isa, str reason="selected by lstmfast._kernels._select"):
    """Make isa the variant that calls run; returns the one that was."""
    global _k, ISA, ISA_REASON
    if isa not in compiled_isas() or not cpu_supports(isa):
        raise ValueError(f"the {isa} kernels are not usable here")
    previous = ISA
    _k = _find(isa)
    ISA, ISA_REASON = isa, reason
    return previous


def variant_info(str isa):
    """A variant's vector width and tile rows."""
    cdef const lf_kernels *k = _find(isa)
    if k == NULL:
        raise ValueError(f"no {isa} kernels in this build")
    return {"vector_bytes": k.vec_bytes, "tile_rows": k.tile_rows}


def fma_peak(str isa, dtype, double seconds=0.05):
    """GFLOP/s of the variant's multiply-add ceiling on one core (the calling thread)."""
    cdef const lf_kernels *k = _find(isa)
    if k == NULL:
        raise ValueError(f"no {isa} kernels in this build")
    if not cpu_supports(isa):
        raise ValueError(f"this CPU cannot run the {isa} kernels")
    cdef bint f32 = np.dtype(dtype) == np.float32
    cdef float o32
    cdef double o64, flops
    cdef long n = 1000
    import time
    best = 0.0
    while True:  # grow n until one call takes a few ms, then keep the best of a few
        t0 = time.perf_counter()
        with nogil:
            flops = k.fma_peak_f32(n, &o32) if f32 else k.fma_peak_f64(n, &o64)
        dt = time.perf_counter() - t0
        if dt > seconds / 10:
            break
        n *= 4
    for _ in range(5):
        t0 = time.perf_counter()
        with nogil:
            flops = k.fma_peak_f32(n, &o32) if f32 else k.fma_peak_f64(n, &o64)
        best = max(best, flops / (time.perf_counter() - t0) / 1e9)
    return best


def blas_info():
    """scipy's BLAS as it describes itself: {"config": ..., "core": ...} (None where it
    cannot say: not OpenBLAS)."""
    cdef const char *config = NULL
    cdef const char *core = NULL
    lf_blas_describe(<const void *>sgemm, &config, &core)
    return {"config": config.decode() if config != NULL else None,
            "core": core.decode() if core != NULL else None}


_select(*_choose(os.environ.get("LSTMFAST_ISA") or None))

CELLS = {"LSTM": 0, "GRU": 1, "RNN_TANH": 2, "RNN_RELU": 3}
cdef long long INT_MAX = 2147483647


cdef char *_data(object a, object dtype, tuple shape, str name, bint writable=False) except NULL:
    """Pointer to a C-contiguous array of exactly this dtype and shape, or an exception."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name} must be C-contiguous")
    if writable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name} must be writable")
    return <char *>cnp.PyArray_DATA(arr)


cdef char *_opt(object a, object dtype, tuple shape, str name, bint writable=False) except? NULL:
    if a is None:
        return NULL
    return _data(a, dtype, shape, name, writable)


cdef char *_cols(object a, object dtype, Py_ssize_t rows, Py_ssize_t col, Py_ssize_t width,
                 str name, int *ld, bint writable=False) except NULL:
    """Pointer to columns [col, col+width) of a C-contiguous [rows, ld] array."""
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        raise ValueError(f"{name} must be a 2-d numpy array")
    if a.shape[0] != rows or col < 0 or col + width > a.shape[1]:
        raise ValueError(f"{name} must have {rows} rows and at least {col + width} columns, "
                         f"got shape {a.shape}")
    if a.shape[1] > INT_MAX:
        raise ValueError(f"{name} is too wide for BLAS (32-bit sizes)")
    ld[0] = <int>a.shape[1]
    cdef char *p = _data(a, dtype, a.shape, name, writable)
    cdef Py_ssize_t itemsize = a.itemsize
    return p + col * itemsize


cdef bint _extent(object a, Py_ssize_t *lo, Py_ssize_t *hi):
    """[lo, hi), the bytes array a's elements span, or False for no element: the
    bounds np.may_share_memory compares (it costs ~0.3 us a call from here, and a
    backward checks ~150 pairs)."""
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef Py_ssize_t low = 0, high = 0, ext
    cdef int k
    if cnp.PyArray_SIZE(arr) == 0:
        return False
    for k in range(cnp.PyArray_NDIM(arr)):
        ext = cnp.PyArray_STRIDE(arr, k) * (cnp.PyArray_DIM(arr, k) - 1)
        if ext < 0:
            low += ext
        else:
            high += ext
    lo[0] = <Py_ssize_t>cnp.PyArray_DATA(arr) + low
    hi[0] = <Py_ssize_t>cnp.PyArray_DATA(arr) + high + cnp.PyArray_ITEMSIZE(arr)
    return True


cdef bint _may_overlap(object a, object b) except -1:
    cdef Py_ssize_t alo, ahi, blo, bhi
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return np.may_share_memory(a, b)
    if not (_extent(a, &alo, &ahi) and _extent(b, &blo, &bhi)):
        return False
    return alo < bhi and blo < ahi


cdef _check_disjoint(outputs, inputs):
    for oname, o in outputs:
        for iname, i in inputs:
            if o is not None and i is not None and _may_overlap(o, i):
                raise ValueError(f"{oname} must not share memory with {iname}")


cdef _dims(lf_dims *d, int cell, int T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
           Py_ssize_t P, bint reverse, object lengths, int threads):
    """Fill d after checking every size the kernel relies on; returns (N, lengths array).
    A batch of 0 passes (torch accepts one): forward and backward return before any
    kernel, which needs rows."""
    if cell < 0 or cell > 3:
        raise ValueError(f"unknown cell id {cell}")
    if B < 0:
        raise ValueError(f"batch must be >= 0, got {B}")
    for name, v in (("T", T), ("batch", B), ("input_size", I), ("hidden_size", H),
                    ("output size", P)):
        if v < 1 and name != "batch":
            raise ValueError(f"{name} must be positive, got {v}")
        if v > INT_MAX:
            raise ValueError(f"{name}={v} is too large (BLAS takes 32-bit sizes)")
    if P > H or (P != H and cell != 0):
        raise ValueError(f"output size {P} must equal hidden_size {H} (or be smaller, for an LSTM projection)")
    G = lf_num_gates(cell)
    if G * H > INT_MAX:
        raise ValueError(f"{G}*hidden_size={G * H} is too large (BLAS takes 32-bit sizes)")
    cdef long long N
    if lengths is None:
        N = <long long>T * B
        d.lengths = NULL
    else:
        if not isinstance(lengths, np.ndarray) or lengths.dtype != np.int32 or \
                lengths.shape != (B,) or not lengths.flags.c_contiguous:
            raise ValueError(f"lengths must be a contiguous int32 array of shape ({B},)")
        if B and (lengths.min() < 1 or lengths.max() > T or np.any(np.diff(lengths) > 0)):
            raise ValueError(f"lengths must lie in [1, {T}] and be sorted in non-increasing order")
        N = int(lengths.sum(dtype=np.int64))
        d.lengths = <const int *>cnp.PyArray_DATA(<cnp.ndarray>lengths)
    if N > INT_MAX:
        raise ValueError(f"{N} packed rows (sum of lengths) is too many for BLAS (32-bit sizes)")
    d.cell = cell; d.seq_len = T; d.batch = <int>B; d.input_size = <int>I
    d.hidden_size = <int>H; d.out_size = <int>P
    d.pool = NULL
    d.cancel = NULL
    d.part = 0
    d.reverse = reverse
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    d.threads = threads
    return N


cdef object _take_work(list scratch, size_t n, object dtype, int *reused):
    """A work buffer of at least n elements: the one kept in scratch if it fits.

    Reusing it spares the page faults of fresh memory on every call (measured: 0.6 of
    2.5 ms at T=25, B=1, H=512) and, in inference, lets the kernel find its packed
    weights there (lf_forward). A list's pop and append are atomic under the GIL, so two
    threads running the same layer each get their own buffer.
    """
    reused[0] = 0
    if scratch:
        try:
            buf = scratch.pop()
        except IndexError:  # another thread took it meanwhile
            buf = None
        if buf is not None and buf.dtype == dtype and <size_t>buf.shape[0] >= n:
            reused[0] = 1
            return buf
    return np.empty(n, dtype)


cdef int _poll(void *arg) noexcept nogil:
    """lf_cancel's poll: run Python's pending signal handlers (Ctrl-C's raises
    KeyboardInterrupt); an exception stops the kernel and is kept in the list at arg."""
    with gil:
        try:
            PyErr_CheckSignals()
        except BaseException as e:
            (<list>arg).append(e)
            return 1
    return 0


cdef lf_cancel *_cancellable(lf_cancel *cancel, list raised, bint interruptible):
    """cancel set up to poll Python's signal handlers, or NULL: they run in the main
    thread only, so a call from another thread is not polled."""
    if not interruptible or threading.current_thread() is not threading.main_thread():
        return NULL
    cancel.poll = _poll
    cancel.arg = <void *>raised
    return cancel


cdef _check_rc(int rc, list raised, str what):
    if rc == LF_ECANCELLED and raised:
        raise raised[0]
    if rc != LF_OK:
        field = lf_field_name(rc).decode()
        raise RuntimeError(f"lstmfast {what} kernel rejected its argument "
                           f"{field or '(unknown)'} (code {rc})")


cdef class _Pool:
    """Helper threads a layer keeps between its kernel calls (lf_pool): waking them costs
    ~15 us, starting threads 70-900 us (measured on 2 cores)."""
    cdef lf_pool *p

    def __cinit__(self):
        self.p = lf_pool_new()
        if self.p == NULL:
            raise MemoryError("lstmfast: no memory for a thread pool")

    def __dealloc__(self):
        with nogil:  # stops the helpers, which never take the GIL
            lf_pool_free(self.p)


def openmp_pool(size_t parallel, size_t thread_num, size_t num_threads):
    """A pool whose calls run on an OpenMP runtime's team (lf_openmp): the addresses of
    its GOMP_parallel, omp_get_thread_num and omp_get_num_threads, all non-zero."""
    if not (parallel and thread_num and num_threads):
        raise ValueError("openmp_pool needs the three functions' addresses")
    cdef lf_openmp omp
    omp.parallel = <void (*)(void (*)(void *) noexcept nogil, void *, unsigned, unsigned) noexcept nogil>parallel
    omp.thread_num = <int (*)() noexcept nogil>thread_num
    omp.num_threads = <int (*)() noexcept nogil>num_threads
    pool = _Pool()
    lf_pool_use_openmp(pool.p, &omp)
    return pool


cdef _Pool _take_pool(list pools):
    """The pool kept in pools, or a new one when another thread is using it (a pool
    serves one call at a time); None without a list."""
    if pools is None:
        return None
    try:
        return pools.pop()
    except IndexError:
        return _Pool()


cdef _give_pool(list pools, _Pool pool):
    if pools is not None and not pools:
        pools.append(pool)


# Above this, fresh memory's page faults are a small part of the call, and a kept buffer
# (the backward's holds a copy of every h_{t-1}) would be a second set of activations.
KEEP_BYTES = 32 << 20


cdef _give_work(list scratch, object work, bint any_size):
    """Keep work for the next call: always in inference (it holds the packed weights),
    otherwise when it is small."""
    if scratch is not None and not scratch and (any_size or work.nbytes <= KEEP_BYTES):
        scratch.append(work)


def forward(int cell, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, int T, lengths,
            bint reverse, bint training, y, Py_ssize_t y_col, int threads=1,
            list scratch=None, list pools=None, bint interruptible=True, bint frozen=False):
    """One direction of one layer.

    x [N, I] packed; w_ih [G*H, I]; w_hh [G*H, P]; b_ih, b_hh [G*H] or None; w_hr [P, H]
    or None; h0 [B, P]; c0 [B, H] (LSTM) or None; lengths int32 [B] non-increasing or None;
    y [N, >= y_col+P] receives h_t in columns y_col .. y_col+P; threads: at most this many.
    scratch: None, or a list the caller keeps for this direction of this layer, which
    holds the work buffer between calls (see _take_work); pools: None, or a list the
    caller keeps for the layer, which holds its helper threads between calls;
    interruptible: in the main thread, Python's signal handlers run every ~20 ms of a
    long call, and an exception they raise (Ctrl-C's KeyboardInterrupt) stops it.
    frozen: the weights have not changed since the call that left its packed weights in
    scratch (they are read-only): those are used without comparing the weights again.
    Returns (h_n [B, P], c_n [B, H] or None, cache); cache is None unless training.
    """
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError("x must be a 2-d numpy array [N, input_size]")
    if not isinstance(w_hh, np.ndarray) or w_hh.ndim != 2 or not isinstance(h0, np.ndarray) \
            or h0.ndim != 2:
        raise ValueError("w_hh and h0 must be 2-d numpy arrays")
    dtype = x.dtype
    if dtype != np.float32 and dtype != np.float64:
        raise TypeError(f"x must be float32 or float64, got {dtype}")
    cdef lf_dims d
    G = lf_num_gates(cell) if 0 <= cell <= 3 else 1
    H = w_hh.shape[0] // G
    P = h0.shape[1]
    B = h0.shape[0]
    I = x.shape[1]
    N = _dims(&d, cell, T, B, I, H, P, reverse, lengths, threads)
    is_lstm = cell == 0
    GH = G * H
    if w_hh.shape[0] != GH:
        raise ValueError(f"w_hh must have a multiple of {G} rows, got {w_hh.shape[0]}")
    if (w_hr is None) != (P == H):
        raise ValueError("w_hr must be given exactly when the output size differs from hidden_size")
    cdef int ldy
    cdef char *px = _data(x, dtype, (N, I), "x")
    cdef char *pwih = _data(w_ih, dtype, (GH, I), "w_ih")
    cdef char *pwhh = _data(w_hh, dtype, (GH, P), "w_hh")
    cdef char *pbih = _opt(b_ih, dtype, (GH,), "b_ih")
    cdef char *pbhh = _opt(b_hh, dtype, (GH,), "b_hh")
    cdef char *pwhr = _opt(w_hr, dtype, (P, H), "w_hr")
    cdef char *ph0 = _data(h0, dtype, (B, P), "h0")
    cdef char *pc0 = _data(c0, dtype, (B, H), "c0") if is_lstm else NULL
    cdef char *py = _cols(y, dtype, N, y_col, P, "y", &ldy, True)
    _check_disjoint([("y", y)], [("x", x), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih),
                                 ("b_hh", b_hh), ("w_hr", w_hr), ("h0", h0), ("c0", c0)])

    h_n = np.empty((B, P), dtype)
    c_n = np.empty((B, H), dtype) if is_lstm else None
    gates = np.empty((N, GH), dtype) if training else None
    aux_size = lf_aux_size(cell, H)
    aux = np.empty((N, aux_size), dtype) if training and aux_size else None
    if B == 0:
        return h_n, c_n, ((gates, aux) if training else None)
    cdef int reused
    cdef const lf_kernels *kern = _k
    work = _take_work(scratch, kern.forward_work_size_f32(&d, training) if dtype == np.float32
                      else kern.forward_work_size_f64(&d, training), dtype, &reused)
    cdef char *phn = <char *>cnp.PyArray_DATA(<cnp.ndarray>h_n)
    cdef char *pcn = <char *>cnp.PyArray_DATA(<cnp.ndarray>c_n) if is_lstm else NULL
    cdef char *pg = <char *>cnp.PyArray_DATA(<cnp.ndarray>gates) if training else NULL
    cdef char *pa = <char *>cnp.PyArray_DATA(<cnp.ndarray>aux) if aux is not None else NULL
    cdef char *pw = <char *>cnp.PyArray_DATA(<cnp.ndarray>work)
    cdef int ldx = <int>I
    cdef int rc
    cdef _Pool pool = _take_pool(pools)
    if pool is not None:
        d.pool = pool.p
    cdef lf_cancel cancel
    raised = []
    d.cancel = _cancellable(&cancel, raised, interruptible)
    cdef lf_forward_args a
    a.blas = &_blas; a.dims = d
    a.x = px; a.ldx = ldx; a.w_ih = pwih; a.w_hh = pwhh; a.b_ih = pbih; a.b_hh = pbhh
    a.w_hr = pwhr; a.h0 = ph0; a.c0 = pc0; a.y = py; a.ldy = ldy; a.h_n = phn; a.c_n = pcn
    a.gates = pg; a.aux = pa; a.work = pw; a.work_reused = reused * (2 if frozen else 1)
    cdef lf_forward_fn *forward_fn = kern.forward_f64
    if dtype == np.float32:
        forward_fn = kern.forward_f32
    with nogil:
        rc = forward_fn(&a)
    _give_pool(pools, pool)
    _check_rc(rc, raised, "forward")
    _give_work(scratch, work, not training)
    return h_n, c_n, ((gates, aux) if training else None)


def _reject(str field):
    """Test hook: one LSTM step (T = B = I = H = 1, float32) through the selected variant's
    forward and backward, with `field` (a name of lf_forward_args or lf_backward_args)
    NULL and everything else valid: the binding's error for what the kernel returns."""
    cdef lf_dims d
    _dims(&d, 0, 1, 1, 1, 1, 1, False, None, 1)
    arrays = {k: np.zeros(n, np.float32) for k, n in (
        ("x", 1), ("w_ih", 4), ("w_hh", 4), ("h0", 1), ("c0", 1), ("y", 1), ("h_n", 1),
        ("c_n", 1), ("gates", 4), ("aux", 1), ("dy", 1), ("dh_n", 1), ("dc_n", 1),
        ("dx", 1), ("dh0", 1), ("dc0", 1), ("dw_ih", 4), ("dw_hh", 4))}
    n = max(_k.forward_work_size_f32(&d, 1), _k.backward_work_size_f32(&d))
    arrays["work"] = np.zeros(n + 64, np.float32)
    def ptr(name):
        return 0 if name == field else <size_t>cnp.PyArray_DATA(<cnp.ndarray>arrays[name])
    cdef lf_forward_args f
    f.blas = &_blas; f.dims = d; f.x = <void *><size_t>ptr("x"); f.ldx = 1
    f.w_ih = <void *><size_t>ptr("w_ih"); f.w_hh = <void *><size_t>ptr("w_hh")
    f.b_ih = NULL; f.b_hh = NULL; f.w_hr = NULL; f.h0 = <void *><size_t>ptr("h0")
    f.c0 = <void *><size_t>ptr("c0"); f.y = <void *><size_t>ptr("y"); f.ldy = 1
    f.h_n = <void *><size_t>ptr("h_n"); f.c_n = <void *><size_t>ptr("c_n")
    f.gates = <void *><size_t>ptr("gates"); f.aux = <void *><size_t>ptr("aux")
    f.work = <void *><size_t>ptr("work"); f.work_reused = 0
    _check_rc(_k.forward_f32(&f), [], "forward")
    cdef lf_backward_args b
    b.blas = &_blas; b.dims = d; b.x = f.x; b.ldx = 1; b.w_ih = f.w_ih; b.w_hh = f.w_hh
    b.w_hr = NULL; b.h0 = f.h0; b.c0 = f.c0; b.y = f.y; b.ldy = 1; b.gates = f.gates
    b.aux = f.aux; b.dy = <void *><size_t>ptr("dy"); b.lddy = 1
    b.dh_n = <void *><size_t>ptr("dh_n"); b.dc_n = <void *><size_t>ptr("dc_n")
    b.dx = <void *><size_t>ptr("dx"); b.lddx = 1; b.accumulate_dx = 0
    b.dh0 = <void *><size_t>ptr("dh0"); b.dc0 = <void *><size_t>ptr("dc0")
    b.dw_ih = <void *><size_t>ptr("dw_ih"); b.dw_hh = <void *><size_t>ptr("dw_hh")
    b.db_ih = NULL; b.db_hh = NULL; b.dw_hr = NULL; b.dh_norms = NULL; b.work = f.work
    _check_rc(_k.backward_f32(&b), [], "backward")


def backward_weights(list calls, list committed):
    """Part 2 of several backward calls, [(args, work)] as part 1 took and returned,
    then True appended to committed: one call from Python, so that a Ctrl-C cannot
    land between them (pending signals run when it returns), and committed says
    whether the gradients were added."""
    for args, work in calls:
        backward(*args, part=2, work=work)
    committed.append(True)


def backward(int cell, x, w_ih, w_hh, w_hr, h0, c0, int T, lengths, bint reverse,
             y, Py_ssize_t y_col, cache, dy, Py_ssize_t dy_col, dh_n, dc_n,
             dx, bint accumulate_dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh_norms=None,
             int threads=1, list scratch=None, list pools=None, bint interruptible=True,
             int part=0, work=None):
    """BPTT for one direction of one layer, consuming `cache` from forward.

    Arguments as in forward; dy [N, >= dy_col+P]; dh_n [B, P]; dc_n [B, H] (LSTM);
    dx [N, I] is written (or added to with accumulate_dx); dw_*, db_* are added to;
    dh_norms: None or float64 [T], receives ||dL/dh_t|| per step.
    part: 0 for the whole backward; 1 for all but the weight and bias gradients (the
    part that can be interrupted), 2 for those, given part 1's arguments and the work
    buffer it returned (lf_dims.part).
    Returns (dh0 [B, P], dc0 [B, H] or None); part 1 adds the work buffer; part 2
    returns None.
    """
    if part not in (0, 1, 2):
        raise ValueError(f"part must be 0, 1 or 2, got {part}")
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError("x must be a 2-d numpy array [N, input_size]")
    if not isinstance(w_hh, np.ndarray) or w_hh.ndim != 2 or not isinstance(h0, np.ndarray) \
            or h0.ndim != 2:
        raise ValueError("w_hh and h0 must be 2-d numpy arrays")
    if not isinstance(cache, tuple) or len(cache) != 2:
        raise ValueError("cache must be the (gates, aux) tuple a training forward returned")
    dtype = x.dtype
    if dtype != np.float32 and dtype != np.float64:
        raise TypeError(f"x must be float32 or float64, got {dtype}")
    cdef lf_dims d
    G = lf_num_gates(cell) if 0 <= cell <= 3 else 1
    H = w_hh.shape[0] // G
    P = h0.shape[1]
    B = h0.shape[0]
    I = x.shape[1]
    N = _dims(&d, cell, T, B, I, H, P, reverse, lengths, threads)
    is_lstm = cell == 0
    GH = G * H
    if w_hh.shape[0] != GH:
        raise ValueError(f"w_hh must have a multiple of {G} rows, got {w_hh.shape[0]}")
    if (w_hr is None) != (P == H) or (w_hr is None) != (dw_hr is None):
        raise ValueError("w_hr and dw_hr must be given exactly when the output size differs "
                         "from hidden_size")
    gates, aux = cache
    aux_size = lf_aux_size(cell, H)
    cdef int ldy, lddy, lddx
    cdef char *px = _data(x, dtype, (N, I), "x")
    cdef char *pwih = _data(w_ih, dtype, (GH, I), "w_ih")
    cdef char *pwhh = _data(w_hh, dtype, (GH, P), "w_hh")
    cdef char *pwhr = _opt(w_hr, dtype, (P, H), "w_hr")
    cdef char *ph0 = _data(h0, dtype, (B, P), "h0")
    cdef char *pc0 = _data(c0, dtype, (B, H), "c0") if is_lstm else NULL
    cdef char *py = _cols(y, dtype, N, y_col, P, "y", &ldy)
    cdef char *pg = _data(gates, dtype, (N, GH), "gates", True)
    cdef char *pa = _data(aux, dtype, (N, aux_size), "aux", True) if aux_size else NULL
    cdef char *pdy = _cols(dy, dtype, N, dy_col, P, "dy", &lddy)
    cdef char *pdhn = _data(dh_n, dtype, (B, P), "dh_n")
    cdef char *pdcn = _data(dc_n, dtype, (B, H), "dc_n") if is_lstm else NULL
    cdef char *pdx = _cols(dx, dtype, N, 0, I, "dx", &lddx, True)
    cdef char *pdwih = _data(dw_ih, dtype, (GH, I), "dw_ih", True)
    cdef char *pdwhh = _data(dw_hh, dtype, (GH, P), "dw_hh", True)
    cdef char *pdbih = _opt(db_ih, dtype, (GH,), "db_ih", True)
    cdef char *pdbhh = _opt(db_hh, dtype, (GH,), "db_hh", True)
    cdef char *pdwhr = _opt(dw_hr, dtype, (P, H), "dw_hr", True)
    cdef char *pnorms = _opt(dh_norms, np.float64, (T,), "dh_norms", True)
    inputs = [("x", x), ("w_ih", w_ih), ("w_hh", w_hh), ("w_hr", w_hr), ("h0", h0),
              ("c0", c0), ("y", y), ("dy", dy), ("dh_n", dh_n), ("dc_n", dc_n)]
    outputs = [("gates", gates), ("aux", aux), ("dx", dx), ("dw_ih", dw_ih),
               ("dw_hh", dw_hh), ("db_ih", db_ih), ("db_hh", db_hh), ("dw_hr", dw_hr),
               ("dh_norms", dh_norms)]
    _check_disjoint(outputs, inputs)
    for k in range(len(outputs)):
        _check_disjoint(outputs[k:k + 1], outputs[k + 1:])

    dh0 = np.empty((B, P), dtype)
    dc0 = np.empty((B, H), dtype) if is_lstm else None
    if B == 0:  # no rows: no gradient
        if dh_norms is not None and part != 2:
            dh_norms[:] = 0
        return None if part == 2 else (dh0, dc0, None) if part == 1 else (dh0, dc0)
    cdef int reused
    cdef const lf_kernels *kern = _k
    need = kern.backward_work_size_f32(&d) if dtype == np.float32 \
        else kern.backward_work_size_f64(&d)
    if part == 2:
        if not (isinstance(work, np.ndarray) and work.dtype == dtype and work.ndim == 1
                and work.size >= need and work.flags.c_contiguous and work.flags.writeable):
            raise ValueError("part 2 needs the work buffer part 1 returned for these arguments")
    else:
        work = _take_work(scratch, need, dtype, &reused)
    d.part = part
    cdef char *pdh0 = <char *>cnp.PyArray_DATA(<cnp.ndarray>dh0)
    cdef char *pdc0 = <char *>cnp.PyArray_DATA(<cnp.ndarray>dc0) if is_lstm else NULL
    cdef char *pw = <char *>cnp.PyArray_DATA(<cnp.ndarray>work)
    cdef int ldx = <int>I
    cdef int acc = accumulate_dx
    cdef int rc
    cdef _Pool pool = _take_pool(pools)
    if pool is not None:
        d.pool = pool.p
    cdef lf_cancel cancel
    raised = []
    d.cancel = _cancellable(&cancel, raised, interruptible)
    cdef lf_backward_args a
    a.blas = &_blas; a.dims = d
    a.x = px; a.ldx = ldx; a.w_ih = pwih; a.w_hh = pwhh; a.w_hr = pwhr; a.h0 = ph0
    a.c0 = pc0; a.y = py; a.ldy = ldy; a.gates = pg; a.aux = pa; a.dy = pdy; a.lddy = lddy
    a.dh_n = pdhn; a.dc_n = pdcn; a.dx = pdx; a.lddx = lddx; a.accumulate_dx = acc
    a.dh0 = pdh0; a.dc0 = pdc0; a.dw_ih = pdwih; a.dw_hh = pdwhh; a.db_ih = pdbih
    a.db_hh = pdbhh; a.dw_hr = pdwhr; a.dh_norms = <double *>pnorms; a.work = pw
    cdef lf_backward_fn *backward_fn = kern.backward_f64
    if dtype == np.float32:
        backward_fn = kern.backward_f32
    with nogil:
        rc = backward_fn(&a)
    _give_pool(pools, pool)
    _check_rc(rc, raised, "backward")
    if part == 1:
        return dh0, dc0, work
    if part == 2:
        _give_work(scratch, work, False)
        return None
    _give_work(scratch, work, False)
    return dh0, dc0
