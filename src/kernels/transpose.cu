// Byte transpose for FP8 data (e4m3 / e5m2 bytes, or any 1-byte elements):
//
//   out [cols, rows] = in [rows, cols]^T, both row-major:  out[c * rows + r] = in[r * cols + c]
//
// Bytes move unchanged, so a per-tensor-scaled FP8 tensor and its transpose share one scale: the
// backward pass gets the K-major W^T that Hopper FP8 GEMMs need from the cached FP8 W without
// quantizing again. Data movement only, so there is no backward formula.
//
// Fast path (rows % 16 == 0, cols % 16 == 0, both pointers 16-byte aligned; every model shape):
// a block of 256 threads moves one 128 x 128-byte tile through 16 KiB of shared memory, where the
// tile is held transposed: shared row c (32 words) holds tile column c, word w of it tile rows
// 4w .. 4w+3.
//   load:  thread t reads tile rows 4*(t/8) .. +4 at columns 16*(t%8) .. +16 with four 16-byte
//          loads (a warp reads 4 rows x 128 contiguous bytes per instruction: whole cache lines),
//          transposes the 4 x 16 bytes in registers as four 4 x 4 byte blocks (__byte_perm) and
//          stores 16 words, word (c, t/8) for each of its 16 columns c.
//   store: thread t reads tile rows 16*(t%8) .. +16 of tile column t/8 + 32*p (p = 0..3) as one
//          16-byte shared load and writes them to out row c0 + column with one 16-byte store
//          (8 lanes write 128 contiguous bytes of an out row, a warp 4 out rows).
// Bank conflicts: word w of shared row c is stored at w ^ (4 * ((c / 16) % 8)) (an XOR swizzle).
// A load-phase store instruction of a warp has 8 column chunks c/16 and 4 consecutive w sharing
// w / 4, so the XOR spreads the 32 lanes over all 32 banks. The swizzle changes only bits 2..4 of
// w, so each aligned 4-word group stays contiguous (one 16-byte access) and the 8 lanes of a
// quarter warp in the store phase read 8 different groups of one shared row: all 32 banks again.
// Tiles at the edge of sizes that are multiples of 16 but not of 128 skip the 16-byte chunks
// outside the matrix (with both sizes multiples of 16 a chunk is entirely inside or outside).
//
// Generic path (any other size or alignment): 32 x 32 tiles moved one byte per access, the tile
// widened to 32-bit words in shared memory with a row pitch of 33 words so that column reads hit
// 32 different banks. Still coalesced (a warp touches 32 contiguous bytes), but with 16 times the
// memory instructions per byte of the fast path.
//
// Both kernels visit tiles with a grid-stride loop in x (row tiles) and y (column tiles), so any
// matrix fits the grid limits (gridDim.y <= 65535); all offsets are 64-bit.
#include "kernels/transpose.h"

#include <algorithm>
#include <climits>
#include <cstdint>

#include "core/errors.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

constexpr int kThreads = 256;
constexpr std::int64_t kMaxGridX = INT_MAX;
constexpr std::int64_t kMaxGridY = 65535;

// ---- fast path: 128 x 128-byte tiles, 16-byte accesses ------------------------------------------

constexpr int kTile = 128;                         // tile edge in bytes (elements)
constexpr int kChunk = 16;                         // bytes per vector access
constexpr int kChunksPerRow = kTile / kChunk;      // 8
constexpr int kWordsPerRow = kTile / 4;            // 32 words in a shared row
constexpr int kRowsPerThread = 4;                  // load phase: a 4 x 16-byte block per thread
constexpr int kColumnsPerPass = kThreads / kChunksPerRow;  // store phase: 32 tile columns per pass
static_assert(kChunksPerRow * (kTile / kRowsPerThread) == kThreads, "load phase covers the tile once");
static_assert(kTile % kColumnsPerPass == 0, "store phase covers the tile in whole passes");

using Words = Vec<std::uint32_t>;  // 16 bytes as 4 words

// Shared-memory word index of word w (tile rows 4w .. 4w+3) of tile column c (see the head comment).
__device__ __forceinline__ int swizzled_word(int c, int w) {
  return c * kWordsPerRow + (w ^ (((c / kChunk) % kChunksPerRow) * 4));
}

// a, b, c, d: 4 bytes of 4 consecutive rows (byte k = column k). column[k]: column k of those rows
// (byte i = row i).
__device__ __forceinline__ void transpose_4x4(std::uint32_t a, std::uint32_t b, std::uint32_t c, std::uint32_t d,
                                              std::uint32_t (&column)[4]) {
  const std::uint32_t ab01 = __byte_perm(a, b, 0x5140);  // a0 b0 a1 b1
  const std::uint32_t ab23 = __byte_perm(a, b, 0x7362);  // a2 b2 a3 b3
  const std::uint32_t cd01 = __byte_perm(c, d, 0x5140);  // c0 d0 c1 d1
  const std::uint32_t cd23 = __byte_perm(c, d, 0x7362);  // c2 d2 c3 d3
  column[0] = __byte_perm(ab01, cd01, 0x5410);           // a0 b0 c0 d0
  column[1] = __byte_perm(ab01, cd01, 0x7632);           // a1 b1 c1 d1
  column[2] = __byte_perm(ab23, cd23, 0x5410);           // a2 b2 c2 d2
  column[3] = __byte_perm(ab23, cd23, 0x7632);           // a3 b3 c3 d3
}

// in [r0 .. r0+128, c0 .. c0+128) -> tile, transposed.
__device__ __forceinline__ void load_tile_16b(std::uint32_t* tile, const std::uint8_t* in, std::int64_t rows,
                                              std::int64_t cols, std::int64_t r0, std::int64_t c0) {
  const int chunk = threadIdx.x % kChunksPerRow;  // tile columns 16*chunk .. +16
  const int word = threadIdx.x / kChunksPerRow;   // tile rows 4*word .. +4
  const std::int64_t r = r0 + kRowsPerThread * word, c = c0 + kChunk * chunk;
  Words row[kRowsPerThread] = {};
  if (r < rows && c < cols) {  // sizes are multiples of 16: the 4 x 16 block is whole
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i)
      row[i] = load_vec(reinterpret_cast<const std::uint32_t*>(in + (r + i) * cols + c));
  }
#pragma unroll
  for (int j = 0; j < Words::kSize; ++j) {  // tile columns 16*chunk + 4j .. +4
    std::uint32_t column[4];
    transpose_4x4(row[0][j], row[1][j], row[2][j], row[3][j], column);
#pragma unroll
    for (int k = 0; k < 4; ++k) tile[swizzled_word(kChunk * chunk + 4 * j + k, word)] = column[k];
  }
}

// tile -> out [c0 .. c0+128, r0 .. r0+128).
__device__ __forceinline__ void store_tile_16b(std::uint8_t* out, const std::uint32_t* tile, std::int64_t rows,
                                               std::int64_t cols, std::int64_t r0, std::int64_t c0) {
  const int chunk = threadIdx.x % kChunksPerRow;  // tile rows 16*chunk .. +16 = words 4*chunk .. +4
  const std::int64_t r = r0 + kChunk * chunk;
#pragma unroll
  for (int pass = 0; pass < kTile / kColumnsPerPass; ++pass) {
    const int column = threadIdx.x / kChunksPerRow + pass * kColumnsPerPass;
    const Words v = load_vec(tile + swizzled_word(column, 4 * chunk));
    const std::int64_t c = c0 + column;
    if (c < cols && r < rows) store_vec(reinterpret_cast<std::uint32_t*>(out + c * rows + r), v);
  }
}

__global__ void __launch_bounds__(kThreads)
    transpose_tiles_16b(std::uint8_t* __restrict__ out, const std::uint8_t* __restrict__ in, std::int64_t rows,
                        std::int64_t cols) {
  __shared__ alignas(16) std::uint32_t tile[kTile * kWordsPerRow];
  const std::int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
  for (std::int64_t tc = blockIdx.y; tc < col_tiles; tc += gridDim.y) {
    for (std::int64_t tr = blockIdx.x; tr < row_tiles; tr += gridDim.x) {
      load_tile_16b(tile, in, rows, cols, tr * kTile, tc * kTile);
      __syncthreads();
      store_tile_16b(out, tile, rows, cols, tr * kTile, tc * kTile);
      __syncthreads();  // the next tile overwrites shared memory
    }
  }
}

// ---- generic path: 32 x 32 tiles, one byte per access -------------------------------------------

constexpr int kSmallTile = 32;
constexpr int kSmallRowsPerPass = kThreads / kSmallTile;  // 8

__global__ void __launch_bounds__(kThreads)
    transpose_tiles_bytewise(std::uint8_t* __restrict__ out, const std::uint8_t* __restrict__ in, std::int64_t rows,
                             std::int64_t cols) {
  __shared__ std::uint32_t tile[kSmallTile][kSmallTile + 1];  // +1: column reads hit 32 banks
  const int lane = threadIdx.x % kSmallTile, first = threadIdx.x / kSmallTile;
  const std::int64_t row_tiles = (rows + kSmallTile - 1) / kSmallTile;
  const std::int64_t col_tiles = (cols + kSmallTile - 1) / kSmallTile;
  for (std::int64_t tc = blockIdx.y; tc < col_tiles; tc += gridDim.y) {
    for (std::int64_t tr = blockIdx.x; tr < row_tiles; tr += gridDim.x) {
      const std::int64_t r0 = tr * kSmallTile, c0 = tc * kSmallTile;
      for (int i = first; i < kSmallTile; i += kSmallRowsPerPass) {
        const std::int64_t r = r0 + i, c = c0 + lane;
        if (r < rows && c < cols) tile[i][lane] = in[r * cols + c];
      }
      __syncthreads();
      for (int i = first; i < kSmallTile; i += kSmallRowsPerPass) {
        const std::int64_t c = c0 + i, r = r0 + lane;  // out row c, out column r
        if (c < cols && r < rows) out[c * rows + r] = static_cast<std::uint8_t>(tile[lane][i]);
      }
      __syncthreads();  // the next tile overwrites shared memory
    }
  }
}

// ---- host side ----------------------------------------------------------------------------------

dim3 tile_grid(std::int64_t rows, std::int64_t cols, int tile) {
  const std::int64_t row_tiles = (rows + tile - 1) / tile, col_tiles = (cols + tile - 1) / tile;
  return dim3(static_cast<unsigned>(std::min(row_tiles, kMaxGridX)), static_cast<unsigned>(std::min(col_tiles, kMaxGridY)));
}

}  // namespace

void transpose_bytes(void* out, const void* in, std::int64_t rows, std::int64_t cols, cudaStream_t stream) {
  LLMQ_REQUIRE(rows > 0 && cols > 0, "transpose_bytes: rows={} cols={}; both sizes must be at least 1", rows, cols);
  LLMQ_REQUIRE(rows <= INT64_MAX / cols, "transpose_bytes: rows={} x cols={} overflows a 64-bit byte count", rows,
               cols);
  LLMQ_REQUIRE(out != nullptr && in != nullptr,
               "transpose_bytes: null pointer (out={}, in={}) for a [{}, {}] matrix; pass device buffers of {} bytes",
               out, in, rows, cols, rows * cols);
  const auto bytes = static_cast<std::uintptr_t>(rows * cols);
  const auto out_begin = reinterpret_cast<std::uintptr_t>(out), in_begin = reinterpret_cast<std::uintptr_t>(in);
  LLMQ_REQUIRE(out_begin + bytes <= in_begin || in_begin + bytes <= out_begin,
               "transpose_bytes: out={} and in={} overlap ({} bytes each); in-place transpose is not supported, "
               "write to a separate buffer",
               out, in, bytes);

  auto* out_bytes = static_cast<std::uint8_t*>(out);
  const auto* in_bytes = static_cast<const std::uint8_t*>(in);
  if (rows % kChunk == 0 && cols % kChunk == 0 && aligned16(out) && aligned16(in)) {
    transpose_tiles_16b<<<tile_grid(rows, cols, kTile), kThreads, 0, stream>>>(out_bytes, in_bytes, rows, cols);
  } else {
    transpose_tiles_bytewise<<<tile_grid(rows, cols, kSmallTile), kThreads, 0, stream>>>(out_bytes, in_bytes, rows,
                                                                                          cols);
  }
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace llmq::kernels
