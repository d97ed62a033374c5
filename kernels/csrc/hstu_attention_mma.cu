// streamrec: jagged causal HSTU attention forward with the relative bias fused, in CUDA C++
// with warp-level tensor-core MMAs (mma.sync m16n8k16, bf16 in, fp32 accumulate).
//
// Same math, same tables and same tile table as the per-sequence Triton kernel
// (kernels/hstu_attention.py, _hstu_attn_seq_fwd); written by hand so that what Triton
// decides for us is ours to decide (docs/kernels.md, "The CUDA kernel"):
//
//   * each warp owns 16 query rows of the program's 64 and keeps everything of them in
//     registers in the MMA accumulator layout: the scores, the relative bias (computed
//     there, pair by pair, never converted between layouts), P (the accumulator of
//     QK^T IS the A operand of PV, no shared-memory round trip) and the output;
//   * the bias of a pair is computed once for the HG heads of the program;
//   * K, V and the key timestamps arrive by cp.async (zero-filled past the sequence),
//     one tile ahead; the only block-wide syncs are the two of that double buffer;
//   * a warp whose 16 rows all lie before a diagonal key tile skips it.
//
// Layout: q, k, v (T, H, 64) bf16 with contiguous rows (any row/head strides that keep
// 16-byte alignment); out likewise.  tiles: the (4, G) int32 tile table of _seq_tiles
// (sequence start, length, first query position q0 (may be < 0), int32-safety of the
// sequence's time differences), aligned to BN and sorted longest first.  pos: the position
// weights as float32 (the bf16 values).  lut: (128, 4) int32, one row per quarter octave of
// float32(|dt|): the low-21-bit threshold test value and the two float32 time weights around
// it (kernels/hstu_attention.py: mma_lut).
//
// C ABI for ctypes (kernels/hstu_attention_cuda.py); no torch headers.
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace {

constexpr int D = 64;          // qk_dim = v_dim
constexpr int BM = 64;         // query rows per program: 4 warps x 16
constexpr int NTHREADS = 128;
constexpr int ROWB = D * 2;    // bytes per smem row (8 chunks of 16 B, XOR-swizzled)
constexpr int LUT_BASE = 0x3F800000 >> 21;
constexpr int LUT_CELLS = 128;
constexpr int LUT_BYTES = LUT_CELLS * 16;

struct Args {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  __nv_bfloat16* out;
  const int32_t* tiles;
  const int64_t* ts;
  const float* pos;
  const int4* lut;
  long long sqt, sqh, skt, skh, svt, svh, sot, soh;   // element strides
  int G, max_pos;
  float half_inv_n;                                   // 0.5 / n
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  int n = valid ? 16 : 0;   // 0: zero-fill, nothing read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async8(uint32_t dst, const void* src, bool valid) {
  int n = valid ? 8 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// byte offset of 16-byte chunk c of row r in a swizzled [rows][64] bf16 tile
__device__ __forceinline__ uint32_t swz(int r, int c) { return r * ROWB + ((c ^ (r & 7)) << 4); }

// time_w[bucket(dt)] from the quarter-octave LUT, for 1 <= x < 2^31 (x = max(|dt|, 1))
__device__ __forceinline__ float time_weight(const int4* lut_s, int x) {
  int fb = __float_as_int(static_cast<float>(x));
  int4 e = lut_s[(fb >> 21) - LUT_BASE];
  return (fb & 0x1FFFFF) > e.x ? __int_as_float(e.z) : __int_as_float(e.y);
}

template <bool SAFE>
__device__ __forceinline__ int clamped_dt(int64_t tq, int64_t tk) {
  if (SAFE) {   // |dt| < 2^31 for the whole sequence: the low words' difference is exact
    int d = static_cast<int>(tq) - static_cast<int>(tk);
    return max(abs(d), 1);
  } else {      // buckets saturate below 2^31 (num_time_buckets <= 72, checked by the caller)
    long long d = tq - tk;
    d = d < 0 ? -d : d;
    d = d < 1 ? 1 : (d > 2147483647LL ? 2147483647LL : d);
    return static_cast<int>(d);
  }
}

// The program: rows q0 .. q0+63 of one sequence x HG heads (blockIdx.y = head group).
template <int HG, int BN, bool SAFE>
__device__ __forceinline__ void attend(const Args& a, char* smem, int s, int L, int q0) {
  constexpr int NTN = BN / 8;                        // n-tiles of 8 keys
  constexpr int KV_BYTES = BN * ROWB;                // one head's K (or V) tile
  constexpr int STAGE = HG * 2 * KV_BYTES + BN * 8;  // K, V of HG heads + key timestamps
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int h0 = blockIdx.y * HG;

  const int4* lut_s = reinterpret_cast<const int4*>(smem);
  float* pos_s = reinterpret_cast<float*>(smem + LUT_BYTES);
  const int pos_n = min(L, a.max_pos);               // rel <= L - 1: only these are read
  char* stage0 = smem + LUT_BYTES + ((a.max_pos * 4 + 127) & ~127);
  const uint32_t st_u32 = smem_u32(stage0);

  auto load_kv = [&](int j0, int buf) {
    const uint32_t base = st_u32 + buf * STAGE;
    #pragma unroll
    for (int i = 0; i < HG * 2 * BN * 8 / NTHREADS; ++i) {
      const int c = tid + i * NTHREADS;
      const int r = (c >> 3) % BN, ch = c & 7, hk = c / (BN * 8), h = hk >> 1;
      const bool ok = j0 + r < L;
      const long long row = s + (ok ? j0 + r : 0);
      const __nv_bfloat16* src = (hk & 1)
          ? a.v + row * a.svt + (h0 + h) * a.svh + ch * 8
          : a.k + row * a.skt + (h0 + h) * a.skh + ch * 8;
      cp_async16(base + hk * KV_BYTES + swz(r, ch), src, ok);
    }
    if (tid < BN) {                                   // key timestamps, 8 bytes each
      const bool ok = j0 + tid < L;
      cp_async8(base + HG * 2 * KV_BYTES + tid * 8, a.ts + s + (ok ? j0 + tid : 0), ok);
    }
  };

  // Q of the program's HG heads into stage 1 (free until the loop's second tile), tile 0 into stage 0
  #pragma unroll
  for (int i = 0; i < HG * BM * 8 / NTHREADS; ++i) {
    const int c = tid + i * NTHREADS;
    const int r = (c >> 3) % BM, ch = c & 7, h = c / (BM * 8);
    const int qp = q0 + r;
    const bool ok = qp >= 0 && qp < L;
    cp_async16(st_u32 + STAGE + h * BM * ROWB + swz(r, ch),
               a.q + (long long)(s + (ok ? qp : 0)) * a.sqt + (h0 + h) * a.sqh + ch * 8, ok);
  }
  cp_async_commit();
  const int kend = min(q0 + BM, L);
  const int n_tiles = (kend + BN - 1) / BN;
  load_kv(0, 0);
  cp_async_commit();
  // the tables: LUT and the position weights this sequence can reach
  for (int i = tid; i < LUT_CELLS; i += NTHREADS) reinterpret_cast<int4*>(smem)[i] = a.lut[i];
  for (int i = tid; i < pos_n; i += NTHREADS) pos_s[i] = a.pos[i];

  // this thread's two query rows
  const int r0 = warp * 16 + g;
  const int qp0 = q0 + r0, qp1 = qp0 + 8;
  const int64_t tq0 = a.ts[s + min(max(qp0, 0), L - 1)];
  const int64_t tq1 = a.ts[s + min(max(qp1, 0), L - 1)];
  const int wq_last = q0 + warp * 16 + 15;            // the warp's last row position

  cp_async_wait<1>();
  __syncthreads();
  uint32_t qf[HG][4][4];                               // A fragments: head, 16-wide d slice
  #pragma unroll
  for (int h = 0; h < HG; ++h)
    #pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      ldsm_x4(st_u32 + STAGE + h * BM * ROWB + swz(warp * 16 + (lane & 15), 2 * kk + (lane >> 4)),
              qf[h][kk][0], qf[h][kk][1], qf[h][kk][2], qf[h][kk][3]);
  __syncthreads();                                    // stage 1 is free again

  float o[HG][8][4];
  #pragma unroll
  for (int h = 0; h < HG; ++h)
    #pragma unroll
    for (int i = 0; i < 8; ++i) o[h][i][0] = o[h][i][1] = o[h][i][2] = o[h][i][3] = 0.f;

  const int full_end = max(q0, 0);                    // key tiles below it are fully visible
  for (int it = 0; it < n_tiles; ++it) {
    const int j0 = it * BN;
    if (it + 1 < n_tiles) load_kv(j0 + BN, (it + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const bool diag = j0 + BN > full_end;
    if (j0 <= wq_last) {                              // else: every pair of this warp is masked
      const uint32_t kb = st_u32 + (it & 1) * STAGE;
      const int64_t* tsk = reinterpret_cast<const int64_t*>(stage0 + (it & 1) * STAGE + HG * 2 * KV_BYTES);
      // relative bias of the warp's 16 x BN pairs, shared by the HG heads
      float bias[NTN][4];
      #pragma unroll
      for (int nt = 0; nt < NTN; ++nt) {
        const int c = nt * 8 + 2 * t;
        const longlong2 tk = *reinterpret_cast<const longlong2*>(tsk + c);
        const int jc = j0 + c;
        int rel[4] = {qp0 - jc, qp0 - jc - 1, qp1 - jc, qp1 - jc - 1};
        const int dts[4] = {clamped_dt<SAFE>(tq0, tk.x), clamped_dt<SAFE>(tq0, tk.y),
                            clamped_dt<SAFE>(tq1, tk.x), clamped_dt<SAFE>(tq1, tk.y)};
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int ri = diag ? min(max(rel[e], 0), pos_n - 1) : min(rel[e], pos_n - 1);
#if defined(SR_NO_BIAS)
          bias[nt][e] = 0.f * ri * dts[e];
#elif defined(SR_NO_TIME)
          bias[nt][e] = pos_s[ri] + 0.f * dts[e];
#else
          bias[nt][e] = pos_s[ri] + time_weight(lut_s, dts[e]);
#endif
        }
      }
      #pragma unroll
      for (int h = 0; h < HG; ++h) {
        const uint32_t kh = kb + (2 * h) * KV_BYTES, vh = kb + (2 * h + 1) * KV_BYTES;
        float sc[NTN][4];
        #pragma unroll
        for (int nt = 0; nt < NTN; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
        #pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          #pragma unroll
          for (int p = 0; p < NTN / 2; ++p) {
            uint32_t b0, b1, b2, b3;
            ldsm_x4(kh + swz(16 * p + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
            mma16816(sc[2 * p], qf[h][kk], b0, b1);
            mma16816(sc[2 * p + 1], qf[h][kk], b2, b3);
          }
        }
        // SiLU(s + bias) / n = x * (tanh(x/2) * n/2 + n/2), causal mask on the diagonal tiles
        uint32_t pf[NTN / 2][4];
        #pragma unroll
        for (int nt = 0; nt < NTN; ++nt) {
          float x[4];
          #pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float y = sc[nt][e] + bias[nt][e];
            x[e] = y * (tanh_approx(0.5f * y) * a.half_inv_n + a.half_inv_n);
          }
          if (diag) {
            const int jc = j0 + nt * 8 + 2 * t;
            if (qp0 < jc) x[0] = 0.f;
            if (qp0 < jc + 1) x[1] = 0.f;
            if (qp1 < jc) x[2] = 0.f;
            if (qp1 < jc + 1) x[3] = 0.f;
          }
          pf[nt >> 1][(nt & 1) * 2 + 0] = pack_bf16(x[0], x[1]);
          pf[nt >> 1][(nt & 1) * 2 + 1] = pack_bf16(x[2], x[3]);
        }
        #pragma unroll
        for (int ks = 0; ks < NTN / 2; ++ks) {
          #pragma unroll
          for (int qd = 0; qd < 4; ++qd) {
            uint32_t b0, b1, b2, b3;
            ldsm_x4_t(vh + swz(16 * ks + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * qd + (lane >> 4)), b0, b1, b2, b3);
            mma16816(o[h][2 * qd], pf[ks], b0, b1);
            mma16816(o[h][2 * qd + 1], pf[ks], b2, b3);
          }
        }
      }
    }
    __syncthreads();                                  // the buffer is overwritten next iteration
  }

  // epilogue: rows with 0 <= position < L
  #pragma unroll
  for (int h = 0; h < HG; ++h) {
    __nv_bfloat16* ob = a.out + (h0 + h) * a.soh + 2 * t;
    #pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (qp0 >= 0 && qp0 < L)
        *reinterpret_cast<uint32_t*>(ob + (long long)(s + qp0) * a.sot + 8 * i) = pack_bf16(o[h][i][0], o[h][i][1]);
      if (qp1 >= 0 && qp1 < L)
        *reinterpret_cast<uint32_t*>(ob + (long long)(s + qp1) * a.sot + 8 * i) = pack_bf16(o[h][i][2], o[h][i][3]);
    }
  }
}

template <int HG, int BN, int MINB>
__global__ void __launch_bounds__(NTHREADS, MINB) hstu_attn_mma_kernel(const Args a) {
  extern __shared__ __align__(128) char smem[];
  const int pid = blockIdx.x;
  const int L = a.tiles[a.G + pid];
  if (L == 0) return;                                 // an empty column of the table
  const int s = a.tiles[pid], q0 = a.tiles[2 * a.G + pid];
  if (a.tiles[3 * a.G + pid])
    attend<HG, BN, true>(a, smem, s, L, q0);
  else
    attend<HG, BN, false>(a, smem, s, L, q0);
}

template <int HG, int BN, int MINB>
int launch(const Args& a, int n_groups, cudaStream_t stream) {
  constexpr int STAGE = HG * 2 * BN * ROWB + BN * 8;
  static_assert(HG * BM * ROWB <= STAGE, "Q must fit in one stage");
  const size_t smem = LUT_BYTES + ((a.max_pos * 4 + 127) & ~127) + 2 * STAGE;
  auto kern = hstu_attn_mma_kernel<HG, BN, MINB>;
  if (cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess) return 2;
  dim3 grid(a.G, n_groups);
  kern<<<grid, NTHREADS, smem, stream>>>(a);
  return cudaGetLastError() == cudaSuccess ? 0 : 3;
}

}  // namespace

extern "C" {
int streamrec_hstu_attn_abi_version() { return 1; }

// Returns 0 on success, 1 for an unsupported (heads, block_n, min_blocks), 2/3 for CUDA errors.
int streamrec_hstu_attn_fwd(const void* q, const void* k, const void* v, void* out, const void* tiles,
                            const void* ts, const void* pos, const void* lut,
                            long long sqt, long long sqh, long long skt, long long skh,
                            long long svt, long long svh, long long sot, long long soh,
                            int G, int n_groups, int max_pos, float inv_n, int heads, int block_n,
                            int min_blocks, void* stream) {
  Args a{static_cast<const __nv_bfloat16*>(q), static_cast<const __nv_bfloat16*>(k),
         static_cast<const __nv_bfloat16*>(v), static_cast<__nv_bfloat16*>(out),
         static_cast<const int32_t*>(tiles), static_cast<const int64_t*>(ts), static_cast<const float*>(pos),
         static_cast<const int4*>(lut), sqt, sqh, skt, skh, svt, svh, sot, soh, G, max_pos, 0.5f * inv_n};
  cudaStream_t st = static_cast<cudaStream_t>(stream);
#define SR_CASE(H, N, M) if (heads == H && block_n == N && min_blocks == M) return launch<H, N, M>(a, n_groups, st);
  SR_CASE(1, 64, 2) SR_CASE(2, 32, 2) SR_CASE(2, 64, 2) SR_CASE(2, 32, 3) SR_CASE(4, 32, 1) SR_CASE(4, 32, 2)
  SR_CASE(4, 64, 1)
#undef SR_CASE
  return 1;
}
}
