/* algorithms._kernels: the update rules as single-pass loops over flat float32 vectors.
 *
 * Note [one pass, out of place]: the parameter server applies an update out of place: it reads
 * the published buffer's weights and state and the gradient slot, and writes the unpublished
 * buffer. Each kernel here does that in one loop: every input vector is read once, every output
 * vector written once, and the gradient checked for NaN/Inf as it is read (the check costs a
 * compare and an OR per 8 floats, no pass of its own). Outputs may be their own inputs (in
 * place). When no output is an input, the outputs are written with non-temporal stores: a plain
 * store first reads the output's line from memory (write-allocate), 4 bytes per float that the
 * floor does not count and that the next update would not use.
 *
 * Note [two paths, one result]: _kernels_body.h holds each loop once; it is compiled for AVX2
 * with FMA (8 floats a step, used when the CPU has them) and in plain C (one float a step; the
 * head and tail of every vector, and every CPU without AVX2). Both do the same IEEE operations
 * in the same order (FMA is fmaf in C; the file is compiled with -ffp-contract=off so that the
 * compiler fuses nothing else), so they agree bit for bit and the result does not depend on
 * where a vector starts or ends. `use_simd(False)` forces the plain path (tests compare them).
 *
 * Every kernel releases the GIL while it runs, and runs on the calling thread only: the PS is
 * one thread per job. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
#endif

/* Outputs of at least this many bytes are written with non-temporal stores (Note [one pass, out
 * of place]); a smaller update stays in the cache, where the next reader finds it. */
#ifndef STREAM_MIN_BYTES
#define STREAM_MIN_BYTES (1 << 20)
#endif

/* The most vectors a rule's call takes */
#define RULE_VECTORS 9

typedef struct { const float *w, *g; float *wo; float lr, wd; int decay; } SgdArgs;
typedef struct {
    const float *w, *g, *b; float *wo, *bo;
    float lr, wd, momentum, keep; int decay, first, nesterov;
} MsgdArgs;
typedef struct {
    const float *w, *g, *m, *v, *x; float *wo, *mo, *vo, *xo;
    float wd, shrink, c1, beta2, one_minus_beta2, bc2_sqrt, eps, step_size;
    int decay, decoupled, small1, amsgrad;
} AdamArgs;
typedef struct { const float *w, *g, *s; float *wo, *so; float wd, eps, clr; int decay; } AdagradArgs;
typedef struct {
    const float *w, *g, *v, *u; float *wo, *vo, *uo;
    float wd, rho, one_minus_rho, eps, lr; int decay;
} AdadeltaArgs;
typedef struct {
    const float *w, *g, *v, *b, *m; float *wo, *vo, *bo, *mo;
    float wd, alpha, one_minus_alpha, eps, c_alpha, momentum, lr;
    int decay, centered, small_alpha, with_momentum;
} RmspropArgs;
typedef struct {
    const float *w, *g, *m, *u; float *wo, *mo, *uo;
    float wd, c1, beta2, eps, clr; int decay, small1;
} AdamaxArgs;
typedef struct { const float **g; float *out; float scale; int k; } MeanArgs;

/* ---- the plain path ------------------------------------------------------------------------ */
static inline int not_finite(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (u & 0x7f800000u) == 0x7f800000u;           /* exponent all ones: NaN or +-Inf */
}

static inline float max_nan(float a, float b)       /* as the AVX2 path's MAX, bit for bit */
{
    return a != a ? a : (a > b ? a : b);
}

#define V float
#define W 1
#define TARGET
#define NAME(x) x##_plain
#define LD(p) (*(p))
#define ST(p, x) (*(p) = (x))
#define SET(c) ((float)(c))
#define ADD(a, b) ((a) + (b))
#define SUB(a, b) ((a) - (b))
#define MUL(a, b) ((a) * (b))
#define DIV(a, b) ((a) / (b))
#define SQRT(a) sqrtf(a)
#define ABS(a) fabsf(a)
#define FMA(a, b, c) fmaf((a), (b), (c))
#define MAX(a, b) max_nan((a), (b))
#define BAD_T int
#define BAD_INIT 0
#define BAD_ADD(acc, g) ((acc) |= not_finite(g))
#define BAD_ANY(acc) (acc)
#include "_kernels_body.h"
#undef V
#undef W
#undef TARGET
#undef NAME
#undef LD
#undef ST
#undef SET
#undef ADD
#undef SUB
#undef MUL
#undef DIV
#undef SQRT
#undef ABS
#undef FMA
#undef MAX
#undef BAD_T
#undef BAD_INIT
#undef BAD_ADD
#undef BAD_ANY

/* ---- the AVX2 path ------------------------------------------------------------------------- */
#ifdef HAVE_AVX2_PATH
#define V __m256
#define W 8
#define TARGET __attribute__((target("avx2,fma")))
#define NAME(x) x##_avx2
#define LD(p) _mm256_loadu_ps(p)
#define ST(p, x) (nt ? _mm256_stream_ps((p), (x)) : _mm256_storeu_ps((p), (x)))
#define SET(c) _mm256_set1_ps((float)(c))
#define ADD(a, b) _mm256_add_ps((a), (b))
#define SUB(a, b) _mm256_sub_ps((a), (b))
#define MUL(a, b) _mm256_mul_ps((a), (b))
#define DIV(a, b) _mm256_div_ps((a), (b))
#define SQRT(a) _mm256_sqrt_ps(a)
#define ABS(a) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), (a))
#define FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
/* max_ps(a, b) is b when either is NaN; then a where a is NaN */
#define MAX(a, b) _mm256_blendv_ps(_mm256_max_ps((a), (b)), (a), _mm256_cmp_ps((a), (a), _CMP_UNORD_Q))
#define BAD_T __m256
#define BAD_INIT _mm256_setzero_ps()
/* |g| >= Inf, or unordered (NaN): all ones in that lane */
#define BAD_ADD(acc, g) ((acc) = _mm256_or_ps((acc), _mm256_cmp_ps(ABS(g), \
                                  _mm256_set1_ps(INFINITY), _CMP_NLT_UQ)))
#define BAD_ANY(acc) (_mm256_movemask_ps(acc) != 0)
#include "_kernels_body.h"
#endif

typedef int (*Loop)(const void *args, Py_ssize_t i, Py_ssize_t end, int nt);

static int simd = -1;                /* -1: not decided yet; 0: the plain path; 1: AVX2 */

static int have_avx2(void)
{
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* Run a kernel's loop over n elements: the plain path up to the first output's 32-byte
 * boundary, AVX2 over the whole 8-float steps after it (streaming its stores when `stream` and
 * every output is 32-byte aligned there), the plain path over the tail. Nonzero: a gradient
 * element was not finite. */
static int run(Loop plain, Loop avx2, const void *args, float *const *outs, int n_outs,
               Py_ssize_t n, int stream)
{
    if (!simd || !avx2)
        return plain(args, 0, n, 0);
#ifdef HAVE_AVX2_PATH
    Py_ssize_t head = (Py_ssize_t)(((32 - ((uintptr_t)outs[0] & 31)) & 31) / sizeof(float));
    if (head > n)
        head = n;
    Py_ssize_t body = head + (n - head) / 8 * 8;
    int nt = stream && (Py_ssize_t)(n * sizeof(float)) >= STREAM_MIN_BYTES;
    for (int k = 0; k < n_outs && nt; k++)
        nt = ((uintptr_t)(outs[k] + head) & 31) == 0;
    int bad = plain(args, 0, head, 0);
    bad |= avx2(args, head, body, nt);
    if (nt)
        _mm_sfence();       /* streamed stores are weakly ordered: without the fence the PS's
                               publish (a plain store) could be seen before the weights */
    bad |= plain(args, body, n, 0);
    return bad;
#else
    return 0;
#endif
}

#ifdef HAVE_AVX2_PATH
#define AVX2(x) ((Loop)(x##_avx2))
#else
#define AVX2(x) ((Loop)NULL)
#endif
#define PLAIN(x) ((Loop)(x##_plain))

/* ---- arguments ----------------------------------------------------------------------------- */

/* The vectors of one call: each a C-contiguous float32 buffer of one length; outputs writable.
 * An output may be its own input (in place) and must not overlap anything else. */
typedef struct {
    const char *kernel;
    Py_buffer *views;                /* room for `cap` */
    const char **names;
    int cap, n_views;
    Py_ssize_t n;                    /* elements; -1 until the first vector */
} Vectors;

/* `vs`: the Vectors of a rule's call, with room on the stack */
#define RULE_VECTORS_OF(vs, name) \
    Py_buffer vs##_views[RULE_VECTORS]; \
    const char *vs##_names[RULE_VECTORS]; \
    Vectors vs = {.kernel = (name), .views = vs##_views, .names = vs##_names, \
                  .cap = RULE_VECTORS, .n = -1}

static void release(Vectors *vs)
{
    for (int k = 0; k < vs->n_views; k++)
        PyBuffer_Release(&vs->views[k]);
    vs->n_views = 0;
}

/* The float32 data of `obj`, or NULL with an exception set. */
static float *vector(Vectors *vs, PyObject *obj, const char *name, int writable)
{
    if (vs->n_views == vs->cap) {
        PyErr_Format(PyExc_ValueError, "%s: more than %d vectors", vs->kernel, vs->cap);
        return NULL;
    }
    Py_buffer *view = &vs->views[vs->n_views];
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: %s must be a %scontiguous float32 array, got %R",
                     vs->kernel, name, writable ? "writable " : "", (PyObject *)Py_TYPE(obj));
        return NULL;
    }
    vs->names[vs->n_views++] = name;
    const char *f = view->format ? view->format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@')
        f++;
    if (strcmp(f, "f") != 0 || view->itemsize != 4 || view->ndim > 1) {
        PyErr_Format(PyExc_ValueError, "%s: %s must be a flat float32 vector, got format '%s' "
                     "with %d dimensions", vs->kernel, name, view->format ? view->format : "B",
                     view->ndim);
        return NULL;
    }
    Py_ssize_t n = view->len / 4;
    if (vs->n < 0)
        vs->n = n;
    else if (n != vs->n) {
        PyErr_Format(PyExc_ValueError, "%s: %s has %zd elements, %s has %zd", vs->kernel, name, n,
                     vs->names[0], vs->n);
        return NULL;
    }
    return (float *)view->buf;
}

static int overlap(const float *a, const float *b, Py_ssize_t n)
{
    return a && b && a < b + n && b < a + n;
}

/* Outputs outs[k] (paired with ins[k], which may be NULL) against every input, every other
 * output and the gradient g (the one input without an output: only read). Sets *stream to
 * whether no output is its own input. 0 with an exception set on a bad overlap. */
static int check_aliasing(const Vectors *vs, const float *const *ins, float *const *outs,
                          int n_pairs, const float *g, int *stream)
{
    Py_ssize_t n = vs->n;
    *stream = 1;
    for (int k = 0; k < n_pairs; k++) {
        if (!outs[k])
            continue;
        if (outs[k] == ins[k])
            *stream = 0;
        for (int j = 0; j < n_pairs; j++) {
            if ((j != k && overlap(outs[k], outs[j], n)) ||
                (outs[k] != ins[j] && overlap(outs[k], ins[j], n)) ||
                (outs[k] == ins[j] && j != k)) {
                PyErr_Format(PyExc_ValueError, "%s: an output overlaps another vector (outputs "
                             "may only be their own input)", vs->kernel);
                return 0;
            }
        }
        if (overlap(outs[k], g, n)) {
            PyErr_Format(PyExc_ValueError, "%s: an output overlaps the gradient, which is only "
                         "read", vs->kernel);
            return 0;
        }
    }
    return 1;
}

static PyObject *finish(Vectors *vs, int bad)
{
    release(vs);
    return PyBool_FromLong(!bad);
}

/* 1 - beta as torch.lerp's weight: float32; "small" (< 0.5) picks ATen's formula */
static void lerp_weight(double one_minus_beta, float *c, int *small)
{
    float wgt = (float)one_minus_beta;
    *small = fabsf(wgt) < 0.5f;
    *c = *small ? wgt : wgt - 1.0f;
}

/* One vector of a rule's call: its keyword, where the Args struct holds it, its role, and for
 * an output the input it replaces (Note [one pass, out of place]). */
enum { INPUT, GRADIENT, OUTPUT };         /* GRADIENT: the input without an output, only read */
typedef struct { const char *name; size_t at; int role; size_t in; } Slot;
#define IN(T, name, f) {(name), offsetof(T, f), INPUT, 0}
#define GRAD(T, name, f) {(name), offsetof(T, f), GRADIENT, 0}
#define OUT(T, name, f, from) {(name), offsetof(T, f), OUTPUT, offsetof(T, from)}
#define FIELD(a, at) (*(float **)((char *)(a) + (at)))

/* A vector argument given: not left out, not None */
static int given(PyObject *obj)
{
    return obj != NULL && obj != Py_None;
}

/* A rule's call after its scalars are in `a`: take the vectors `objs` (one per slot; NULL or
 * None: an optional vector not given) into `a`, check the outputs against the other vectors
 * (check_aliasing), run the loops with the GIL released, release the vectors. True when the
 * gradient was finite; NULL with an exception set on a bad vector. */
static PyObject *rule(const char *kernel, const Slot *slots, int n_slots, PyObject *const *objs,
                      void *a, Loop plain, Loop avx2)
{
    RULE_VECTORS_OF(vs, kernel);
    const float *ins[RULE_VECTORS], *g = NULL;
    float *outs[RULE_VECTORS], *live[RULE_VECTORS];
    int n_pairs = 0, n_live = 0, stream, bad;
    for (int k = 0; k < n_slots; k++) {
        float *p = NULL;
        if (given(objs[k]) && !(p = vector(&vs, objs[k], slots[k].name, slots[k].role == OUTPUT))) {
            release(&vs);
            return NULL;
        }
        FIELD(a, slots[k].at) = p;
    }
    for (int k = 0; k < n_slots; k++) {
        if (slots[k].role == OUTPUT) {
            ins[n_pairs] = FIELD(a, slots[k].in);
            outs[n_pairs++] = FIELD(a, slots[k].at);
        } else if (slots[k].role == GRADIENT)
            g = FIELD(a, slots[k].at);
    }
    if (!check_aliasing(&vs, ins, outs, n_pairs, g, &stream)) {
        release(&vs);
        return NULL;
    }
    for (int k = 0; k < n_pairs; k++)
        if (outs[k])
            live[n_live++] = outs[k];
    Py_BEGIN_ALLOW_THREADS
    bad = run(plain, avx2, a, live, n_live, vs.n, stream);
    Py_END_ALLOW_THREADS
    return finish(&vs, bad);
}
#define RULE(kernel, slots, objs, a, loop) \
    rule((kernel), (slots), (int)(sizeof(slots) / sizeof(*(slots))), (objs), &(a), PLAIN(loop), \
         AVX2(loop))

/* ---- the kernels --------------------------------------------------------------------------- */

PyDoc_STRVAR(sgd_doc,
"sgd(w, g, w_out, *, lr, weight_decay) -> bool\n\n"
"w_out = w - lr * (g + weight_decay * w); True when every element of g is finite.");

static const Slot sgd_slots[] = {IN(SgdArgs, "w", w), GRAD(SgdArgs, "g", g),
                                 OUT(SgdArgs, "w_out", wo, w)};

static PyObject *k_sgd(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kws[] = {"w", "g", "w_out", "lr", "weight_decay", NULL};
    PyObject *o[3];
    double lr, wd;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO$dd", kws, &o[0], &o[1], &o[2], &lr, &wd))
        return NULL;
    SgdArgs a = {.lr = (float)lr, .wd = (float)wd, .decay = wd != 0};
    return RULE("sgd", sgd_slots, o, a, sgd_loop);
}

PyDoc_STRVAR(add_doc,
"add(w, d, w_out) -> bool\n\n"
"w_out = w + d (a learner's delta); True when every element of d is finite.");

static const Slot add_slots[] = {IN(SgdArgs, "w", w), GRAD(SgdArgs, "d", g),
                                 OUT(SgdArgs, "w_out", wo, w)};

static PyObject *k_add(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kws[] = {"w", "d", "w_out", NULL};
    PyObject *o[3];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO", kws, &o[0], &o[1], &o[2]))
        return NULL;
    SgdArgs a = {.lr = -1.0f, .wd = 0.0f, .decay = 0};     /* w - (-1) * d, rounded once: w + d */
    return RULE("add", add_slots, o, a, sgd_loop);
}

PyDoc_STRVAR(msgd_doc,
"msgd(w, g, b, w_out, b_out, *, first, lr, momentum, dampening, nesterov, weight_decay) -> bool\n\n"
"One step of SGD with momentum (torch.optim.SGD); `first`: b is not read (b_1 = g_1).");

static const Slot msgd_slots[] = {
    IN(MsgdArgs, "w", w), GRAD(MsgdArgs, "g", g), IN(MsgdArgs, "b", b),
    OUT(MsgdArgs, "w_out", wo, w), OUT(MsgdArgs, "b_out", bo, b)};

static PyObject *k_msgd(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kws[] = {"w", "g", "b", "w_out", "b_out", "first", "lr", "momentum", "dampening",
                          "nesterov", "weight_decay", NULL};
    PyObject *o[5];
    int first, nesterov;
    double lr, mom, damp, wd;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO$pdddpd", kws, &o[0], &o[1], &o[2], &o[3],
                                     &o[4], &first, &lr, &mom, &damp, &nesterov, &wd))
        return NULL;
    MsgdArgs a = {.lr = (float)lr, .wd = (float)wd, .momentum = (float)mom,
                  .keep = (float)(1.0 - damp), .decay = wd != 0, .first = first,
                  .nesterov = nesterov};
    return RULE("msgd", msgd_slots, o, a, msgd_loop);
}

PyDoc_STRVAR(adam_doc,
"adam(w, g, m, v, w_out, m_out, v_out, vmax=None, vmax_out=None, *, step, lr, beta1, beta2,\n"
"     eps, weight_decay, decoupled_weight_decay) -> bool\n\n"
"One Adam step (torch.optim.Adam / AdamW); AMSGrad when vmax and vmax_out are given.");

static const Slot adam_slots[] = {
    IN(AdamArgs, "w", w), GRAD(AdamArgs, "g", g), IN(AdamArgs, "m", m), IN(AdamArgs, "v", v),
    OUT(AdamArgs, "w_out", wo, w), OUT(AdamArgs, "m_out", mo, m), OUT(AdamArgs, "v_out", vo, v),
    IN(AdamArgs, "vmax", x), OUT(AdamArgs, "vmax_out", xo, x)};

static PyObject *k_adam(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kws[] = {"w", "g", "m", "v", "w_out", "m_out", "v_out", "vmax", "vmax_out",
                          "step", "lr", "beta1", "beta2", "eps", "weight_decay",
                          "decoupled_weight_decay", NULL};
    PyObject *o[9] = {NULL};
    double step, lr, beta1, beta2, eps, wd;
    int decoupled;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOO|OO$ddddddp", kws, &o[0], &o[1], &o[2],
                                     &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &step, &lr, &beta1,
                                     &beta2, &eps, &wd, &decoupled))
        return NULL;
    if (given(o[7]) != given(o[8])) {
        PyErr_SetString(PyExc_ValueError, "adam: AMSGrad needs both vmax and vmax_out");
        return NULL;
    }
    /* torch.optim's scalars, computed as it computes them: in double, then float32 */
    double bc1 = 1.0 - pow(beta1, step), bc2 = 1.0 - pow(beta2, step);
    AdamArgs a = {.wd = (float)wd, .shrink = (float)(1.0 - lr * wd), .beta2 = (float)beta2,
                  .one_minus_beta2 = (float)(1.0 - beta2), .bc2_sqrt = (float)sqrt(bc2),
                  .eps = (float)eps, .step_size = (float)(lr / bc1), .decay = wd != 0,
                  .decoupled = decoupled, .amsgrad = given(o[7])};
    lerp_weight(1.0 - beta1, &a.c1, &a.small1);
    return RULE("adam", adam_slots, o, a, adam_loop);
}

PyDoc_STRVAR(adagrad_doc,
"adagrad(w, g, s, w_out, s_out, *, step, lr, lr_decay, eps, weight_decay) -> bool\n\n"
"One Adagrad step (torch.optim.Adagrad).");

static const Slot adagrad_slots[] = {
    IN(AdagradArgs, "w", w), GRAD(AdagradArgs, "g", g), IN(AdagradArgs, "s", s),
    OUT(AdagradArgs, "w_out", wo, w), OUT(AdagradArgs, "s_out", so, s)};

static PyObject *k_adagrad(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kws[] = {"w", "g", "s", "w_out", "s_out", "step", "lr", "lr_decay", "eps",
                          "weight_decay", NULL};
    PyObject *o[5];
    double step, lr, lr_decay, eps, wd;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO$ddddd", kws, &o[0], &o[1], &o[2], &o[3],
                                     &o[4], &step, &lr, &lr_decay, &eps, &wd))
        return NULL;
    AdagradArgs a = {.wd = (float)wd, .eps = (float)eps,
                     .clr = (float)(lr / (1.0 + (step - 1.0) * lr_decay)), .decay = wd != 0};
    return RULE("adagrad", adagrad_slots, o, a, adagrad_loop);
}

PyDoc_STRVAR(adadelta_doc,
"adadelta(w, g, v, u, w_out, v_out, u_out, *, lr, rho, eps, weight_decay) -> bool\n\n"
"One Adadelta step (torch.optim.Adadelta).");

static const Slot adadelta_slots[] = {
    IN(AdadeltaArgs, "w", w), GRAD(AdadeltaArgs, "g", g), IN(AdadeltaArgs, "v", v),
    IN(AdadeltaArgs, "u", u), OUT(AdadeltaArgs, "w_out", wo, w),
    OUT(AdadeltaArgs, "v_out", vo, v), OUT(AdadeltaArgs, "u_out", uo, u)};

static PyObject *k_adadelta(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kws[] = {"w", "g", "v", "u", "w_out", "v_out", "u_out", "lr", "rho", "eps",
                          "weight_decay", NULL};
    PyObject *o[7];
    double lr, rho, eps, wd;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOO$dddd", kws, &o[0], &o[1], &o[2], &o[3],
                                     &o[4], &o[5], &o[6], &lr, &rho, &eps, &wd))
        return NULL;
    AdadeltaArgs a = {.wd = (float)wd, .rho = (float)rho, .one_minus_rho = (float)(1.0 - rho),
                      .eps = (float)eps, .lr = (float)lr, .decay = wd != 0};
    return RULE("adadelta", adadelta_slots, o, a, adadelta_loop);
}

PyDoc_STRVAR(rmsprop_doc,
"rmsprop(w, g, v, w_out, v_out, b=None, b_out=None, m=None, m_out=None, *, lr, alpha, eps,\n"
"        weight_decay, momentum) -> bool\n\n"
"One RMSprop step (torch.optim.RMSprop): b, b_out when momentum > 0; m, m_out when centered.");

static const Slot rmsprop_slots[] = {
    IN(RmspropArgs, "w", w), GRAD(RmspropArgs, "g", g), IN(RmspropArgs, "v", v),
    OUT(RmspropArgs, "w_out", wo, w), OUT(RmspropArgs, "v_out", vo, v),
    IN(RmspropArgs, "b", b), OUT(RmspropArgs, "b_out", bo, b),
    IN(RmspropArgs, "m", m), OUT(RmspropArgs, "m_out", mo, m)};

static PyObject *k_rmsprop(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kws[] = {"w", "g", "v", "w_out", "v_out", "b", "b_out", "m", "m_out", "lr",
                          "alpha", "eps", "weight_decay", "momentum", NULL};
    PyObject *o[9] = {NULL};
    double lr, alpha, eps, wd, mom;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO|OOOO$ddddd", kws, &o[0], &o[1], &o[2],
                                     &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &lr, &alpha, &eps,
                                     &wd, &mom))
        return NULL;
    if (given(o[5]) != given(o[6]) || given(o[7]) != given(o[8]) || (mom > 0) != given(o[5])) {
        PyErr_SetString(PyExc_ValueError, "rmsprop: b and b_out are needed exactly when "
                        "momentum > 0; m and m_out come together (centered)");
        return NULL;
    }
    RmspropArgs a = {.wd = (float)wd, .alpha = (float)alpha,
                     .one_minus_alpha = (float)(1.0 - alpha), .eps = (float)eps,
                     .momentum = (float)mom, .lr = (float)lr, .decay = wd != 0,
                     .with_momentum = given(o[5]), .centered = given(o[7])};
    lerp_weight(1.0 - alpha, &a.c_alpha, &a.small_alpha);
    return RULE("rmsprop", rmsprop_slots, o, a, rmsprop_loop);
}

PyDoc_STRVAR(adamax_doc,
"adamax(w, g, m, u, w_out, m_out, u_out, *, step, lr, beta1, beta2, eps, weight_decay) -> bool\n\n"
"One Adamax step (torch.optim.Adamax).");

static const Slot adamax_slots[] = {
    IN(AdamaxArgs, "w", w), GRAD(AdamaxArgs, "g", g), IN(AdamaxArgs, "m", m),
    IN(AdamaxArgs, "u", u), OUT(AdamaxArgs, "w_out", wo, w), OUT(AdamaxArgs, "m_out", mo, m),
    OUT(AdamaxArgs, "u_out", uo, u)};

static PyObject *k_adamax(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kws[] = {"w", "g", "m", "u", "w_out", "m_out", "u_out", "step", "lr", "beta1",
                          "beta2", "eps", "weight_decay", NULL};
    PyObject *o[7];
    double step, lr, beta1, beta2, eps, wd;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOO$dddddd", kws, &o[0], &o[1], &o[2], &o[3],
                                     &o[4], &o[5], &o[6], &step, &lr, &beta1, &beta2, &eps, &wd))
        return NULL;
    AdamaxArgs a = {.wd = (float)wd, .beta2 = (float)beta2, .eps = (float)eps,
                    .clr = (float)(lr / (1.0 - pow(beta1, step))), .decay = wd != 0};
    lerp_weight(1.0 - beta1, &a.c1, &a.small1);
    return RULE("adamax", adamax_slots, o, a, adamax_loop);
}

PyDoc_STRVAR(mean_doc,
"mean(out, grads) -> bool\n\n"
"out = (grads[0] + grads[1] + ...) / len(grads), summed in that order (two or more);\n"
"True when every element of every gradient is finite.");

static PyObject *k_mean(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kws[] = {"out", "grads", NULL};
    PyObject *oout, *ogs, *seq = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kws, &oout, &ogs))
        return NULL;
    Vectors v = {.kernel = "mean", .n = -1}, *vs = &v;
    const float **g = NULL;
    MeanArgs a;
    int stream = 1, bad;
    if (!(seq = PySequence_Fast(ogs, "mean: grads must be a sequence of arrays")))
        return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    if (k < 2 || k > INT_MAX - 1) {
        PyErr_Format(PyExc_ValueError, "mean: needs two or more gradients, got %zd", k);
        goto fail;
    }
    v.cap = (int)k + 1;              /* one per learner of the round, and out */
    v.views = PyMem_Calloc(v.cap, sizeof(Py_buffer));
    v.names = PyMem_Calloc(v.cap, sizeof(char *));
    g = PyMem_Calloc(k, sizeof(float *));
    if (!v.views || !v.names || !g) {
        PyErr_NoMemory();
        goto fail;
    }
    a = (MeanArgs){.g = g, .k = (int)k, .scale = (float)(1.0 / (double)k)};
    if (!(a.out = vector(vs, oout, "out", 1)))
        goto fail;
    for (Py_ssize_t j = 0; j < k; j++)
        if (!(g[j] = vector(vs, PySequence_Fast_GET_ITEM(seq, j), "a gradient", 0)))
            goto fail;
    for (Py_ssize_t j = 0; j < k; j++)
        if (overlap(a.out, g[j], vs->n)) {
            PyErr_SetString(PyExc_ValueError, "mean: out overlaps a gradient");
            goto fail;
        }
    float *outs[] = {a.out};
    Py_BEGIN_ALLOW_THREADS
    bad = run(PLAIN(mean_loop), AVX2(mean_loop), &a, outs, 1, vs->n, stream);
    Py_END_ALLOW_THREADS
    Py_DECREF(seq);
    PyObject *result = finish(vs, bad);
    PyMem_Free(v.views);
    PyMem_Free(v.names);
    PyMem_Free(g);
    return result;
fail:
    Py_XDECREF(seq);
    if (v.views)
        release(vs);
    PyMem_Free(v.views);
    PyMem_Free(v.names);
    PyMem_Free(g);
    return NULL;
}

/* ---- the module ---------------------------------------------------------------------------- */

static PyObject *k_use_simd(PyObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    simd = on && have_avx2();
    return PyBool_FromLong(simd);
}

static PyObject *k_path(PyObject *self, PyObject *unused)
{
    return PyUnicode_FromString(simd ? "avx2" : "plain");
}

static PyMethodDef methods[] = {
    {"sgd", (PyCFunction)(void (*)(void))k_sgd, METH_VARARGS | METH_KEYWORDS, sgd_doc},
    {"add", (PyCFunction)(void (*)(void))k_add, METH_VARARGS | METH_KEYWORDS, add_doc},
    {"msgd", (PyCFunction)(void (*)(void))k_msgd, METH_VARARGS | METH_KEYWORDS, msgd_doc},
    {"adam", (PyCFunction)(void (*)(void))k_adam, METH_VARARGS | METH_KEYWORDS, adam_doc},
    {"adagrad", (PyCFunction)(void (*)(void))k_adagrad, METH_VARARGS | METH_KEYWORDS, adagrad_doc},
    {"adadelta", (PyCFunction)(void (*)(void))k_adadelta, METH_VARARGS | METH_KEYWORDS, adadelta_doc},
    {"rmsprop", (PyCFunction)(void (*)(void))k_rmsprop, METH_VARARGS | METH_KEYWORDS, rmsprop_doc},
    {"adamax", (PyCFunction)(void (*)(void))k_adamax, METH_VARARGS | METH_KEYWORDS, adamax_doc},
    {"mean", (PyCFunction)(void (*)(void))k_mean, METH_VARARGS | METH_KEYWORDS, mean_doc},
    {"use_simd", k_use_simd, METH_O,
     "use_simd(on) -> bool: use the AVX2 path where the CPU has it (True, the default) or the "
     "plain one; returns whether AVX2 is now used."},
    {"path", k_path, METH_NOARGS, "path() -> 'avx2' or 'plain': the path the kernels take now."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "algorithms._kernels",
    "Single-pass update kernels on flat float32 vectors (see algorithms/_kernels.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__kernels(void)
{
    simd = have_avx2();
    return PyModule_Create(&module);
}
