"""How close the fused CPU scan comes to the arithmetic it cannot avoid, side by side.

    python benchmarks/bench_scan_ceiling.py [--length 1025 4097] [--repeats 9]

Per state and step the scan must compute one decay ``exp2(dt * A log2 e)`` and two
multiply-adds (``h = decay * h + dt u B`` and ``s += C h``). This script times, in one run:

1. **ceiling**: exactly that per-step arithmetic (the kernel's own decay from
   ``cpu_math.h``: ``exp2_decay_v16`` where AVX-512 is compiled in, as the kernel's chunk
   loops then use it, else ``exp2_decay``; the same compiler flags, 16 states x 16 float32
   lanes per task, inputs re-read from a 32-step buffer that stays in L1, denormals
   flushed), with every thread, and nothing else: no loads from memory, no convolution, no
   softplus, no gate;
2. **fused kernel**: the scan ranges (``mmshufflemamba::scan`` in the torch profiler) of a
   ShuffleMamba-S mixer's forward (``BiMambaMixer``, d_inner 768, d_state 16, both
   directions) on one image of each ``--length`` tokens (1025 and 4097: 512 and 1024 px
   plus the class token);

alternating the two, and prints both rates in G state updates/s and their ratio per length.
"""
import argparse
import statistics
import time

import torch

from mmshufflemamba.ops.cpu_kernel import _SOURCE_DIR, _compiler_flags

CEILING_SOURCE = r'''
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include "cpu_math.h"

using namespace mmshufflemamba_cpu;

// steps x 16 states x 16 lanes updates per task; returns a checksum (keeps the work live)
double ceiling(int64_t tasks, int64_t steps) {
  constexpr int N = 16, W = 16, K = 32;
  std::vector<double> sums(tasks, 0.0);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    alignas(64) float dt[K][W], dtu[K][W], B[K][N], C[K][N], AT2[N][W], h[N][W], s[W];
    for (int k = 0; k < K; ++k) {
      for (int l = 0; l < W; ++l) { dt[k][l] = 0.01f * (1 + (k + l) % 7); dtu[k][l] = 0.1f; }
      for (int n = 0; n < N; ++n) { B[k][n] = 0.01f * n; C[k][n] = 0.02f * (N - n); }
    }
    for (int n = 0; n < N; ++n)
      for (int l = 0; l < W; ++l) { AT2[n][l] = -1.4427f * (n + 1); h[n][l] = 0.f; }
    for (int64_t task = begin; task < end; ++task) {
      float acc = 0.f;
      for (int64_t i = 0; i < steps; ++i) {
        const int k = i % K;
#pragma omp simd
        for (int l = 0; l < W; ++l) s[l] = 0.f;
#ifdef MMSHUFFLEMAMBA_HAS_AVX512  // the kernel's decay where it has it: exp2_decay_v16
        const __m512 dtv = _mm512_load_ps(dt[k]), dtuv = _mm512_load_ps(dtu[k]);
        __m512 sv = _mm512_setzero_ps();
        for (int n = 0; n < N; ++n) {
          const __m512 a = exp2_decay_v16(_mm512_mul_ps(dtv, _mm512_load_ps(AT2[n])));
          const __m512 hv = _mm512_fmadd_ps(a, _mm512_load_ps(h[n]),
                                            _mm512_mul_ps(dtuv, _mm512_set1_ps(B[k][n])));
          _mm512_store_ps(h[n], hv);
          sv = _mm512_fmadd_ps(_mm512_set1_ps(C[k][n]), hv, sv);
        }
        _mm512_store_ps(s, sv);
#else
        for (int n = 0; n < N; ++n) {
          const float bn = B[k][n], cn = C[k][n];
#pragma omp simd
          for (int l = 0; l < W; ++l) {
            h[n][l] = exp2_decay(dt[k][l] * AT2[n][l]) * h[n][l] + dtu[k][l] * bn;
            s[l] += cn * h[n][l];
          }
        }
#endif
        acc += s[i % W];
      }
      sums[task] = acc;
    }
  });
  double total = 0.0;
  for (double v : sums) total += v;
  return total;
}
'''


def build_ceiling():
    """The ceiling loop, compiled with the kernel's flags and header."""
    from torch.utils.cpp_extension import load_inline
    return load_inline(
        'mmshufflemamba_scan_ceiling', cpp_sources=CEILING_SOURCE, functions=['ceiling'],
        extra_cflags=_compiler_flags() + [f'-I{_SOURCE_DIR}'], extra_ldflags=['-fopenmp'])


def ceiling_rate(module, steps: int) -> float:
    """G state updates/s of the scan's bare per-step arithmetic, all threads, one call."""
    tasks = 8 * torch.get_num_threads()
    start = time.perf_counter()
    module.ceiling(tasks, steps)
    return tasks * steps * 16 * 16 / (time.perf_counter() - start) / 1e9


def kernel_rate(mixer, x) -> float:
    """G state updates/s inside one fused mixer forward's scan ranges (both directions)."""
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        mixer(x)
    scan = sum(e.self_cpu_time_total for e in prof.key_averages()
               if e.key == 'mmshufflemamba::scan') / 1e6
    return 2 * x.shape[1] * mixer.d_inner * mixer.d_state / scan / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--length', type=int, nargs='+', default=[1025, 4097])
    parser.add_argument('--repeats', type=int, default=9,
                        help='alternating (kernel, ceiling) pairs; medians are printed')
    args = parser.parse_args()
    from mmshufflemamba.models.layers.mixer import BiMambaMixer
    torch.manual_seed(0)
    mixer = BiMambaMixer(embed_dims=384, d_state=16).eval()
    if not mixer.fused(torch.randn(1, 8, 384)):
        raise SystemExit('the fused CPU mixer is not available here (compiled kernel '
                         'missing?): python -m mmshufflemamba.ops.build')
    module = build_ceiling()
    print(f'CPU, {torch.get_num_threads()} threads, float32, d_state 16, '
          f'{args.repeats} alternating pairs (medians)')
    for length in args.length:
        x = torch.randn(1, length, 384)
        steps = length * 2 // torch.get_num_threads()  # about as long as the kernel's scan
        kernel_rate(mixer, x), ceiling_rate(module, steps)  # warm-up
        pairs = [(kernel_rate(mixer, x), ceiling_rate(module, steps))
                 for _ in range(args.repeats)]
        kernel = statistics.median(k for k, _ in pairs)
        ceiling = statistics.median(c for _, c in pairs)
        ratios = sorted(k / c for k, c in pairs)
        print(f'ceiling (exp2 decay + 2 FMA per state and step, in L1): {ceiling:.2f} G updates/s')
        print(f'fused kernel scan, ShuffleMamba-S mixer, L={length}: {kernel:.2f} G updates/s')
        print(f'kernel / ceiling at L={length}: median {statistics.median(ratios):.0%} '
              f'(pairs from {ratios[0]:.0%} to {ratios[-1]:.0%})', flush=True)


if __name__ == '__main__':
    main()
