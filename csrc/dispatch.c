/* Which kernel variants this build holds, and which of them this CPU can run.
 * Built once, with the baseline flags. setup.py defines LF_HAVE_<ISA> for each variant
 * it compiled (csrc/recurrence.c, once per instruction set). */
#include <string.h>
#include "lstmfast.h"
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

#ifdef LF_HAVE_AVX512
extern const lf_kernels lf_kernels_avx512;
#endif
#ifdef LF_HAVE_AVX2
extern const lf_kernels lf_kernels_avx2;
#endif
#ifdef LF_HAVE_NEON
extern const lf_kernels lf_kernels_neon;
#endif
#ifdef LF_HAVE_BASELINE
extern const lf_kernels lf_kernels_baseline;
#endif

static const lf_kernels *const lf_variants[] = {
#ifdef LF_HAVE_AVX512
    &lf_kernels_avx512,
#endif
#ifdef LF_HAVE_AVX2
    &lf_kernels_avx2,
#endif
#ifdef LF_HAVE_NEON
    &lf_kernels_neon,
#endif
#ifdef LF_HAVE_BASELINE
    &lf_kernels_baseline,
#endif
    NULL,
};

const char *lf_compiler(void)
{
#if defined(__clang__) || !defined(__GNUC__)
    return __VERSION__;
#else
    return "gcc " __VERSION__;
#endif
}

const lf_kernels *lf_kernels_get(int i)
{
    const int n = (int)(sizeof lf_variants / sizeof lf_variants[0]) - 1;
    return i >= 0 && i < n ? lf_variants[i] : NULL;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* The x86-64 microarchitecture levels the variants are compiled for: v3 (AVX2, FMA,
 * BMI1/2, F16C, LZCNT, MOVBE) and v4 (v3 + AVX-512 F, BW, CD, DQ, VL), each with the
 * OS saving the registers it uses (XCR0: SSE and AVX state; and the opmask and upper
 * zmm state for v4). A CPU that has AVX-512 under an OS that does not save zmm
 * registers is not a v4 machine. */
static unsigned long long lf_xgetbv(void)
{
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static int lf_x86_level(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 1;
    const unsigned c1 = c;
    const int osxsave = c1 >> 27 & 1;
    if (!osxsave || !(c1 >> 28 & 1) || !(c1 >> 12 & 1) || !(c1 >> 22 & 1) || !(c1 >> 29 & 1))
        return 1;  /* AVX, FMA, MOVBE, F16C */
    const unsigned long long xcr0 = lf_xgetbv();
    if ((xcr0 & 0x6) != 0x6) return 1;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 1;
    const unsigned b7 = b;
    if (!(b7 >> 5 & 1) || !(b7 >> 3 & 1) || !(b7 >> 8 & 1)) return 1;  /* AVX2, BMI1, BMI2 */
    if (!__get_cpuid(0x80000001, &a, &b, &c, &d) || !(c >> 5 & 1)) return 1;  /* LZCNT */
    const unsigned v4 = 1u << 16 | 1u << 17 | 1u << 28 | 1u << 30 | 1u << 31;  /* F DQ CD BW VL */
    if ((b7 & v4) != v4 || (xcr0 & 0xE6) != 0xE6) return 3;
    return 4;
}
#endif

int lf_cpu_supports(const char *isa)
{
    if (!isa) return 0;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    const int level = lf_x86_level();
    if (!strcmp(isa, "avx512")) return level >= 4;
    if (!strcmp(isa, "avx2")) return level >= 3;
    return !strcmp(isa, "baseline");
#elif defined(__aarch64__)
    return !strcmp(isa, "neon") || !strcmp(isa, "baseline");
#else
    return !strcmp(isa, "baseline");
#endif
}

const char *lf_field_name(int code)
{
    static const char *const names[LF_FIELD_COUNT] = {
        "", "blas", "dims", "x", "w_ih", "w_hh", "w_hr", "h0", "c0", "y", "h_n", "c_n",
        "gates", "aux", "work", "dy", "dh_n", "dc_n", "dx", "dh0", "dc0", "dw_ih", "dw_hh",
        "dw_hr",
    };
    const int field = LF_EFIELD - code;
    return field > 0 && field < LF_FIELD_COUNT ? names[field] : "";
}
