// HSTU's SiLU attention in place of the online softmax of CUTLASS's Hopper FMHA example
// (examples/88_hopper_fmha), for bench/cutlass_fmha_compare.sh: a TIMING experiment (exploration
// W), not the op. Same interface as cutlass::fmha::collective::CollectiveSoftmax: no row max, no
// rescaling, no row sum; P = SiLU(S + bias) with SiLU(2h) = h tanh(h) + h (h = (S + bias) / 2,
// the Triton kernels' form); masked scores (-inf from the example's causal fusion) give 0; the
// output is scaled by 1 / n at the end.
//
// HSTU_BIAS (1 to 4, see halve) adds the relative bias per score, computed here for one head
// (the example's CTAs each do one head): pos_w[min(i - j, P - 1)] + time_w[bucket(ts_i - ts_j)], bucket =
// min(floor(log2(max(|dt|, 1)) * ln 2 / 0.301), 63), with the tables and the timestamps (one
// sequence's, shared by every batch entry: the experiment times the gathers, it does not
// compute the batch's real bias) in global memory, filled with plausible values at start-up.
#pragma once
#include <cstdio>

namespace hstu_exp {
constexpr int kPos = 1024;
__device__ float pos_w[kPos];
__device__ float time_w[64];
__device__ int ts[8192];

__global__ void fill() {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < 8192; i += gridDim.x * blockDim.x) {
    unsigned h = i * 2654435761u;
    ts[i] = i * 997 + (h >> 20);          // increasing, irregular gaps: time buckets spread out
    if (i < kPos) pos_w[i] = 0.001f * (h >> 22);
    if (i < 64) time_w[i] = 0.002f * (h >> 23);
  }
}
struct Fill {
  Fill() {
    fill<<<8, 256>>>();
    if (cudaDeviceSynchronize() != cudaSuccess) printf("hstu_exp: table fill failed\n");
  }
};
static Fill fill_at_start;
}  // namespace hstu_exp

namespace cutlass::fmha::collective {

template<class ElementAccumulator, class Fusion, class Params>
struct CollectiveSilu {
  Params const& params;
  CUTLASS_DEVICE CollectiveSilu(Params const& params) : params(params) {}

  template<class AccPV, class TiledMmaPV>
  CUTLASS_DEVICE auto init(AccPV const& acc_pv, TiledMmaPV const& tiled_mma_pv) {
    Tensor s = make_fragment_like<float>(size<0>(layout_acc_mn(tiled_mma_pv, acc_pv.layout())));
    return make_tuple(s, s);
  }

  CUTLASS_DEVICE static float tanh_approx(float x) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  }

  // h = (s + bias) / 2, the masked (-inf) ones clamped so that h tanh(h) + h = 0 exactly.
  // HSTU_BIAS == 1: every score loads both timestamps and both weights (4 gathers + a log2);
  // HSTU_BIAS == 2: the (M, N) view of the thread's scores, each row's timestamp and each
  // column's loaded once per tile (2 gathers + a log2 per score);
  // HSTU_BIAS == 3 / 4: as 1 with the position weight only / the time weight only.
  template<class AccQK, class TiledMmaQK, class CountQK>
  CUTLASS_DEVICE void halve(AccQK& acc_qk, TiledMmaQK const& tiled_mma_qk, CountQK const& count_qk) {
#if HSTU_BIAS == 2
    Tensor s_mn = make_tensor(acc_qk.data(), layout_acc_mn(tiled_mma_qk, acc_qk.layout()));
    Tensor c_mn = make_tensor(count_qk.data(), layout_acc_mn(tiled_mma_qk, count_qk.layout()));
    int tk[size<1>(s_mn)];
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < size<1>(s_mn); j++) {
      tk[j] = hstu_exp::ts[get<1>(c_mn(0, j))];
    }
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size<0>(s_mn); i++) {
      int qi = get<0>(c_mn(i, 0));
      int tq = hstu_exp::ts[qi];
      CUTLASS_PRAGMA_UNROLL
      for (int j = 0; j < size<1>(s_mn); j++) {
        int rel = min(max(qi - get<1>(c_mn(i, j)), 0), hstu_exp::kPos - 1);
        float x = fmaxf(float(::abs(tq - tk[j])), 1.f);
        int b = min(int(__log2f(x) * 2.30279f), 63);
        s_mn(i, j) = (fmaxf(s_mn(i, j), -1e30f) + hstu_exp::pos_w[rel] + hstu_exp::time_w[b]) * 0.5f;
      }
    }
#else
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(acc_qk); i++) {
      float s = fmaxf(acc_qk(i), -1e30f);
#if defined(HSTU_BIAS)
      int qi = get<0>(count_qk(i));
      int kj = get<1>(count_qk(i));
#if HSTU_BIAS != 4    // 3: the position weight only
      s += hstu_exp::pos_w[min(max(qi - kj, 0), hstu_exp::kPos - 1)];
#endif
#if HSTU_BIAS != 3    // 4: the time weight only
      float x = fmaxf(float(::abs(hstu_exp::ts[qi] - hstu_exp::ts[kj])), 1.f);
      s += hstu_exp::time_w[min(int(__log2f(x) * 2.30279f), 63)];
#endif
#endif
      acc_qk(i) = s * 0.5f;
    }
#endif
  }

  template<class Frag>
  CUTLASS_DEVICE static void silu(Frag& f) {
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(f); i++) {
      float h = f(i);
      f(i) = h * tanh_approx(h) + h;
    }
  }

  template<class AccQK, class TiledMmaQK, class CountQK, class State, class ProblemShape>
  CUTLASS_DEVICE auto step(AccQK& acc_qk, TiledMmaQK const& tiled_mma_qk, CountQK const& count_qk, State&, ProblemShape const& problem_shape) {
    Fusion{}.before_softmax(acc_qk, count_qk, problem_shape);
    halve(acc_qk, tiled_mma_qk, count_qk);
    silu(acc_qk);
  }

  template<bool kUseFusion=true, class AccQK, class TiledMmaQK, class CountQK, class State, class AccPV, class TiledMmaPV, class ProblemShape>
  CUTLASS_DEVICE auto step_interleave_begin(AccQK& acc_qk, TiledMmaQK const& tiled_mma_qk, CountQK const& count_qk, State&, AccPV&, TiledMmaPV const&, ProblemShape const& problem_shape) {
    if constexpr (kUseFusion) {
      Fusion{}.before_softmax(acc_qk, count_qk, problem_shape);
    }
    halve(acc_qk, tiled_mma_qk, count_qk);
  }

  template<class AccQK_MN, class State>
  CUTLASS_DEVICE auto step_interleave_step(AccQK_MN& acc_qk_mn, State&) {
    silu(acc_qk_mn);
  }

  template<class State, class AccPV, class TiledMmaPV>
  CUTLASS_DEVICE auto tail(State& state, AccPV& acc_pv, TiledMmaPV const&) {
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(acc_pv); i++) {
      acc_pv(i) *= 1.f / 1024.f;
    }
    return get<0>(state);
  }
};

}  // namespace cutlass::fmha::collective
