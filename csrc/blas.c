/* Finding the thread control of the BLAS that scipy.linalg.cython_blas uses.
 *
 * scipy's extension modules load their OpenBLAS privately (RTLD_LOCAL), so its symbols
 * are not global: look them up through the module that holds the gemm we were handed,
 * whose dependencies include that OpenBLAS. Returns NULL when this is another BLAS. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include "lstmfast.h"

typedef int (*lf_threads_fn)(int);

lf_threads_fn lf_find_set_threads_local(const void *gemm)
{
    static const char *names[] = {"openblas_set_num_threads_local",
                                  "scipy_openblas_set_num_threads_local",
                                  "scipy_openblas_set_num_threads_local64_"};
    Dl_info info;
    if (!gemm || !dladdr(gemm, &info) || !info.dli_fname) return NULL;
    void *lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (!lib) return NULL;
    lf_threads_fn fn = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !fn; i++)
        fn = (lf_threads_fn)dlsym(lib, names[i]);
    dlclose(lib);  /* only drops the reference dlopen took: the module stays loaded */
    return fn;
}
