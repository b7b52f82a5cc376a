// Memory read bandwidth, the yardstick for decode in docs/benchmarks.md.
// Each thread sums its share of a 1 GiB buffer with 256-bit loads (four
// independent accumulators); the best of 10 passes is printed.
//
//   gcc -O2 -mavx2 -fopenmp scripts/membw.c -o /tmp/membw
//   OMP_NUM_THREADS=1 /tmp/membw; OMP_NUM_THREADS=2 /tmp/membw
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    size_t n = (size_t)1 << 30;
    char *b = aligned_alloc(64, n);
    if (!b) return 1;
    memset(b, 1, n);
    double best = 1e9;
    long long check = 0;
    for (int it = 0; it < 10; it++) {
        double t = omp_get_wtime();
#pragma omp parallel reduction(+ : check)
        {
            int id = omp_get_thread_num(), nt = omp_get_num_threads();
            size_t per = n / nt;
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
            for (size_t i = id * per; i < (id + 1) * per; i += 128) {
                a0 = _mm256_add_epi64(a0, _mm256_load_si256((void *)(b + i)));
                a1 = _mm256_add_epi64(a1, _mm256_load_si256((void *)(b + i + 32)));
                a2 = _mm256_add_epi64(a2, _mm256_load_si256((void *)(b + i + 64)));
                a3 = _mm256_add_epi64(a3, _mm256_load_si256((void *)(b + i + 96)));
            }
            a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
            long long v[4];
            _mm256_storeu_si256((void *)v, a0);
            check += v[0] + v[1] + v[2] + v[3];
        }
        t = omp_get_wtime() - t;
        if (t < best) best = t;
    }
    printf("threads %d: %.1f GB/s (checksum %lld)\n", omp_get_max_threads(), n / best / 1e9, check);
    free(b);
    return 0;
}
