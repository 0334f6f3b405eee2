/* The batch augmentation pipeline, one image at a time, every step in one call.

   The torch batch form (trainable/batched.py) runs each step over the whole batch: a few
   passes over 3 MB of floats per step, each streamed through memory. Here one image (48 KB
   at 64 px) stays in the core's cache from the first step to the last, and the uint8 input
   and the channels-last float output are read and written once. The arithmetic is the batch
   form's, step by step; the random parameters are drawn in Python, by the same code that
   draws them for the batch form, and passed in per image.

   Images are 3 planes of H x W floats, pixel values 0-255. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    OP_CROP = 1,     /* top, left, h, w, hflip, vflip */
    OP_HFLIP = 2,    /* on */
    OP_VFLIP = 3,    /* on */
    OP_WARP = 4,     /* the 2 x 3 matrix of grid_sample's normalised grid, row by row */
    OP_BLUR = 5,     /* the 1-D kernel, `stride` taps */
    OP_SHARPEN = 6,  /* on, factor */
    OP_CONTRAST = 7, /* factor */
    OP_BRIGHTNESS = 8, /* factor */
    OP_COLOR = 9,    /* saturation factor, hue shift (turns), hue first */
    OP_GRAY = 10,    /* on */
    OP_ERASE = 11,   /* top, left, h, w, on */
};

#define BOUND 255.0f

static inline float maxf(float a, float b) { return a > b ? a : b; }
static inline float minf(float a, float b) { return a < b ? a : b; }

static inline float clampf(float v) { return v < 0.0f ? 0.0f : (v > BOUND ? BOUND : v); }

/* Bilinear resample of a box, separably: rows at the box's source columns, then columns.
   The source coordinate of output i along an axis is (i + 0.5) * len / size - 0.5, clamped
   into the box (as v2's resize of the crop, without antialias: boxes never shrink). */
static void axis_weights(int start, int len, int size, int mirror, int *lo, int *hi, float *w) {
    for (int i = 0; i < size; i++) {
        float c = ((float)i + 0.5f) * ((float)len / (float)size) - 0.5f;
        if (c < 0.0f) c = 0.0f;
        if (c > (float)(len - 1)) c = (float)(len - 1);
        c += (float)start;
        int f = (int)floorf(c);
        int j = mirror ? size - 1 - i : i;
        lo[j] = f;
        hi[j] = f + 1 < size ? f + 1 : f;
        w[j] = c - (float)f;
    }
}

static void crop(const float *restrict src, float *restrict dst, float *restrict tmp, int H, int W, const float *p,
                 int *ilo, int *ihi, float *wgt) {
    int top = (int)p[0], left = (int)p[1], h = (int)p[2], w = (int)p[3];
    int *xlo = ilo, *xhi = ihi, *ylo = ilo + W, *yhi = ihi + W;
    float *wx = wgt, *wy = wgt + W;
    axis_weights(left, w, W, p[4] != 0.0f, xlo, xhi, wx);
    axis_weights(top, h, H, p[5] != 0.0f, ylo, yhi, wy);
    for (int c = 0; c < 3; c++) {
        const float *plane = src + (size_t)c * H * W;
        float *t = tmp + (size_t)c * H * W;
        /* only the source rows the box reads: top .. top + h (inclusive of the lerp's partner) */
        int r1 = top + h < H ? top + h : H - 1;
        for (int r = top; r <= r1; r++) {
            const float *restrict row = plane + (size_t)r * W;
            float *restrict out = t + (size_t)r * W;
#pragma omp simd
            for (int x = 0; x < W; x++) out[x] = row[xlo[x]] + wx[x] * (row[xhi[x]] - row[xlo[x]]);
        }
        float *o = dst + (size_t)c * H * W;
        for (int y = 0; y < H; y++) {
            const float *a = t + (size_t)ylo[y] * W, *b = t + (size_t)yhi[y] * W;
            float f = wy[y];
            float *out = o + (size_t)y * W;
            for (int x = 0; x < W; x++) out[x] = a[x] + f * (b[x] - a[x]);
        }
    }
}

static void hflip(float *x, int H, int W) {
    for (int r = 0; r < 3 * H; r++) {
        float *row = x + (size_t)r * W;
        for (int i = 0, j = W - 1; i < j; i++, j--) {
            float v = row[i];
            row[i] = row[j];
            row[j] = v;
        }
    }
}

static void vflip(float *x, float *tmp, int H, int W) {
    size_t bytes = sizeof(float) * W;
    for (int c = 0; c < 3; c++) {
        float *plane = x + (size_t)c * H * W;
        for (int i = 0, j = H - 1; i < j; i++, j--) {
            memcpy(tmp, plane + (size_t)i * W, bytes);
            memcpy(plane + (size_t)i * W, plane + (size_t)j * W, bytes);
            memcpy(plane + (size_t)j * W, tmp, bytes);
        }
    }
}

/* Nearest-neighbour warp with zero fill: grid_sample's unnormalised coordinate of the grid
   value g is ((g + 1) * size - 1) / 2, rounded half to even. */
static void warp(const float *restrict src, float *restrict dst, int H, int W, const float *m) {
    size_t plane = (size_t)H * W;
    for (int y = 0; y < H; y++) {
        float ys = ((float)y - (float)(H - 1) * 0.5f);
        float ry = ys * m[1] + m[2], qy = ys * m[4] + m[5];
        float *restrict d0 = dst + (size_t)y * W, *restrict d1 = d0 + plane, *restrict d2 = d1 + plane;
#pragma omp simd
        for (int x = 0; x < W; x++) {
            float xs = ((float)x - (float)(W - 1) * 0.5f);
            float gx = xs * m[0] + ry, gy = xs * m[3] + qy;
            float ix = nearbyintf(((gx + 1.0f) * (float)W - 1.0f) * 0.5f);
            float iy = nearbyintf(((gy + 1.0f) * (float)H - 1.0f) * 0.5f);
            int inside = ix >= 0.0f && ix < (float)W && iy >= 0.0f && iy < (float)H;
            int s = inside ? (int)iy * W + (int)ix : 0;
            float v0 = src[s], v1 = src[plane + s], v2 = src[2 * plane + s];
            d0[x] = inside ? v0 : 0.0f;
            d1[x] = inside ? v1 : 0.0f;
            d2[x] = inside ? v2 : 0.0f;
        }
    }
}

static inline int reflect(int i, int n) {
    if (i < 0) i = -i;
    if (i > n - 1) i = 2 * (n - 1) - i;
    return i;
}

/* out[x] = sum_j k[j] * rows[j][x]: 32 columns at a time in four 8-float vector registers,
   accumulated over the taps before one store (6x faster here than a loop per tap). */
typedef float vec8 __attribute__((vector_size(32), aligned(4)));

static void taps_sum(const float *const *rows, float *restrict out, int W, const float *restrict k, int taps) {
    int x = 0;
    for (; x + 32 <= W; x += 32) {
        vec8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int j = 0; j < taps; j++) {
            const float *p = rows[j] + x;
            vec8 kj = (vec8){0} + k[j];
            a0 += kj * *(const vec8 *)p;
            a1 += kj * *(const vec8 *)(p + 8);
            a2 += kj * *(const vec8 *)(p + 16);
            a3 += kj * *(const vec8 *)(p + 24);
        }
        *(vec8 *)(out + x) = a0;
        *(vec8 *)(out + x + 8) = a1;
        *(vec8 *)(out + x + 16) = a2;
        *(vec8 *)(out + x + 24) = a3;
    }
    for (; x + 8 <= W; x += 8) {
        vec8 a = {0};
        for (int j = 0; j < taps; j++) a += ((vec8){0} + k[j]) * *(const vec8 *)(rows[j] + x);
        *(vec8 *)(out + x) = a;
    }
    for (; x < W; x++) {
        float acc = 0.0f;
        for (int j = 0; j < taps; j++) acc += k[j] * rows[j][x];
        out[x] = acc;
    }
}

/* Separable Gaussian blur, reflect-padded as v2 pads it: along rows into tmp (each row
   padded into `pad` first), then along columns. */
static void blur(const float *restrict src, float *restrict dst, float *restrict tmp, float *restrict pad,
                 const float **rows, int H, int W, const float *restrict k, int taps) {
    int r = taps / 2;
    for (int c = 0; c < 3; c++) {
        const float *s = src + (size_t)c * H * W;
        float *t = tmp + (size_t)c * H * W;
        for (int y = 0; y < H; y++) {
            const float *row = s + (size_t)y * W;
            memcpy(pad + r, row, sizeof(float) * W);
            for (int x = 1; x <= r; x++) {
                pad[r - x] = row[reflect(-x, W)];
                pad[r + W - 1 + x] = row[reflect(W - 1 + x, W)];
            }
            for (int j = 0; j < taps; j++) rows[j] = pad + j;
            taps_sum(rows, t + (size_t)y * W, W, k, taps);
        }
        float *d = dst + (size_t)c * H * W;
        for (int y = 0; y < H; y++) {
            for (int j = 0; j < taps; j++) rows[j] = t + (size_t)reflect(y + j - r, H) * W;
            taps_sum(rows, d + (size_t)y * W, W, k, taps);
        }
    }
}

/* v2's adjust_sharpness: factor * c + (1 - factor) * (3x3 sum + 4 c) / 13 inside the border. */
static void sharpen(const float *restrict src, float *restrict dst, int H, int W, float factor) {
    float wb = (1.0f - factor) / 13.0f, wc = factor + 4.0f * (1.0f - factor) / 13.0f;
    memcpy(dst, src, sizeof(float) * 3 * H * W);
    for (int c = 0; c < 3; c++) {
        const float *s = src + (size_t)c * H * W;
        float *d = dst + (size_t)c * H * W;
        for (int y = 1; y < H - 1; y++) {
            const float *a = s + (size_t)(y - 1) * W, *b = s + (size_t)y * W, *e = s + (size_t)(y + 1) * W;
            float *out = d + (size_t)y * W;
            for (int x = 1; x < W - 1; x++) {
                float box = (a[x - 1] + e[x - 1] + b[x - 1]) + (a[x + 1] + e[x + 1] + b[x + 1]) + (a[x] + e[x] + b[x]);
                out[x] = clampf(box * wb + b[x] * wc);
            }
        }
    }
}

static void contrast(float *x, int H, int W, float factor) {
    size_t n = (size_t)H * W;
    const float luma[3] = {0.2989f, 0.587f, 0.114f};
    float mean = 0.0f;
    for (int c = 0; c < 3; c++) {
        float sum = 0.0f;
        const float *p = x + c * n;
#pragma omp simd reduction(+ : sum)
        for (size_t i = 0; i < n; i++) sum += p[i];
        mean += sum / (float)n * luma[c];
    }
    float other = mean * (1.0f - factor);
    for (size_t i = 0; i < 3 * n; i++) x[i] = clampf(x[i] * factor + other);
}

static void brightness(float *x, int H, int W, float factor) {
    for (size_t i = 0; i < (size_t)3 * H * W; i++) x[i] = clampf(x[i] * factor);
}

static void saturation(float *x, int n, float factor) {
    float *r = x, *g = x + n, *b = x + 2 * n;
    for (int i = 0; i < n; i++) {
        float l = r[i] * 0.2989f + g[i] * 0.587f + b[i] * 0.114f;
        r[i] = clampf(l + factor * (r[i] - l));
        g[i] = clampf(l + factor * (g[i] - l));
        b[i] = clampf(l + factor * (b[i] - l));
    }
}

/* v2's adjust_hue in closed form: V and S * V (the channel max and max - min) stay; each
   channel is max - (max - min) * clamp(min(k, 4 - k), 0, 1), k = (H6 + 5, 3, 1) mod 6. */
static void hue(float *x, int n, float shift) {
    float *restrict r = x, *restrict g = x + n, *restrict b = x + 2 * n;
    float turn = 6.0f * shift;
#pragma omp simd
    for (int i = 0; i < n; i++) {
        float R = r[i], G = g[i], B = b[i];
        float mx = maxf(maxf(R, G), B), mn = minf(minf(R, G), B);
        float span = mx - mn;
        float is_r = R == mx ? 1.0f : 0.0f;
        float is_g = G == mx ? 1.0f - is_r : 0.0f;
        float is_b = 1.0f - is_r - is_g;
        float h6 = ((G - B) * is_r + (B - R) * is_g + (R - G) * is_b) / maxf(span, 1e-12f);
        h6 = h6 + 2.0f * is_g + 4.0f * is_b + turn;
        float k0 = h6 + 5.0f, k1 = h6 + 3.0f, k2 = h6 + 1.0f;
        k0 -= floorf(k0 * (1.0f / 6.0f)) * 6.0f;
        k1 -= floorf(k1 * (1.0f / 6.0f)) * 6.0f;
        k2 -= floorf(k2 * (1.0f / 6.0f)) * 6.0f;
        r[i] = mx - minf(maxf(minf(k0, 4.0f - k0), 0.0f), 1.0f) * span;
        g[i] = mx - minf(maxf(minf(k1, 4.0f - k1), 0.0f), 1.0f) * span;
        b[i] = mx - minf(maxf(minf(k2, 4.0f - k2), 0.0f), 1.0f) * span;
    }
}

static void gray(float *x, int n) {
    float *r = x, *g = x + n, *b = x + 2 * n;
    for (int i = 0; i < n; i++) r[i] = g[i] = b[i] = r[i] * 0.2989f + g[i] * 0.587f + b[i] * 0.114f;
}

static void erase(float *x, int H, int W, const float *p) {
    int top = (int)p[0], left = (int)p[1], h = (int)p[2], w = (int)p[3];
    for (int c = 0; c < 3; c++)
        for (int y = top; y < top + h; y++) memset(x + ((size_t)c * H + y) * W + left, 0, sizeof(float) * w);
}

/* images: n x 3 x H x W uint8; out: n x H x W x 3 float (channels-last). Op i's parameters
   for image j start at params[i] + j * strides[i]. Returns 0, or -1 when out of memory. */
int augment(const uint8_t *images, float *out, int n, int H, int W, int n_ops, const int *codes, const int *strides,
            const float *const *params) {
    size_t plane = (size_t)H * W, size = 3 * plane;
    float *a = malloc(sizeof(float) * size), *b = malloc(sizeof(float) * size), *t = malloc(sizeof(float) * size);
    int *ilo = malloc(sizeof(int) * (H + W)), *ihi = malloc(sizeof(int) * (H + W));
    float *wgt = malloc(sizeof(float) * (H + W)), *pad = malloc(sizeof(float) * 2 * (H + W));
    const float **rows = malloc(sizeof(float *) * (H > W ? H : W));
    int ok = a && b && t && ilo && ihi && wgt && pad && rows;
    for (int i = 0; ok && i < n; i++) {
        const uint8_t *in = images + i * size;
        for (size_t j = 0; j < size; j++) a[j] = (float)in[j];
        for (int o = 0; o < n_ops; o++) {
            const float *p = params[o] + (size_t)i * strides[o];
            float *swap = NULL;
            switch (codes[o]) {
            case OP_CROP: crop(a, b, t, H, W, p, ilo, ihi, wgt); swap = b; break;
            case OP_HFLIP: if (p[0] != 0.0f) hflip(a, H, W); break;
            case OP_VFLIP: if (p[0] != 0.0f) vflip(a, t, H, W); break;
            case OP_WARP: warp(a, b, H, W, p); swap = b; break;
            case OP_BLUR: blur(a, b, t, pad, rows, H, W, p, strides[o]); swap = b; break;
            case OP_SHARPEN: if (p[0] != 0.0f) { sharpen(a, b, H, W, p[1]); swap = b; } break;
            case OP_CONTRAST: contrast(a, H, W, p[0]); break;
            case OP_BRIGHTNESS: brightness(a, H, W, p[0]); break;
            case OP_COLOR:
                if (p[2] != 0.0f) { hue(a, plane, p[1]); saturation(a, plane, p[0]); }
                else { saturation(a, plane, p[0]); hue(a, plane, p[1]); }
                break;
            case OP_GRAY: if (p[0] != 0.0f) gray(a, plane); break;
            case OP_ERASE: if (p[4] != 0.0f) erase(a, H, W, p); break;
            default: break;
            }
            if (swap) { b = a; a = swap; }
        }
        float *o = out + i * size;
        for (size_t j = 0; j < plane; j++) {
            o[3 * j] = a[j];
            o[3 * j + 1] = a[plane + j];
            o[3 * j + 2] = a[2 * plane + j];
        }
    }
    free(a); free(b); free(t); free(ilo); free(ihi); free(wgt); free(pad); free(rows);
    return ok ? 0 : -1;
}
