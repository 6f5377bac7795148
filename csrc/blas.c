/* The BLAS thread pool, held at one thread while lstmfast's kernels run.
 *
 * Our kernels split their BLAS GEMMs between their own threads, so BLAS must not start
 * threads of its own: OpenBLAS workers that keep spinning after a call steal the cores
 * from the recurrence, and a GEMM that runs on a varying number of threads would make
 * results depend on what else the process is doing. OpenBLAS only has a process-wide
 * setting (its openblas_set_num_threads_local is global too), so this file holds the one
 * piece of process-wide state in lstmfast: a count of the kernel calls under way, under
 * a lock. The first call to enter sets the pool to one thread, the last to leave puts
 * back what it found. Meanwhile other BLAS users in the process run single-threaded.
 *
 * scipy's extension modules load their OpenBLAS privately (RTLD_LOCAL), so its symbols
 * are found through the module that holds the gemm we were handed. Another BLAS, or an
 * OpenBLAS without these functions, is simply left alone. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include "lstmfast.h"

static void *lf_blas_symbol(const void *gemm, const char *const *names, size_t n)
{
    Dl_info info;
    if (!gemm || !dladdr(gemm, &info) || !info.dli_fname) return NULL;
    void *lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (!lib) return NULL;
    void *fn = NULL;
    for (size_t i = 0; i < n && !fn; i++) fn = dlsym(lib, names[i]);
    dlclose(lib);  /* drops only the reference dlopen took: the module stays loaded */
    return fn;
}

void lf_find_blas_threads(lf_blas *bl, const void *gemm)
{
    static const char *const set[] = {"scipy_openblas_set_num_threads",
                                      "scipy_openblas_set_num_threads64_",
                                      "openblas_set_num_threads"};
    static const char *const get[] = {"scipy_openblas_get_num_threads",
                                      "scipy_openblas_get_num_threads64_",
                                      "openblas_get_num_threads"};
    bl->set_threads = (void (*)(int))lf_blas_symbol(gemm, set, 3);
    bl->get_threads = (int (*)(void))lf_blas_symbol(gemm, get, 3);
    if (!bl->set_threads || !bl->get_threads) bl->set_threads = NULL, bl->get_threads = NULL;
}

void lf_blas_describe(const void *gemm, const char **config, const char **core)
{
    static const char *const cfg[] = {"scipy_openblas_get_config",
                                      "scipy_openblas_get_config64_", "openblas_get_config"};
    static const char *const name[] = {"scipy_openblas_get_corename",
                                       "scipy_openblas_get_corename64_",
                                       "openblas_get_corename"};
    const char *(*get_config)(void) = (const char *(*)(void))lf_blas_symbol(gemm, cfg, 3);
    const char *(*get_core)(void) = (const char *(*)(void))lf_blas_symbol(gemm, name, 3);
    *config = get_config ? get_config() : NULL;
    *core = get_core ? get_core() : NULL;
}

static pthread_mutex_t lf_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static int lf_pool_users = 0, lf_pool_saved = 1;

void lf_blas_single_enter(const lf_blas *bl)
{
    if (!bl->set_threads) return;
    pthread_mutex_lock(&lf_pool_lock);
    if (lf_pool_users++ == 0) {
        lf_pool_saved = bl->get_threads();
        if (lf_pool_saved != 1) bl->set_threads(1);
    }
    pthread_mutex_unlock(&lf_pool_lock);
}

void lf_blas_single_leave(const lf_blas *bl)
{
    if (!bl->set_threads) return;
    pthread_mutex_lock(&lf_pool_lock);
    if (--lf_pool_users == 0 && lf_pool_saved != 1) bl->set_threads(lf_pool_saved);
    pthread_mutex_unlock(&lf_pool_lock);
}
