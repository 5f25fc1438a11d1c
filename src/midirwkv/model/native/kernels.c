/* One RWKV-7 decode step for B rows on the CPU: the equations of midirwkv.model.decode.decode_step in one call.
 *
 * Why: at batch 1 a decode step is a string of small matrix-vector products and ~40 tiny element-wise ops per
 * layer; through torch each op pays dispatch and a thread-pool wake-up, which costs more than streaming the
 * weights. Here the whole step runs in one call: worker threads stay in a spin barrier for the ~ms the step
 * lasts, each matrix is streamed once per step whatever B is, and element-wise work stays in the caches.
 *
 * Weights are fp32 or int8 with one fp32 scale per output row (symmetric, per channel). Activations, the state
 * and all accumulation are fp32. Built at run time by midirwkv.model.native (build.py) with the machine's C compiler;
 * no torch or Python headers are needed, the layout contract is the pointer table below.
 */
#include <math.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A matrix used as y = W x with `out` outputs of `in` inputs; either f (fp32) or q + s (int8 and one scale per
 * output), stored in panels of 16 outputs, [ceil(out/16)][in][16] (outputs padded with zeros): a product
 * reads each panel front to back and broadcasts x, so any batch size runs without horizontal sums. */
typedef struct {
    const float *f;
    const int8_t *q;
    const float *s;
    int64_t out, in;
} Mat;

/* Per layer, in this order (the Python side builds the same table). */
enum {
    P_LN1_W, P_LN1_B, P_LN2_W, P_LN2_B,
    P_MAA,                       /* (7, C): r k v | w a v g */
    P_R, P_K, P_V, P_O,          /* Mat* (C, C) */
    P_W1, P_A1, P_V1, P_G1,      /* Mat* (D, C): first low-rank factors as (out, in) */
    P_W2, P_A2, P_V2, P_G2,      /* Mat* (C, D) */
    P_W0, P_A0, P_V0,            /* (C) */
    P_KK, P_KA, P_RK,            /* k_k, k_a, r_k: (C) each */
    P_LNX_W, P_LNX_B,
    P_FFN_XK,                    /* (C) */
    P_FK, P_FV,                  /* Mat* (F, C) and (C, F) */
    P_PER_LAYER
};

typedef struct {
    int64_t n_layer, C, H, N, F, V, D, Dg, B;
    float ln_eps, lnx_eps, decay_scale;
    const float *emb, *ln0_w, *ln0_b, *lnout_w, *lnout_b;
    const Mat *head;
    const void *const *layers;   /* n_layer * P_PER_LAYER pointers */
    const int64_t *idx;          /* (B) token ids */
    float *att_x, *ffn_x, *wkv;  /* state, updated in place: (L, B, C), (L, B, C), (L, B, H, N, N) */
    float *logits;               /* (B, V) */
    int n_threads;
} Step;

/* ------------------------------------------------------------------------------------------ threads */

typedef struct {
    atomic_int count;
    atomic_int gen;
    int n;
} Barrier;

static void barrier_wait(Barrier *b) {
    if (b->n == 1) return;
    int g = atomic_load_explicit(&b->gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == b->n - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->gen, 1, memory_order_release);
        return;
    }
    int spins = 0;
    while (atomic_load_explicit(&b->gen, memory_order_acquire) == g) {
        /* spin briefly (steps are ~ms), then give the core away in case the machine is oversubscribed */
        if (++spins > 20000) { sched_yield(); spins = 0; }
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

static void split(int64_t n, int tid, int nt, int64_t *lo, int64_t *hi) {
    *lo = n * tid / nt;
    *hi = n * (tid + 1) / nt;
}

/* ------------------------------------------------------------------------------------------ kernels */

static inline float dot_f32(const float *restrict w, const float *restrict x, int64_t n) {
    float acc[32] = {0};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int j = 0; j < 32; j++) acc[j] += w[i + j] * x[i + j];
    float s = 0.f;
    for (int j = 0; j < 32; j++) s += acc[j];
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

typedef float v16 __attribute__((vector_size(64)));
typedef int8_t c16 __attribute__((vector_size(16)));

static inline v16 load_f(const float *p) {
    v16 w;
    memcpy(&w, p, sizeof w);
    return w;
}

static inline v16 load_q(const int8_t *p) {
#if defined(__AVX512F__)
    return (v16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#elif defined(__AVX2__)
    __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
    __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8))));
    v16 w;
    memcpy(&w, &lo, 32);
    memcpy((char *)&w + 32, &hi, 32);
    return w;
#else
    float f[16];
    for (int j = 0; j < 16; j++) f[j] = (float)p[j];
    return load_f(f);
#endif
}

static inline float hsum(v16 v) {
#if defined(__AVX512F__)
    return _mm512_reduce_add_ps((__m512)v);
#else
    float s = 0.f;
    for (int j = 0; j < 16; j++) s += v[j];
    return s;
#endif
}

static inline v16 bcast(float v) { return (v16){v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v}; }

/* One row of a WKV state update: So[j] = Si[j] * decay[j] + c * b[j] + vi * k[j] for all j (So may be Si);
 * returns sum_j So[j] * r[j]. Vectorized with 16 lanes (a plain loop with a running sum would stay scalar). */
static inline float wkv_row(float *So, const float *Si, const float *decay, float c, const float *b, float vi,
                            const float *k, const float *r, int64_t n) {
    v16 acc = bcast(0.f);
    const v16 cv = bcast(c), vv = bcast(vi);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        v16 sv = load_f(Si + j) * load_f(decay + j) + cv * load_f(b + j) + vv * load_f(k + j);
        memcpy(So + j, &sv, sizeof sv);
        acc += sv * load_f(r + j);
    }
    float out = hsum(acc);
    for (; j < n; j++) {
        const float sj = Si[j] * decay[j] + c * b[j] + vi * k[j];
        So[j] = sj;
        out += sj * r[j];
    }
    return out;
}

/* Activations applied to a matrix product's outputs as they are written. */
enum { ACT_NONE, ACT_RELU2 };

static inline void put(float *y, float v, int add, int act) {
    if (act == ACT_RELU2) v = v > 0.f ? v * v : 0.f;
    if (add) *y += v; else *y = v;
}

/* Packed panels: G panels (16 outputs each) x BB rows of x at a time, accumulators in registers, no
 * horizontal sums: each step of i loads G weight vectors and broadcasts BB inputs. */
#define PANEL_KERNEL(NAME, T, LOAD, G, BB)                                                                  \
static void NAME(const Mat *m, const T *base, int64_t pg, const float *x, int64_t xs, float *y, int64_t ys, \
                 int add, int act) {                                                                       \
    const int64_t n = m->in;                                                                               \
    v16 acc[G][BB];                                                                                        \
    for (int g = 0; g < G; g++)                                                                            \
        for (int c = 0; c < BB; c++) acc[g][c] = bcast(0.f);                                               \
    const T *w = base + pg * n * 16;                                                                       \
    for (int64_t i = 0; i < n; i++) {                                                                      \
        v16 wv[G];                                                                                         \
        for (int g = 0; g < G; g++) wv[g] = LOAD(w + (g * n + i) * 16);                                    \
        for (int c = 0; c < BB; c++) {                                                                     \
            const v16 xb = bcast(x[c * xs + i]);                                                           \
            for (int g = 0; g < G; g++) acc[g][c] += wv[g] * xb;                                           \
        }                                                                                                  \
    }                                                                                                      \
    for (int g = 0; g < G; g++) {                                                                          \
        const int64_t o0 = (pg + g) * 16;                                                                  \
        const int lanes = m->out - o0 < 16 ? (int)(m->out - o0) : 16;                                      \
        for (int c = 0; c < BB; c++)                                                                       \
            for (int l = 0; l < lanes; l++)                                                                \
                put(y + c * ys + o0 + l, acc[g][c][l] * (m->s ? m->s[o0 + l] : 1.f), add, act);            \
    }                                                                                                      \
}

#define PANEL_SET(BB, G)                                                                                   \
    PANEL_KERNEL(panel_f_##BB##_##G, float, load_f, G, BB)                                                 \
    PANEL_KERNEL(panel_q_##BB##_##G, int8_t, load_q, G, BB)
PANEL_SET(1, 4) PANEL_SET(2, 4) PANEL_SET(3, 4) PANEL_SET(4, 4)
PANEL_SET(5, 3) PANEL_SET(6, 3) PANEL_SET(7, 3) PANEL_SET(8, 3)
PANEL_SET(1, 1) PANEL_SET(2, 1) PANEL_SET(3, 1) PANEL_SET(4, 1)
PANEL_SET(5, 1) PANEL_SET(6, 1) PANEL_SET(7, 1) PANEL_SET(8, 1)

typedef void (*PanelFn)(const Mat *, const void *, int64_t, const float *, int64_t, float *, int64_t, int, int);
#define PF(BB, G) (PanelFn)panel_f_##BB##_##G
#define PQ(BB, G) (PanelFn)panel_q_##BB##_##G
static const PanelFn PANEL_F_WIDE[9] = {0, PF(1, 4), PF(2, 4), PF(3, 4), PF(4, 4), PF(5, 3), PF(6, 3), PF(7, 3), PF(8, 3)};
static const PanelFn PANEL_Q_WIDE[9] = {0, PQ(1, 4), PQ(2, 4), PQ(3, 4), PQ(4, 4), PQ(5, 3), PQ(6, 3), PQ(7, 3), PQ(8, 3)};
static const PanelFn PANEL_F_ONE[9] = {0, PF(1, 1), PF(2, 1), PF(3, 1), PF(4, 1), PF(5, 1), PF(6, 1), PF(7, 1), PF(8, 1)};
static const PanelFn PANEL_Q_ONE[9] = {0, PQ(1, 1), PQ(2, 1), PQ(3, 1), PQ(4, 1), PQ(5, 1), PQ(6, 1), PQ(7, 1), PQ(8, 1)};

/* Panels [plo, phi) of a packed matrix for all B rows of x, in chunks of up to 8 rows. */
static void matvec_packed(const Mat *m, const float *x, int64_t xs, int64_t B, float *y, int64_t ys,
                          int64_t plo, int64_t phi, int add, int act) {
    const void *base = m->q ? (const void *)m->q : (const void *)m->f;
    for (int64_t b0 = 0; b0 < B; b0 += 8) {
        const int bb = B - b0 < 8 ? (int)(B - b0) : 8;
        const int G = bb <= 4 ? 4 : 3;       /* G x bb accumulators + G weights + 1 broadcast <= 32 registers */
        PanelFn wide = (m->q ? PANEL_Q_WIDE : PANEL_F_WIDE)[bb], one = (m->q ? PANEL_Q_ONE : PANEL_F_ONE)[bb];
        int64_t p = plo;
        for (; p + G <= phi; p += G) wide(m, base, p, x + b0 * xs, xs, y + b0 * ys, ys, add, act);
        for (; p < phi; p++) one(m, base, p, x + b0 * xs, xs, y + b0 * ys, ys, add, act);
    }
}

/* Rows [lo, hi) of a matrix product spread over threads. */
static void par_matvec(const Mat *m, const float *x, int64_t x_stride, int64_t B, float *y, int64_t y_stride,
                       int tid, int nt, int add, int act) {
    int64_t lo, hi;
    split((m->out + 15) / 16, tid, nt, &lo, &hi);
    matvec_packed(m, x, x_stride, B, y, y_stride, lo, hi, add, act);
}

static void layer_norm(const float *x, const float *w, const float *b, int64_t n, float eps, float *out) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int64_t i = 0; i < n; i++) { double d = x[i] - mean; var += d * d; }
    var /= n;
    float inv = (float)(1.0 / sqrt(var + eps));
    float m = (float)mean;
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] - m) * inv * w[i] + b[i];
}

static inline float sigmoidf(float x) { return 1.f / (1.f + expf(-x)); }

/* ------------------------------------------------------------------------------------------ the step */

typedef struct {
    const Step *st;
    Barrier *bar;
    float *work;
    atomic_int *go;   /* 0 until the thread count is final; then the number of threads that run */
    int tid;
} Job;

#define L_PTR(l, k) (st->layers[(l) * P_PER_LAYER + (k)])
#define L_F(l, k) ((const float *)L_PTR(l, k))
#define L_M(l, k) ((const Mat *)L_PTR(l, k))

static void *run(void *arg) {
    Job *job = (Job *)arg;
    const Step *st = job->st;
    Barrier *bar = job->bar;
    while (atomic_load_explicit(job->go, memory_order_acquire) == 0) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    const int tid = job->tid, nt = atomic_load_explicit(job->go, memory_order_acquire);
    const int64_t B = st->B, C = st->C, H = st->H, N = st->N, F = st->F, D = st->D, Dg = st->Dg;
    /* scratch, shared by all threads (see rwkv7_decode_step for the sizes) */
    float *x = job->work;                 /* (B, C) residual stream */
    float *mix = x + B * C;               /* (7, B, C) */
    float *r = mix + 7 * B * C;           /* (B, C) */
    float *k = r + B * C;
    float *v = k + B * C;
    float *vfirst = v + B * C;
    float *kk = vfirst + B * C;
    float *dec = kk + B * C;              /* decay pre-activation, then decay */
    float *iclr = dec + B * C;
    float *vmix = iclr + B * C;
    float *gate = vmix + B * C;
    float *out = gate + B * C;
    float *hbuf = out + B * C;            /* (B, C) */
    float *low = hbuf + B * C;            /* (4, B, max(D, Dg)) */
    float *hid = low + 4 * B * (D > Dg ? D : Dg);  /* (B, F) */
    const int64_t LD = D > Dg ? D : Dg;
    int64_t lo, hi;

    split(B, tid, nt, &lo, &hi);
    const int64_t blo = lo, bhi = hi;   /* the batch rows this thread prepares in the row-wise steps */
    for (int64_t b = blo; b < bhi; b++)
        layer_norm(st->emb + st->idx[b] * C, st->ln0_w, st->ln0_b, C, st->ln_eps, x + b * C);
    barrier_wait(bar);

    for (int64_t l = 0; l < st->n_layer; l++) {
        float *att_x = st->att_x + l * B * C, *ffn_x = st->ffn_x + l * B * C;
        /* ---- time mix: token-shift mixes (row-wise) */
        {
            const float *maa = L_F(l, P_MAA);
            for (int64_t b = blo; b < bhi; b++) {
                float *h = hbuf + b * C, *prev = att_x + b * C;
                layer_norm(x + b * C, L_F(l, P_LN1_W), L_F(l, P_LN1_B), C, st->ln_eps, h);
                for (int t = 0; t < 7; t++) {
                    float *mt = mix + (t * B + b) * C;
                    const float *mw = maa + t * C;
                    for (int64_t j = 0; j < C; j++) mt[j] = h[j] + (prev[j] - h[j]) * mw[j];
                }
                memcpy(prev, h, C * sizeof(float));
            }
        }
        barrier_wait(bar);
        /* r, k, v and the first low-rank factors */
        par_matvec(L_M(l, P_R), mix + 0 * B * C, C, B, r, C, tid, nt, 0, ACT_NONE);
        par_matvec(L_M(l, P_K), mix + 1 * B * C, C, B, k, C, tid, nt, 0, ACT_NONE);
        par_matvec(L_M(l, P_V), mix + 2 * B * C, C, B, v, C, tid, nt, 0, ACT_NONE);
        par_matvec(L_M(l, P_W1), mix + 3 * B * C, C, B, low + 0 * B * LD, LD, tid, nt, 0, ACT_NONE);
        par_matvec(L_M(l, P_A1), mix + 4 * B * C, C, B, low + 1 * B * LD, LD, tid, nt, 0, ACT_NONE);
        par_matvec(L_M(l, P_V1), mix + 5 * B * C, C, B, low + 2 * B * LD, LD, tid, nt, 0, ACT_NONE);
        par_matvec(L_M(l, P_G1), mix + 6 * B * C, C, B, low + 3 * B * LD, LD, tid, nt, 0, ACT_NONE);
        barrier_wait(bar);
        {
            for (int64_t b = blo; b < bhi; b++) {
                float *lw = low + b * LD, *lg = low + (3 * B + b) * LD;
                for (int64_t j = 0; j < L_M(l, P_W1)->out; j++) lw[j] = tanhf(lw[j]);
                for (int64_t j = 0; j < Dg; j++) lg[j] = sigmoidf(lg[j]);
            }
        }
        barrier_wait(bar);
        par_matvec(L_M(l, P_W2), low + 0 * B * LD, LD, B, dec, C, tid, nt, 0, ACT_NONE);
        par_matvec(L_M(l, P_A2), low + 1 * B * LD, LD, B, iclr, C, tid, nt, 0, ACT_NONE);
        par_matvec(L_M(l, P_V2), low + 2 * B * LD, LD, B, vmix, C, tid, nt, 0, ACT_NONE);
        par_matvec(L_M(l, P_G2), low + 3 * B * LD, LD, B, gate, C, tid, nt, 0, ACT_NONE);
        barrier_wait(bar);
        /* per head: decay, iclr, value residual, kk, k; then the WKV update, group norm and bonus */
        split(B * H, tid, nt, &lo, &hi);
        for (int64_t u = lo; u < hi; u++) {
            const int64_t b = u / H, h = u % H, o = b * C + h * N;
            const float *w0 = L_F(l, P_W0) + h * N, *a0 = L_F(l, P_A0) + h * N, *v0 = L_F(l, P_V0) + h * N;
            const float *k_k = L_F(l, P_KK) + h * N, *k_a = L_F(l, P_KA) + h * N, *r_k = L_F(l, P_RK) + h * N;
            float *dh = dec + o, *ih = iclr + o, *vh = v + o, *kh = k + o, *kkh = kk + o, *rh = r + o;
            double nrm = 0.0;
            for (int64_t j = 0; j < N; j++) {
                dh[j] = expf(-st->decay_scale * sigmoidf(dh[j] + w0[j]));
                ih[j] = sigmoidf(ih[j] + a0[j]);
                if (l == 0) vfirst[o + j] = vh[j];
                else { float s = sigmoidf(vmix[o + j] + v0[j]); vh[j] = vh[j] + (vfirst[o + j] - vh[j]) * s; }
                kkh[j] = kh[j] * k_k[j];
                nrm += (double)kkh[j] * kkh[j];
            }
            float inv = (float)(1.0 / fmax(sqrt(nrm), 1e-12));
            for (int64_t j = 0; j < N; j++) {
                kkh[j] *= inv;
                kh[j] = kh[j] * ((1.f - k_a[j]) + ih[j] * k_a[j]);
            }
            float *S = st->wkv + ((l * B + b) * H + h) * N * N;
            float *y = out + o;
            float bkk[256];   /* kk * iclr; N <= 256 is checked by the caller */
            for (int64_t j = 0; j < N; j++) bkk[j] = kkh[j] * ih[j];
            for (int64_t i = 0; i < N; i++) {
                float *Si = S + i * N;
                const float sa = dot_f32(Si, kkh, N);
                y[i] = wkv_row(Si, Si, dh, -sa, bkk, vh[i], kh, rh, N);
            }
            double mean = 0.0, var = 0.0;
            for (int64_t i = 0; i < N; i++) mean += y[i];
            mean /= N;
            for (int64_t i = 0; i < N; i++) { double d = y[i] - mean; var += d * d; }
            var /= N;
            const float ginv = (float)(1.0 / sqrt(var + st->lnx_eps)), gm = (float)mean;
            const float *gw = L_F(l, P_LNX_W) + h * N, *gb = L_F(l, P_LNX_B) + h * N;
            float bonus = 0.f;
            for (int64_t j = 0; j < N; j++) bonus += rh[j] * kh[j] * r_k[j];
            for (int64_t i = 0; i < N; i++)
                y[i] = ((y[i] - gm) * ginv * gw[i] + gb[i] + bonus * vh[i]) * gate[o + i];
        }
        barrier_wait(bar);
        par_matvec(L_M(l, P_O), out, C, B, x, C, tid, nt, 1, ACT_NONE);
        barrier_wait(bar);
        /* ---- channel mix */
        {
            const float *xk = L_F(l, P_FFN_XK);
            for (int64_t b = blo; b < bhi; b++) {
                float *h = hbuf + b * C, *prev = ffn_x + b * C, *kf = mix + b * C;
                layer_norm(x + b * C, L_F(l, P_LN2_W), L_F(l, P_LN2_B), C, st->ln_eps, h);
                for (int64_t j = 0; j < C; j++) kf[j] = h[j] + (prev[j] - h[j]) * xk[j];
                memcpy(prev, h, C * sizeof(float));
            }
        }
        barrier_wait(bar);
        par_matvec(L_M(l, P_FK), mix, C, B, hid, F, tid, nt, 0, ACT_RELU2);
        barrier_wait(bar);
        par_matvec(L_M(l, P_FV), hid, F, B, x, C, tid, nt, 1, ACT_NONE);
        barrier_wait(bar);
    }
    {
        for (int64_t b = blo; b < bhi; b++)
            layer_norm(x + b * C, st->lnout_w, st->lnout_b, C, st->ln_eps, hbuf + b * C);
    }
    barrier_wait(bar);
    par_matvec(st->head, hbuf, C, B, st->logits, st->V, tid, nt, 0, ACT_NONE);
    return NULL;
}

/* Floats of scratch one step needs (the layout is at the top of run()). */
static int64_t work_floats(const Step *st) {
    const int64_t B = st->B, C = st->C, LD = st->D > st->Dg ? st->D : st->Dg;
    return 19 * B * C + 4 * B * LD + B * st->F;
}

/* Returns 0 on success, 1 on a bad argument, 2 when memory or threads could not be had. */
int rwkv7_decode_step(const Step *st) {
    if (st->N > 256 || st->N < 1 || st->B < 1 || st->n_threads < 1) return 1;
    float *work = (float *)malloc(sizeof(float) * work_floats(st));
    if (!work) return 2;
    int nt = st->n_threads > 64 ? 64 : st->n_threads;
    Barrier bar;
    atomic_init(&bar.count, 0);
    atomic_init(&bar.gen, 0);
    atomic_int go;
    atomic_init(&go, 0);
    Job jobs[64];
    pthread_t threads[64];
    int started = 1;
    for (int t = 0; t < nt; t++) { jobs[t].st = st; jobs[t].bar = &bar; jobs[t].work = work; jobs[t].go = &go; jobs[t].tid = t; }
    for (int t = 1; t < nt; t++) {
        if (pthread_create(&threads[t], NULL, run, &jobs[t]) != 0) break;   /* run with the threads we got */
        started++;
    }
    bar.n = started;
    atomic_store_explicit(&go, started, memory_order_release);
    run(&jobs[0]);
    for (int t = 1; t < started; t++) pthread_join(threads[t], NULL);
    int rc = 0;
    free(work);
    return rc;
}

/* ------------------------------------------------------------------------------------------ WKV over a prompt */

/* The recurrence of midirwkv.model.wkv (the spec, wkv_ref) over T steps, for inference:
 *     S_t = S_{t-1} diag(exp(w_t)) + (S_{t-1} a_t) b_t^T + v_t k_t^T,   y_t = S_t r_t
 * Inputs (B, T, H, N) contiguous; S (B, H, N, N) [value, key], updated in place; y (B, T, H, N).
 * Heads are independent, so threads take whole (batch, head) units and never wait for each other: a
 * sequential pass costs ~4 N^2 flops per token and head, far less than the chunked form's matrix products.
 * Run by rwkv7_wkv below (forward without checkpoints for inference). */
typedef struct {
    int64_t B, T, H, N;
    const float *r, *w, *k, *v, *a, *b;
    float *S, *y;
    int n_threads;
} Wkv;

/* One step of the recurrence from Sin to Sout (row i of Sout depends only on row i of Sin, so Sout may be
 * Sin); y = S_t r when y is not NULL. */
static inline void wkv_one_step(float *Sout, const float *Sin, int64_t N, const float *ew,
                                const float *r, const float *k, const float *v, const float *a, const float *bb,
                                float *y) {
    for (int64_t i = 0; i < N; i++) {
        const float sa = dot_f32(Sin + i * N, a, N);
        const float acc = wkv_row(Sout + i * N, Sin + i * N, ew, sa, bb, v[i], k, r, N);
        if (y) y[i] = acc;
    }
}

/* ------------------------------------------------------------------------------------------ WKV for training */

/* Forward, keeping the state before every K-th step in ckpt (B, H, ceil(T/K), N, N) unless ckpt is NULL;
 * backward walks the steps in reverse, recomputing the K states of one segment at a time from its checkpoint:
 *     dS_t += dy_t r_t^T;   dr_t = S_t^T dy_t;   dv_t = dS_t k_t;   dk_t = dS_t^T v_t
 *     dw_t = exp(w_t) * diag(S_{t-1}^T dS_t);   da_t = S_{t-1}^T (dS_t b_t);   db_t = dS_t^T (S_{t-1} a_t)
 *     dS_{t-1} = dS_t diag(exp(w_t)) + (dS_t b_t) a_t^T
 * Gradients are written (not accumulated) to (B, T, H, N) buffers and dS0 (B, H, N, N). */
typedef struct {
    Wkv f;                 /* forward arguments (S: the start state, overwritten with the final state) */
    int64_t K;             /* steps per checkpoint segment */
    float *ckpt;           /* (B, H, nseg, N, N); NULL: forward only, keep nothing (inference) */
    const float *dy;       /* (B, T, H, N) */
    const float *dST;      /* (B, H, N, N) or NULL */
    float *dr, *dw, *dk, *dv, *da, *db, *dS0;
    int backward;
} WkvTrain;

typedef struct {
    const WkvTrain *p;
    int tid, nt;
    int rc;
} WkvTrainJob;

static void *wkv_train_run(void *arg) {
    WkvTrainJob *job = (WkvTrainJob *)arg;
    const WkvTrain *p = job->p;
    const int64_t T = p->f.T, H = p->f.H, N = p->f.N, K = p->K, NN = N * N;
    const int64_t nseg = (T + K - 1) / K;
    int64_t lo, hi;
    split(p->f.B * H, job->tid, job->nt, &lo, &hi);
    float ew[256], dSb[256], sa[256];
    float *buf = NULL, *dS = NULL;
    if (p->backward) {
        buf = (float *)malloc(sizeof(float) * (K + 1) * NN);
        dS = (float *)malloc(sizeof(float) * NN);
        if (!buf || !dS) { free(buf); free(dS); job->rc = 2; return NULL; }
    }
    for (int64_t u = lo; u < hi; u++) {
        const int64_t b = u / H, h = u % H;
        float *S = p->f.S + u * NN, *ck = p->ckpt ? p->ckpt + u * nseg * NN : NULL;
#define OFF(t) ((((b) * T + (t)) * H + h) * N)
        if (!p->backward) {
            for (int64_t t = 0; t < T; t++) {
                if (ck && t % K == 0) memcpy(ck + (t / K) * NN, S, sizeof(float) * NN);
                const int64_t o = OFF(t);
                for (int64_t j = 0; j < N; j++) ew[j] = expf(p->f.w[o + j]);
                wkv_one_step(S, S, N, ew, p->f.r + o, p->f.k + o, p->f.v + o, p->f.a + o, p->f.b + o, p->f.y + o);
            }
            continue;
        }
        if (p->dST) memcpy(dS, p->dST + u * NN, sizeof(float) * NN);
        else memset(dS, 0, sizeof(float) * NN);
        for (int64_t s = nseg - 1; s >= 0; s--) {
            const int64_t t0 = s * K, t1 = t0 + K < T ? t0 + K : T;
            memcpy(buf, ck + s * NN, sizeof(float) * NN);          /* buf[0] = S_{t0-1}; buf[i+1] = S_{t0+i} */
            for (int64_t t = t0; t < t1; t++) {
                const int64_t o = OFF(t);
                for (int64_t j = 0; j < N; j++) ew[j] = expf(p->f.w[o + j]);
                wkv_one_step(buf + (t - t0 + 1) * NN, buf + (t - t0) * NN, N, ew, p->f.r + o, p->f.k + o,
                             p->f.v + o, p->f.a + o, p->f.b + o, NULL);
            }
            for (int64_t t = t1 - 1; t >= t0; t--) {
                const int64_t o = OFF(t);
                const float *St = buf + (t - t0 + 1) * NN, *Sp = buf + (t - t0) * NN;
                const float *r = p->f.r + o, *w = p->f.w + o, *k = p->f.k + o, *v = p->f.v + o;
                const float *a = p->f.a + o, *bb = p->f.b + o, *dy = p->dy + o;
                float *dr = p->dr + o, *dw = p->dw + o, *dk = p->dk + o, *dv = p->dv + o;
                float *da = p->da + o, *db = p->db + o;
                for (int64_t j = 0; j < N; j++) { ew[j] = expf(w[j]); dr[j] = 0.f; dw[j] = 0.f; dk[j] = 0.f;
                                                  da[j] = 0.f; db[j] = 0.f; }
                for (int64_t i = 0; i < N; i++) {
                    float *dSi = dS + i * N;
                    const float *Sti = St + i * N, *Spi = Sp + i * N;
                    const float dyi = dy[i], vi = v[i];
                    /* 16 lanes at a time: the three running sums would keep a plain loop scalar */
                    v16 dvv = bcast(0.f), sbv = bcast(0.f), sav = bcast(0.f);
                    const v16 dyv = bcast(dyi), viv = bcast(vi);
                    int64_t j = 0;
                    for (; j + 16 <= N; j += 16) {
                        const v16 ds = load_f(dSi + j) + dyv * load_f(r + j), sp = load_f(Spi + j);
                        const v16 drn = load_f(dr + j) + load_f(Sti + j) * dyv;
                        const v16 dkn = load_f(dk + j) + ds * viv, dwn = load_f(dw + j) + sp * ds;
                        memcpy(dSi + j, &ds, sizeof ds);
                        memcpy(dr + j, &drn, sizeof drn);
                        memcpy(dk + j, &dkn, sizeof dkn);
                        memcpy(dw + j, &dwn, sizeof dwn);
                        dvv += ds * load_f(k + j);
                        sbv += ds * load_f(bb + j);
                        sav += sp * load_f(a + j);
                    }
                    float dvi = hsum(dvv), sbi = hsum(sbv), sai = hsum(sav);
                    for (; j < N; j++) {
                        dSi[j] += dyi * r[j];
                        dr[j] += Sti[j] * dyi;
                        dvi += dSi[j] * k[j];
                        dk[j] += dSi[j] * vi;
                        sbi += dSi[j] * bb[j];
                        sai += Spi[j] * a[j];
                        dw[j] += Spi[j] * dSi[j];
                    }
                    dv[i] = dvi;
                    dSb[i] = sbi;
                    sa[i] = sai;
                }
                for (int64_t i = 0; i < N; i++) {
                    float *dSi = dS + i * N;
                    const float *Spi = Sp + i * N;
                    const float sbi = dSb[i], sai = sa[i];
                    for (int64_t j = 0; j < N; j++) {
                        da[j] += Spi[j] * sbi;
                        db[j] += sai * dSi[j];
                        dSi[j] = dSi[j] * ew[j] + sbi * a[j];
                    }
                }
                for (int64_t j = 0; j < N; j++) dw[j] *= ew[j];
            }
        }
        memcpy(p->dS0 + u * NN, dS, sizeof(float) * NN);
#undef OFF
    }
    free(buf);
    free(dS);
    return NULL;
}

/* Forward (backward = 0) or backward (1) of the WKV. Returns 0, 1 (bad argument) or 2 (memory). */
int rwkv7_wkv(const WkvTrain *p) {
    if (p->f.N > 256 || p->f.N < 1 || p->f.B < 1 || p->f.T < 1 || p->K < 1 || p->f.n_threads < 1) return 1;
    if (p->backward && !p->ckpt) return 1;
    int nt = p->f.n_threads > 64 ? 64 : p->f.n_threads;
    if (nt > p->f.B * p->f.H) nt = (int)(p->f.B * p->f.H);
    WkvTrainJob jobs[64];
    pthread_t threads[64];
    int started = 1;
    for (int t = 0; t < nt; t++) { jobs[t].p = p; jobs[t].tid = t; jobs[t].nt = nt; jobs[t].rc = 0; }
    for (int t = 1; t < nt; t++) {
        if (pthread_create(&threads[t], NULL, wkv_train_run, &jobs[t]) != 0) break;
        started++;
    }
    for (int t = started; t < nt; t++) wkv_train_run(&jobs[t]);
    wkv_train_run(&jobs[0]);
    for (int t = 1; t < started; t++) pthread_join(threads[t], NULL);
    for (int t = 0; t < nt; t++) if (jobs[t].rc) return jobs[t].rc;
    return 0;
}
