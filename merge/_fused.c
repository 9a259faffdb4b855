/* out = A - M * (C - B) in one pass: the merge's inner loop, for the CPU.
 *
 * torch has no single op for this, so its path (merge/fused.py) makes seven passes over cache-sized chunks
 * (three casts in, two subtractions, a finiteness sum, a cast out). This loop reads each input once, computes
 * in fp32 with the same operations torch uses (c - b, then fma(d, -M, a)), so the bits come out identical,
 * and checks the output dtype's exponent for NaN/Inf as it stores. Measured by benchmarks/bench_merge.py.
 *
 * The vector loop needs AVX2, FMA and F16C (x86-64 since 2013); available() says whether this CPU has them,
 * and merge/fused.py falls back to torch where it does not or where this module was not built.
 * Called with the GIL released: each merge worker runs its own tensors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { F16 = 0, BF16 = 1, F32 = 2 };

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_KERNEL 1
#define TARGET __attribute__((target("avx2,fma,f16c")))
#define INLINE TARGET __attribute__((always_inline)) static inline

INLINE __m256 load8(const void *p, int dt, size_t i) {
    if (dt == F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
    if (dt == F32) return _mm256_loadu_ps((const float *)p + i);
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

INLINE float load1(const void *p, int dt, size_t i) {
    if (dt == F32) { float f; memcpy(&f, (const float *)p + i, 4); return f; }
    uint16_t h; memcpy(&h, (const uint16_t *)p + i, 2);
    if (dt == F16) return _cvtsh_ss(h);
    uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f;
}

/* bf16 by round-to-nearest-even, NaN to 0x7fc0: what torch's float -> bfloat16 does */
INLINE uint16_t to_bf16(float x) {
    uint32_t u; memcpy(&u, &x, 4);
    if (x != x) return 0x7fc0;
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

/* store one value; returns 1 if the stored value is NaN/Inf */
INLINE int store1(void *p, int dt, size_t i, float x) {
    if (dt == F32) { memcpy((float *)p + i, &x, 4); uint32_t u; memcpy(&u, &x, 4); return (u & 0x7f800000) == 0x7f800000; }
    uint16_t h = dt == F16 ? _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT) : to_bf16(x);
    memcpy((uint16_t *)p + i, &h, 2);
    uint16_t e = dt == F16 ? 0x7c00 : 0x7f80;
    return (h & e) == e;
}

/* dst = src converted (fp16/bf16/fp32 either side), as torch's Tensor.copy_ rounds */
TARGET static void convert(const void *src, int ds, void *dst, int dd, size_t n) {
    size_t i = 0;
    if (dd == F16)
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i *)((uint16_t *)dst + i), _mm256_cvtps_ph(load8(src, ds, i), _MM_FROUND_TO_NEAREST_INT));
    else if (dd == F32)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps((float *)dst + i, load8(src, ds, i));
    for (; i < n; i++) store1(dst, dd, i, load1(src, ds, i));
}

/* Returns 1 if every output value is finite. */
TARGET static int add_difference(const void *a, int da, const void *b, int db, const void *c, int dc,
                                 void *out, int dout, size_t n, float m) {
    const __m256 neg_m = _mm256_set1_ps(-m);
    size_t i = 0;
    int bad = 0;
    if (dout == F16) {
        const __m128i e = _mm_set1_epi16(0x7c00);
        __m128i acc = _mm_setzero_si128();
        for (; i + 8 <= n; i += 8) {
            __m256 d = _mm256_sub_ps(load8(c, dc, i), load8(b, db, i));
            __m128i h = _mm256_cvtps_ph(_mm256_fmadd_ps(d, neg_m, load8(a, da, i)), _MM_FROUND_TO_NEAREST_INT);
            _mm_storeu_si128((__m128i *)((uint16_t *)out + i), h);
            acc = _mm_or_si128(acc, _mm_cmpeq_epi16(_mm_and_si128(h, e), e));
        }
        bad = !_mm_testz_si128(acc, acc);
    } else if (dout == F32) {
        const __m256i e = _mm256_set1_epi32(0x7f800000);
        __m256i acc = _mm256_setzero_si256();
        for (; i + 8 <= n; i += 8) {
            __m256 d = _mm256_sub_ps(load8(c, dc, i), load8(b, db, i));
            __m256 r = _mm256_fmadd_ps(d, neg_m, load8(a, da, i));
            _mm256_storeu_ps((float *)out + i, r);
            __m256i u = _mm256_castps_si256(r);
            acc = _mm256_or_si256(acc, _mm256_cmpeq_epi32(_mm256_and_si256(u, e), e));
        }
        bad = !_mm256_testz_si256(acc, acc);
    }
    /* bf16 output is rare (an explicit --dtype bf16): scalar, like every loop's tail */
    for (; i < n; i++) {
        float d = load1(c, dc, i) - load1(b, db, i);
        bad |= store1(out, dout, i, __builtin_fmaf(d, -m, load1(a, da, i)));
    }
    return !bad;
}

static int cpu_ok(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#else
#define HAVE_KERNEL 0
#endif

static PyObject *available(PyObject *self, PyObject *unused) {
#if HAVE_KERNEL
    return PyBool_FromLong(cpu_ok());
#else
    return PyBool_FromLong(0);
#endif
}

static int bad_dtype(int d) { return d < 0 || d > 2; }

/* 1 where the vector loops can run on these arguments; else 0 with the exception set */
static int usable(int args_ok) {
    if (!args_ok) {
        PyErr_SetString(PyExc_ValueError, "bad element count or dtype code");
        return 0;
    }
#if HAVE_KERNEL
    if (cpu_ok()) return 1;
    PyErr_SetString(PyExc_RuntimeError, "this CPU lacks AVX2/FMA/F16C");
#else
    PyErr_SetString(PyExc_RuntimeError, "built without the x86-64 kernel");
#endif
    return 0;
}

static const size_t ITEM[3] = {2, 2, 4};

/* Every pointer comes with the memory it lies in, ``[lo, hi)`` (its mapping, its buffer): an access that would
 * leave it is refused here, whatever the caller computed, so a malformed file can never make the loop read or
 * write outside its memory. 0 with ValueError set when ``p .. p + count * item`` is not inside it. */
typedef struct { unsigned long long p, lo, hi; } Span;

static int inside(Span s, Py_ssize_t count, size_t item) {
    if (count < 0 || s.p < s.lo || s.p > s.hi || (unsigned long long)count > (s.hi - s.p) / item) {
        PyErr_SetString(PyExc_ValueError, "out-of-range access refused: a tensor runs past its memory");
        return 0;
    }
    return 1;
}

/* add_difference(a, a_lo, a_hi, a_dtype, b, ..., c, ..., out, out_lo, out_hi, out_dtype, n, m) -> bool (all
 * finite). Pointers are addresses of contiguous runs of n elements, each with the memory it lies in; dtypes
 * 0 fp16, 1 bf16, 2 fp32. */
static PyObject *py_add_difference(PyObject *self, PyObject *args) {
    Span a, b, c, out;
    int da, db, dc, dout;
    Py_ssize_t n;
    float m;
    if (!PyArg_ParseTuple(args, "KKKiKKKiKKKiKKKinf", &a.p, &a.lo, &a.hi, &da, &b.p, &b.lo, &b.hi, &db, &c.p, &c.lo,
                          &c.hi, &dc, &out.p, &out.lo, &out.hi, &dout, &n, &m))
        return NULL;
    if (!usable(n >= 0 && !bad_dtype(da) && !bad_dtype(db) && !bad_dtype(dc) && !bad_dtype(dout))) return NULL;
    if (!inside(a, n, ITEM[da]) || !inside(b, n, ITEM[db]) || !inside(c, n, ITEM[dc]) || !inside(out, n, ITEM[dout]))
        return NULL;
    int finite = 1;
#if HAVE_KERNEL
    Py_BEGIN_ALLOW_THREADS
    finite = add_difference((const void *)a.p, da, (const void *)b.p, db, (const void *)c.p, dc, (void *)out.p, dout,
                            (size_t)n, m);
    Py_END_ALLOW_THREADS
#endif
    return PyBool_FromLong(finite);
}

/* convert(src, src_lo, src_hi, src_dtype, dst, dst_lo, dst_hi, dst_dtype, n): a copy that changes the float type */
static PyObject *py_convert(PyObject *self, PyObject *args) {
    Span src, dst;
    int ds, dd;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "KKKiKKKin", &src.p, &src.lo, &src.hi, &ds, &dst.p, &dst.lo, &dst.hi, &dd, &n))
        return NULL;
    if (!usable(n >= 0 && !bad_dtype(ds) && !bad_dtype(dd))) return NULL;
    if (!inside(src, n, ITEM[ds]) || !inside(dst, n, ITEM[dd])) return NULL;
#if HAVE_KERNEL
    Py_BEGIN_ALLOW_THREADS
    convert((const void *)src.p, ds, (void *)dst.p, dd, (size_t)n);
    Py_END_ALLOW_THREADS
#endif
    Py_RETURN_NONE;
}

/* transpose(src, src_lo, src_hi, dst, dst_lo, dst_hi, rows, cols, itemsize): dst (cols x rows) = the transpose
 * of src (rows x cols), in tiles that stay in cache; for the one transposed tensor of an SDXL diffusers folder
 * (text_projection) */
static PyObject *py_transpose(PyObject *self, PyObject *args) {
    Span src, dst;
    Py_ssize_t rows, cols, size;
    if (!PyArg_ParseTuple(args, "KKKKKKnnn", &src.p, &src.lo, &src.hi, &dst.p, &dst.lo, &dst.hi, &rows, &cols, &size))
        return NULL;
    if (rows < 0 || cols < 0 || (size != 2 && size != 4) || (cols && rows > PY_SSIZE_T_MAX / cols)) {
        PyErr_SetString(PyExc_ValueError, "bad shape or item size");
        return NULL;
    }
    if (!inside(src, rows * cols, (size_t)size) || !inside(dst, rows * cols, (size_t)size)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    const char *s = (const char *)src.p;
    char *d = (char *)dst.p;
    const Py_ssize_t tile = 64;
    for (Py_ssize_t i0 = 0; i0 < rows; i0 += tile)
        for (Py_ssize_t j0 = 0; j0 < cols; j0 += tile)
            for (Py_ssize_t i = i0; i < rows && i < i0 + tile; i++)
                for (Py_ssize_t j = j0; j < cols && j < j0 + tile; j++)
                    memcpy(d + (j * rows + i) * size, s + (i * cols + j) * size, (size_t)size);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* copy_bytes(src, src_lo, src_hi, dst, dst_lo, dst_hi, nbytes): memcpy without the GIL (tensors copied as
 * they are) */
static PyObject *py_copy_bytes(PyObject *self, PyObject *args) {
    Span src, dst;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "KKKKKKn", &src.p, &src.lo, &src.hi, &dst.p, &dst.lo, &dst.hi, &n)) return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "negative byte count");
        return NULL;
    }
    if (!inside(src, n, 1) || !inside(dst, n, 1)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (n) memcpy((void *)dst.p, (const void *)src.p, (size_t)n);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"available", available, METH_NOARGS, "Whether add_difference can run on this CPU."},
    {"add_difference", py_add_difference, METH_VARARGS, "out = A - M * (C - B), one pass; returns all-finite."},
    {"convert", py_convert, METH_VARARGS, "dst = src in another float dtype."},
    {"copy_bytes", py_copy_bytes, METH_VARARGS, "memcpy without the GIL."},
    {"transpose", py_transpose, METH_VARARGS, "dst = src transposed (2-D, 2- or 4-byte items)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "merge._fused", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }
