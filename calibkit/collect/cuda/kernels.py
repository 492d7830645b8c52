"""CUDA source of the fused multi-tensor reducer (calibkit/collect/cuda/fused.py drives it).

One pass per run in the steady state: ``fused_pass`` reads every value once, for the run's
min/max/NaN/Inf and for its histogram at the tensor's current range exponent, counted into
a per-run scratch histogram. ``fused_range`` (one block per tensor) then decides the range
exponent from the run's stats; when a value reached past the current range (the exponent
grows: a tensor's first runs) the scratch is dropped, the accumulated counts are folded and
the tensor is marked for ``fused_redo``, which bins it again at the new exponent. Otherwise
the scratch is added to the counts. Bins: ``floor(|x| * 2**(11-e))``, an exact product in the
tensor's precision (float16 read as float32, as the host converts it), truncated.
"""

SOURCE = r"""
#include <cuda_fp16.h>
typedef unsigned long long u64;
typedef long long i64;
// VARIANT (compile-time; all count the same values, so all are bit-identical; benches time them):
//   0: min/max of float tensors kept in double, one shared histogram per block
//   1: min/max kept in float (exact for float32/16 values), one shared histogram
//   2: as 1, with 4 interleaved copies of the shared histogram (lane & 3): fewer same-address conflicts
//   3: as 1, lanes with the same bin found by __match_any_sync and counted by one atomic
#ifndef VARIANT
#define VARIANT 1
#endif
#if VARIANT == 2
#define COPIES 4
#else
#define COPIES 1
#endif
#define HIDX(b, lane) ((b) * COPIES + ((lane) & (COPIES - 1)))
#if VARIANT == 0
typedef double acc_t;
#else
typedef float acc_t;
#endif
#define NUM_BINS 2048
#define BINS_LOG2 11
#define E_MIN (-40)
#define FULL 0xffffffffu
#define POS_INF __longlong_as_double(0x7ff0000000000000LL)

__device__ __forceinline__ u64 enc(double v) {           // order-preserving double -> u64
    u64 u = (u64)__double_as_longlong(v);
    return (u >> 63) ? ~u : (u | 0x8000000000000000ULL);
}
__device__ __forceinline__ double dec(u64 u) {
    return __longlong_as_double((i64)((u >> 63) ? (u & 0x7fffffffffffffffULL) : ~u));
}

struct Acc {
    double lo, hi;      // float32/16 values are exact in double
    unsigned nan, inf;
    bool over;          // a finite value at or past the current range
};

// Bin of one value (-1: not binned), stats updated. Warp-converged callers only.
__device__ __forceinline__ int see_f(float v, float scale, Acc& a, acc_t& lo, acc_t& hi) {
    unsigned b = __float_as_uint(v);
    if ((b & 0x7f800000u) == 0x7f800000u) { if (b & 0x007fffffu) a.nan++; else a.inf++; return -1; }
    lo = fmin(lo, (acc_t)v); hi = fmax(hi, (acc_t)v);
    float m = fabsf(v) * scale;                              // exact: a power of two
    if (m >= 2048.0f) { a.over = true; return -1; }
    return (int)m;
}
__device__ __forceinline__ int see_d(double v, double scale, Acc& a) {
    if (isnan(v)) { a.nan++; return -1; }
    if (isinf(v)) { a.inf++; return -1; }
    a.lo = fmin(a.lo, v); a.hi = fmax(a.hi, v);
    double m = fabs(v) * scale;
    if (m >= 2048.0) { a.over = true; return -1; }
    return (int)m;
}

// Count bin b (or nothing for -1) in shared memory: a warp whose lanes agree adds once; the
// zero bin (ReLU outputs) is counted by ballot; other bins by one shared atomic per lane.
__device__ __forceinline__ void count(int b, unsigned* h, int lane) {
#if VARIANT == 3
    unsigned peers = __match_any_sync(FULL, b);
    if (b >= 0 && lane == __ffs(peers) - 1) atomicAdd(&h[b], (unsigned)__popc(peers));
#else
    int b0 = __shfl_sync(FULL, b, 0);
    if (__all_sync(FULL, b == b0)) {
        if (lane == 0 && b0 >= 0) atomicAdd(&h[HIDX(b0, 0)], 32u);
        return;
    }
    unsigned zero = __ballot_sync(FULL, b == 0);
    if (lane == 0 && zero) atomicAdd(&h[HIDX(0, 0)], (unsigned)__popc(zero));
    if (b > 0) atomicAdd(&h[HIDX(b, lane)], 1u);
#endif
}

// The block's count of bin i (summed over its copies).
__device__ __forceinline__ unsigned bin_total(const unsigned* h, int i) {
    unsigned v = 0;
    for (int r = 0; r < COPIES; r++) v += h[i * COPIES + r];
    return v;
}

// Walk chunk c of its tensor: every value's bin counted into h (warp-converged loop).
__device__ __forceinline__ void walk(const void* base, int dt, i64 start, int len, double scale, unsigned* h, Acc& a, bool bin) {
    int lane = threadIdx.x & 31;
    acc_t lo = (acc_t)POS_INF, hi = -(acc_t)POS_INF;
    if (dt == 0) {
        const float* p = (const float*)base + start;
        float s = (float)scale;
        if ((((size_t)p) & 15) == 0) {
            int n4 = len >> 2;
            const float4* p4 = (const float4*)p;
            for (int i = threadIdx.x; i - lane < n4; i += blockDim.x) {
                float4 v = i < n4 ? __ldcs(p4 + i) : make_float4(__int_as_float(0x7fc00000), __int_as_float(0x7fc00000), __int_as_float(0x7fc00000), __int_as_float(0x7fc00000));
                unsigned nan0 = a.nan;
                int b0 = see_f(v.x, s, a, lo, hi), b1 = see_f(v.y, s, a, lo, hi), b2 = see_f(v.z, s, a, lo, hi), b3 = see_f(v.w, s, a, lo, hi);
                if (i >= n4) a.nan = nan0;                   // padding lanes count nothing
                if (bin) { count(b0, h, lane); count(b1, h, lane); count(b2, h, lane); count(b3, h, lane); }
            }
            for (int i = (n4 << 2) + threadIdx.x; i - lane < len; i += blockDim.x) {
                int b = i < len ? see_f(p[i], s, a, lo, hi) : -1;
                if (bin) count(b, h, lane);
            }
        } else {
            for (int i = threadIdx.x; i - lane < len; i += blockDim.x) {
                int b = i < len ? see_f(p[i], s, a, lo, hi) : -1;
                if (bin) count(b, h, lane);
            }
        }
    } else if (dt == 1) {
        const __half* p = (const __half*)base + start;
        float s = (float)scale;
        for (int i = threadIdx.x; i - lane < len; i += blockDim.x) {
            int b = i < len ? see_f(__half2float(p[i]), s, a, lo, hi) : -1;
            if (bin) count(b, h, lane);
        }
    } else {
        const double* p = (const double*)base + start;
        for (int i = threadIdx.x; i - lane < len; i += blockDim.x) {
            int b = i < len ? see_d(p[i], scale, a) : -1;
            if (bin) count(b, h, lane);
        }
    }
    a.lo = fmin(a.lo, (double)lo); a.hi = fmax(a.hi, (double)hi);
}

__device__ __forceinline__ double scale_of(int e) { return ldexp(1.0, BINS_LOG2 - e); }  // exact in float too

extern "C" __global__ void fused_pass(const u64* ptr, const int* dtype, const int* slot,
        const int* c_tensor, const i64* c_start, const int* c_len, const int* exps,
        u64* run_lo, u64* run_hi, u64* run_nan, u64* run_inf, int* over, u64* scratch) {
    __shared__ unsigned h[NUM_BINS * COPIES];
    __shared__ double s_lo[32], s_hi[32];
    __shared__ unsigned s_nan[32], s_inf[32];
    for (int i = threadIdx.x; i < NUM_BINS * COPIES; i += blockDim.x) h[i] = 0;
    __syncthreads();
    int c = blockIdx.x, t = c_tensor[c], s = slot[t];
    Acc a = {POS_INF, -POS_INF, 0u, 0u, false};
    walk((const void*)ptr[t], dtype[t], c_start[c], c_len[c], scale_of(exps[s]), h, a, true);
    for (int o = 16; o > 0; o >>= 1) {
        a.lo = fmin(a.lo, __shfl_xor_sync(FULL, a.lo, o));
        a.hi = fmax(a.hi, __shfl_xor_sync(FULL, a.hi, o));
        a.nan += __shfl_xor_sync(FULL, a.nan, o);
        a.inf += __shfl_xor_sync(FULL, a.inf, o);
    }
    int w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if ((threadIdx.x & 31) == 0) { s_lo[w] = a.lo; s_hi[w] = a.hi; s_nan[w] = a.nan; s_inf[w] = a.inf; }
    int any_over = __syncthreads_or(a.over);
    if (threadIdx.x == 0) {
        for (int k = 1; k < nw; k++) {
            a.lo = fmin(a.lo, s_lo[k]); a.hi = fmax(a.hi, s_hi[k]); a.nan += s_nan[k]; a.inf += s_inf[k];
        }
        if (a.lo == 0.0) a.lo = 0.0;                         // -0 counts as +0
        if (a.hi == 0.0) a.hi = 0.0;
        if (a.lo <= a.hi) { atomicMin(&run_lo[s], enc(a.lo)); atomicMax(&run_hi[s], enc(a.hi)); }
        if (a.nan) atomicAdd(&run_nan[s], (u64)a.nan);
        if (a.inf) atomicAdd(&run_inf[s], (u64)a.inf);
        if (any_over) over[s] = 1;
    }
    if (any_over) return;                                    // the tensor is binned again anyway
    u64* out = scratch + (i64)s * NUM_BINS;
    for (int i = threadIdx.x; i < NUM_BINS; i += blockDim.x) {
        unsigned v = bin_total(h, i);
        if (v) atomicAdd(&out[i], (u64)v);
    }
}

extern "C" __global__ void fused_range(const i64* size, const int* slot,
        u64* run_lo, u64* run_hi, u64* run_nan, u64* run_inf, int* over, int* redo,
        u64* acc_lo, u64* acc_hi, u64* acc_count, u64* acc_nan, u64* acc_inf,
        int* exps, u64* counts, u64* scratch) {
    __shared__ u64 old[NUM_BINS];
    __shared__ int k_sh, redo_sh;
    int t = blockIdx.x, s = slot[t];
    if (threadIdx.x == 0) {
        u64 nan = run_nan[s], inf = run_inf[s];
        u64 finite = (u64)size[t] - nan - inf;
        k_sh = 0;
        redo_sh = over[s];
        acc_nan[s] += nan; acc_inf[s] += inf;
        if (finite > 0) {
            double lo = dec(run_lo[s]), hi = dec(run_hi[s]);
            if (enc(lo) < acc_lo[s]) acc_lo[s] = enc(lo);
            if (enc(hi) > acc_hi[s]) acc_hi[s] = enc(hi);
            acc_count[s] += finite;
            double amax = fmax(-lo, hi);
            int e = E_MIN;
            if (amax > 0.0) { int fe; frexp(amax, &fe); e = fe > E_MIN ? fe : E_MIN; }
            if (e > exps[s]) { k_sh = e - exps[s]; exps[s] = e; }
        }
        run_lo[s] = enc(POS_INF); run_hi[s] = enc(-POS_INF); run_nan[s] = 0; run_inf[s] = 0;
        over[s] = 0;
        redo[s] = redo_sh;
    }
    __syncthreads();
    int k = k_sh;
    u64* h = counts + (i64)s * NUM_BINS;
    u64* sc = scratch + (i64)s * NUM_BINS;
    if (k > 0) {
        for (int i = threadIdx.x; i < NUM_BINS; i += blockDim.x) old[i] = h[i];
        __syncthreads();
        int width = k >= BINS_LOG2 ? NUM_BINS : 1 << k, groups = NUM_BINS / width;
        for (int i = threadIdx.x; i < NUM_BINS; i += blockDim.x) {
            u64 v = 0;
            if (i < groups) for (int j = 0; j < width; j++) v += old[i * width + j];
            h[i] = v;
        }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < NUM_BINS; i += blockDim.x) {
        if (!redo_sh) h[i] += sc[i];                         // the pass binned at the right range
        sc[i] = 0;
    }
}

extern "C" __global__ void fused_redo(const u64* ptr, const int* dtype, const int* slot,
        const int* c_tensor, const i64* c_start, const int* c_len, const int* exps, const int* redo, u64* counts) {
    int c = blockIdx.x, t = c_tensor[c], s = slot[t];
    if (!redo[s]) return;
    __shared__ unsigned h[NUM_BINS * COPIES];
    for (int i = threadIdx.x; i < NUM_BINS * COPIES; i += blockDim.x) h[i] = 0;
    __syncthreads();
    Acc a = {POS_INF, -POS_INF, 0u, 0u, false};
    walk((const void*)ptr[t], dtype[t], c_start[c], c_len[c], scale_of(exps[s]), h, a, true);
    __syncthreads();
    u64* out = counts + (i64)s * NUM_BINS;
    for (int i = threadIdx.x; i < NUM_BINS; i += blockDim.x) {
        unsigned v = bin_total(h, i);
        if (v) atomicAdd(&out[i], (u64)v);
    }
}

// Benches only: the floor on the same buffers, every float32 value read once (float4, as
// fused_pass) for its |x| max per chunk, nothing counted.
extern "C" __global__ void read_floor(const u64* ptr, const int* dtype, const int* c_tensor, const i64* c_start, const int* c_len, unsigned* out) {
    int c = blockIdx.x, t = c_tensor[c];
    if (dtype[t] != 0) return;
    const float* p = (const float*)ptr[t] + c_start[c];
    int len = c_len[c];
    float m = 0.0f;
    if ((((size_t)p) & 15) == 0) {
        const float4* p4 = (const float4*)p;
        for (int i = threadIdx.x; i < (len >> 2); i += blockDim.x) {
            float4 v = __ldcs(p4 + i);
            m = fmaxf(m, fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
        }
        for (int i = ((len >> 2) << 2) + threadIdx.x; i < len; i += blockDim.x) m = fmaxf(m, fabsf(p[i]));
    } else {
        for (int i = threadIdx.x; i < len; i += blockDim.x) m = fmaxf(m, fabsf(p[i]));
    }
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(FULL, m, o));
    if ((threadIdx.x & 31) == 0) atomicMax(&out[c], __float_as_uint(m));
}
"""
