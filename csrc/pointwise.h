/* Activations for the pointwise passes, float and double, written so that gcc
 * vectorises the loops that call them (no libm calls, no branches: selects).
 *
 * exp: range reduction x = n ln2 + r, then a polynomial (float) or Cephes' rational
 * approximation (double) for e^r, scaled by 2^n built in the exponent bits; the input
 * is clamped so that 2^n stays a normal number below and is at most +inf above (the
 * exponent bits of n = 128 or 1024). Max relative error, measured against
 * float64/long double references over the whole range: float 1e-7, double 4e-16.
 * sigmoid = 1 / (1 + e^-x) keeps its relative accuracy for very negative x (backward
 * multiplies by it there), never gives NaN for a finite x, and is exactly 0 and 1 at
 * -inf and +inf, as torch's (0 * inf downstream is then NaN, as there).
 * tanh, float: x P(x^2) / Q(x^2), degree 4 over 4 with positive Q, fitted to float64
 * tanh on |x| <= 9 for relative error (iteratively reweighted least squares; 2e-8 in
 * exact arithmetic, 3.3e-7 evaluated in float), x clamped to +-9 and the result to
 * +-1. One division and no exp: about a third of the time of the form below.
 * tanh, double: an odd rational function below |x| = 0.625 (relative accuracy near 0),
 * 1 - 2 / (e^2|x| + 1) above, sign restored.
 * The kernel variants with FMA (AVX2, AVX-512, NEON) let the compiler fuse a multiply
 * and an add where the baseline rounds twice, so the last bits can differ between
 * variants; each variant's results are deterministic.
 */
#ifndef LSTMFAST_POINTWISE_H
#define LSTMFAST_POINTWISE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* "No dependence between iterations": the loops below write through pointers that the
 * compilers cannot prove apart, and clang's cost model gives up on the run-time checks
 * that would prove it (its spelling of gcc's ivdep). */
#if defined(__clang__)
#define LF_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define LF_IVDEP _Pragma("GCC ivdep")
#endif

static inline float lf_exp_f32(float x)
{
    /* e^-87 is still a normal number; above 88.4 n = 128 makes the scale, and the
     * result, +inf (sigmoid(-inf) is then exactly 0, as torch's) */
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.5f ? 88.5f : x;
    const float shift = 12582912.0f;  /* 1.5 * 2^23: adding it rounds to an integer */
    float t = x * 1.44269504088896341f + shift;
    float n = t - shift;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits + 127) << 23;   /* t's low mantissa bits hold n */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline double lf_exp_f64(double x)
{
    x = x < -708.0 ? -708.0 : x;   /* as in lf_exp_f32: above 709.5, n = 1024 and +inf */
    x = x > 709.9 ? 709.9 : x;
    const double shift = 6755399441055744.0;  /* 1.5 * 2^52 */
    double t = x * 1.4426950408889634073599 + shift;
    double n = t - shift;
    double r = x - n * 6.93145751953125E-1;
    r = r - n * 1.42860682030941723212E-6;
    double rr = r * r;
    double px = r * ((1.26177193074810590878E-4 * rr + 3.02994407707441961300E-2) * rr +
                     9.99999999999999999910E-1);
    double qx = ((3.00198505138664455042E-6 * rr + 2.52448340349684104192E-3) * rr +
                 2.27265548208155028766E-1) * rr + 2.00000000000000000009E0;
    double e = 1.0 + 2.0 * (px / (qx - px));
    int64_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits + 1023) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return e * scale;
}

static inline float lf_sigmoid_f32(float x) { return 1.0f / (1.0f + lf_exp_f32(-x)); }
static inline double lf_sigmoid_f64(double x) { return 1.0 / (1.0 + lf_exp_f64(-x)); }

static inline float lf_tanh_f32(float x)
{
    x = x < -9.0f ? -9.0f : x;   /* float tanh is within half an ulp of +-1 beyond */
    x = x > 9.0f ? 9.0f : x;
    const float s = x * x;
    float p = 1.3352087852025463e-08f;
    p = p * s + 2.0607198464164117e-05f;
    p = p * s + 3.495473169702519e-03f;
    p = p * s + 1.3380928848357884e-01f;
    p = p * s + 9.99999979473943e-01f;
    float q = 7.775495933573517e-07f;
    q = q * s + 3.2854470288500796e-04f;
    q = q * s + 2.5876544798569392e-02f;
    q = q * s + 4.6714244439201885e-01f;
    q = q * s + 1.0f;
    const float t = x * p / q;
    return t < -1.0f ? -1.0f : t > 1.0f ? 1.0f : t;
}

static inline double lf_tanh_f64(double x)
{
    double ax = fabs(x), z = x * x;
    double p = (-9.64399179425052238628E-1 * z - 9.92877231001918586564E1) * z
               - 1.61468768441708447952E3;
    double q = ((z + 1.12811678491632931402E2) * z + 2.23548839060100448583E3) * z
               + 4.84406305325125486048E3;
    double small = x + x * z * (p / q);
    double big = copysign(1.0 - 2.0 / (lf_exp_f64(2.0 * ax) + 1.0), x);
    return ax < 0.625 ? small : big;
}

#endif
