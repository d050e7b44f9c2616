/*
 * Why Linear uses sgemv for one to three rows: OpenBLAS's sgemm against one weight matrix
 * [out, in] stored row-major and used transposed (y = x·Wᵀ, nn.Linear's layout), for M rows,
 * versus M sgemv calls, on five 2048×2048 matrices (80 MB, more than the L3 cache).
 *
 *   cc -O2 Benchmarks/sgemm-vs-sgemv.c $(pkg-config --cflags --libs openblas) -o /tmp/sgemm-vs-sgemv
 *   /tmp/sgemm-vs-sgemv 1      # OpenBLAS threads
 *
 * Prints medians of 9 and the weight bytes per second each achieves.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static int compare(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    openblas_set_num_threads(threads);
    const int E = 2048, matrices = 5;
    float *w = malloc(sizeof(float) * (size_t)E * E * matrices);
    float *x = malloc(sizeof(float) * E * 8), *y = malloc(sizeof(float) * E * 8);
    for (size_t i = 0; i < (size_t)E * E * matrices; i++) w[i] = (float)(i % 7) * 0.01f;
    for (int i = 0; i < E * 8; i++) x[i] = 1;
    for (int m = 1; m <= 8; m *= 2) {
        double gemm[9], gemv[9];
        for (int r = 0; r < 9; r++) {
            double t0 = now();
            for (int k = 0; k < matrices; k++)   /* y[m, E] = x[m, E] · W[E, E]ᵀ */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, E, E, 1, x, E, w + (size_t)k * E * E, E, 0, y, E);
            gemm[r] = now() - t0;
            t0 = now();
            for (int k = 0; k < matrices; k++)   /* y[i, E] = W[E, E] · x[i, E], row by row */
                for (int i = 0; i < m; i++)
                    cblas_sgemv(CblasRowMajor, CblasNoTrans, E, E, 1, w + (size_t)k * E * E, E, x + i * E, 1, 0, y + i * E, 1);
            gemv[r] = now() - t0;
        }
        qsort(gemm, 9, sizeof(double), compare);
        qsort(gemv, 9, sizeof(double), compare);
        double bytes = 4.0 * E * E * matrices;
        printf("threads %d, %d row(s): sgemm %7.2f ms (%5.1f GB/s of weights)   %d x sgemv %7.2f ms (%5.1f GB/s per pass)\n",
               threads, m, gemm[4] * 1e3, bytes / gemm[4] / 1e9, m, gemv[4] * 1e3, bytes * m / gemv[4] / 1e9);
    }
    return 0;
}
