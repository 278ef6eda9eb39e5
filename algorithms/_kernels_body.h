/* The loops of the update kernels, written once and compiled twice by _kernels.c: 8 floats at a
 * time with AVX2/FMA intrinsics, and one float at a time in plain C (the head and tail of every
 * vector, and the whole vector on a CPU without AVX2). See Note [two paths, one result] there.
 *
 * The includer defines: V (a vector of W floats), W, TARGET (the function attribute), NAME(x),
 * LD(p), ST(p, x) (a non-temporal store where `nt`), SET(c), ADD, SUB, MUL, DIV, SQRT, ABS,
 * FMA(a, b, c) = a * b + c rounded once, MAX (NaN if either is NaN, as torch.maximum), and the
 * finiteness check: BAD_T, BAD_INIT, BAD_ADD(acc, g) (g is NaN or +-Inf), BAD_ANY(acc).
 *
 * Each loop runs over elements [i, end) (end - i a multiple of W) and returns nonzero when an
 * element of the gradient was not finite. The ops and their order are torch.optim's
 * single-tensor ones, rounded as ATen rounds them (add with alpha, lerp and addcmul end in one
 * FMA; addcdiv does not), so the results equal torch.optim's to float32 rounding. */

/* torch.lerp(s, e, weight) as ATen vectorises it: c = weight (small) or weight - 1, base = s or e */
#define LERP(s, e, c, small) FMA((c), SUB((e), (s)), (small) ? (s) : (e))

/* g + wd * w: torch's grad.add(param, alpha=weight_decay) */
#define DECAY(g, w, wd, on) ((on) ? FMA((wd), (w), (g)) : (g))

/* torch.addcmul(x, t1, t2, value=c) as ATen computes it: x + (c * t1) * t2, the last
 * multiply-add fused */
#define ADDCMUL(x, c, t1, t2) FMA(MUL((c), (t1)), (t2), (x))

/* torch.addcdiv(x, t1, t2, value=c) as ATen computes it: x + (c * t1) / t2, nothing fused */
#define ADDCDIV(x, c, t1, t2) ADD((x), DIV(MUL((c), (t1)), (t2)))

TARGET static int NAME(sgd_loop)(const void *args, Py_ssize_t i, Py_ssize_t end, int nt)
{
    const SgdArgs a = *(const SgdArgs *)args;   /* a copy: no store below can change it */
    const V nlr = SET(-a.lr), wd = SET(a.wd);
    BAD_T bad = BAD_INIT;
    (void)nt;
    for (; i < end; i += W) {
        V w = LD(a.w + i), g = LD(a.g + i);
        BAD_ADD(bad, g);
        g = DECAY(g, w, wd, a.decay);
        ST(a.wo + i, FMA(nlr, g, w));                       /* w - lr * g */
    }
    return BAD_ANY(bad);
}

TARGET static int NAME(msgd_loop)(const void *args, Py_ssize_t i, Py_ssize_t end, int nt)
{
    const MsgdArgs a = *(const MsgdArgs *)args;   /* a copy: no store below can change it */
    const V nlr = SET(-a.lr), wd = SET(a.wd), mom = SET(a.momentum), keep = SET(a.keep);
    BAD_T bad = BAD_INIT;
    (void)nt;
    for (; i < end; i += W) {
        V w = LD(a.w + i), g = LD(a.g + i), b;
        BAD_ADD(bad, g);
        g = DECAY(g, w, wd, a.decay);
        if (a.first)
            b = g;                                           /* b_1 = g_1 */
        else
            b = FMA(keep, g, MUL(LD(a.b + i), mom));        /* momentum * b + (1 - dampening) * g */
        ST(a.bo + i, b);
        if (a.nesterov)
            b = FMA(mom, b, g);                              /* g + momentum * b */
        ST(a.wo + i, FMA(nlr, b, w));
    }
    return BAD_ANY(bad);
}

TARGET static int NAME(adam_loop)(const void *args, Py_ssize_t i, Py_ssize_t end, int nt)
{
    const AdamArgs a = *(const AdamArgs *)args;   /* a copy: no store below can change it */
    const V wd = SET(a.wd), shrink = SET(a.shrink), c1 = SET(a.c1), b2 = SET(a.beta2),
            omb2 = SET(a.one_minus_beta2), bc2 = SET(a.bc2_sqrt), eps = SET(a.eps),
            nss = SET(-a.step_size);
    BAD_T bad = BAD_INIT;
    (void)nt;
    for (; i < end; i += W) {
        V w = LD(a.w + i), g = LD(a.g + i);
        BAD_ADD(bad, g);
        if (a.decoupled)
            w = MUL(w, shrink);                              /* w * (1 - lr * weight_decay) */
        else
            g = DECAY(g, w, wd, a.decay);
        V m = LERP(LD(a.m + i), g, c1, a.small1);          /* m.lerp_(g, 1 - beta1) */
        V v = ADDCMUL(MUL(LD(a.v + i), b2), omb2, g, g);        /* v * beta2 + (1 - beta2) g^2 */
        ST(a.mo + i, m);
        ST(a.vo + i, v);
        if (a.amsgrad) {
            v = MAX(LD(a.x + i), v);                        /* vmax = max(vmax, v) */
            ST(a.xo + i, v);
        }
        V denom = ADD(DIV(SQRT(v), bc2), eps);               /* sqrt(v) / sqrt(1 - beta2^t) + eps */
        ST(a.wo + i, ADDCDIV(w, nss, m, denom));            /* w - lr / (1 - beta1^t) * m / denom */
    }
    return BAD_ANY(bad);
}

TARGET static int NAME(adagrad_loop)(const void *args, Py_ssize_t i, Py_ssize_t end, int nt)
{
    const AdagradArgs a = *(const AdagradArgs *)args;   /* a copy: no store below can change it */
    const V wd = SET(a.wd), eps = SET(a.eps), nclr = SET(-a.clr);
    BAD_T bad = BAD_INIT;
    (void)nt;
    for (; i < end; i += W) {
        V w = LD(a.w + i), g = LD(a.g + i);
        BAD_ADD(bad, g);
        g = DECAY(g, w, wd, a.decay);
        V s = ADDCMUL(LD(a.s + i), SET(1.0f), g, g);       /* s + g^2 */
        ST(a.so + i, s);
        V std = ADD(SQRT(s), eps);
        ST(a.wo + i, ADDCDIV(w, nclr, g, std));             /* w - clr * g / (sqrt(s) + eps) */
    }
    return BAD_ANY(bad);
}

TARGET static int NAME(adadelta_loop)(const void *args, Py_ssize_t i, Py_ssize_t end, int nt)
{
    const AdadeltaArgs a = *(const AdadeltaArgs *)args;   /* a copy: no store below can change it */
    const V wd = SET(a.wd), rho = SET(a.rho), omr = SET(a.one_minus_rho), eps = SET(a.eps),
            nlr = SET(-a.lr);
    BAD_T bad = BAD_INIT;
    (void)nt;
    for (; i < end; i += W) {
        V w = LD(a.w + i), g = LD(a.g + i), u = LD(a.u + i);
        BAD_ADD(bad, g);
        g = DECAY(g, w, wd, a.decay);
        V v = ADDCMUL(MUL(LD(a.v + i), rho), omr, g, g);                /* rho v + (1 - rho) g^2 */
        ST(a.vo + i, v);
        V std = SQRT(ADD(v, eps));
        V delta = MUL(DIV(SQRT(ADD(u, eps)), std), g);                   /* sqrt(u + eps) / std * g */
        ST(a.uo + i, ADDCMUL(MUL(u, rho), omr, delta, delta));          /* rho u + (1 - rho) d^2 */
        ST(a.wo + i, FMA(nlr, delta, w));
    }
    return BAD_ANY(bad);
}

TARGET static int NAME(rmsprop_loop)(const void *args, Py_ssize_t i, Py_ssize_t end, int nt)
{
    const RmspropArgs a = *(const RmspropArgs *)args;   /* a copy: no store below can change it */
    const V wd = SET(a.wd), al = SET(a.alpha), oma = SET(a.one_minus_alpha), eps = SET(a.eps),
            ca = SET(a.c_alpha), mom = SET(a.momentum), nlr = SET(-a.lr);
    BAD_T bad = BAD_INIT;
    (void)nt;
    for (; i < end; i += W) {
        V w = LD(a.w + i), g = LD(a.g + i), avg;
        BAD_ADD(bad, g);
        g = DECAY(g, w, wd, a.decay);
        V v = ADDCMUL(MUL(LD(a.v + i), al), oma, g, g);                 /* alpha v + (1 - alpha) g^2 */
        ST(a.vo + i, v);
        if (a.centered) {
            V m = LERP(LD(a.m + i), g, ca, a.small_alpha);            /* m.lerp_(g, 1 - alpha) */
            ST(a.mo + i, m);
            avg = SQRT(ADDCMUL(v, SET(-1.0f), m, m));                       /* v - m^2 */
        } else {
            avg = SQRT(v);
        }
        avg = ADD(avg, eps);
        if (a.with_momentum) {
            V b = ADD(MUL(LD(a.b + i), mom), DIV(g, avg));              /* momentum b + g / avg */
            ST(a.bo + i, b);
            ST(a.wo + i, FMA(nlr, b, w));
        } else {
            ST(a.wo + i, ADDCDIV(w, nlr, g, avg));
        }
    }
    return BAD_ANY(bad);
}

TARGET static int NAME(adamax_loop)(const void *args, Py_ssize_t i, Py_ssize_t end, int nt)
{
    const AdamaxArgs a = *(const AdamaxArgs *)args;   /* a copy: no store below can change it */
    const V wd = SET(a.wd), c1 = SET(a.c1), b2 = SET(a.beta2), eps = SET(a.eps),
            nclr = SET(-a.clr);
    BAD_T bad = BAD_INIT;
    (void)nt;
    for (; i < end; i += W) {
        V w = LD(a.w + i), g = LD(a.g + i);
        BAD_ADD(bad, g);
        g = DECAY(g, w, wd, a.decay);
        V m = LERP(LD(a.m + i), g, c1, a.small1);                       /* m.lerp_(g, 1 - beta1) */
        V u = MAX(MUL(LD(a.u + i), b2), ADD(ABS(g), eps));               /* max(beta2 u, |g| + eps) */
        ST(a.mo + i, m);
        ST(a.uo + i, u);
        ST(a.wo + i, ADDCDIV(w, nclr, m, u));                           /* w - clr * m / u */
    }
    return BAD_ANY(bad);
}

/* out = (g_0 + g_1 + ... + g_{k-1}) * (1 / k), summed in that order (k >= 2) */
TARGET static int NAME(mean_loop)(const void *args, Py_ssize_t i, Py_ssize_t end, int nt)
{
    const MeanArgs a = *(const MeanArgs *)args;   /* a copy: no store below can change it */
    const V scale = SET(a.scale);
    BAD_T bad = BAD_INIT;
    (void)nt;
    for (; i < end; i += W) {
        V x = LD(a.g[0] + i), s;
        BAD_ADD(bad, x);
        s = x;
        for (int j = 1; j < a.k; j++) {
            x = LD(a.g[j] + i);
            BAD_ADD(bad, x);
            s = ADD(s, x);
        }
        ST(a.out + i, MUL(s, scale));
    }
    return BAD_ANY(bad);
}

#undef LERP
#undef DECAY
#undef ADDCMUL
#undef ADDCDIV
