/* Numerically safe activations for any finite input, float and double.
 * sigmoid uses the branch that never forms exp of a large positive number, so it
 * neither overflows nor loses relative accuracy for very negative x (backward
 * multiplies by sigmoid(x) there). */
#ifndef LSTMFAST_POINTWISE_H
#define LSTMFAST_POINTWISE_H

#include <math.h>

static inline float lf_sigmoid_f32(float x)
{
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}

static inline double lf_sigmoid_f64(double x)
{
    if (x >= 0.0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

static inline float lf_tanh_f32(float x) { return tanhf(x); }
static inline double lf_tanh_f64(double x) { return tanh(x); }

#endif
