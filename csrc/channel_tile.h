// The v2 forward and grad_x for one group of many channels (groups = 1, C >= kTileMinChannels),
// written once for the host and the device.
//
// There every channel is filtered by the same weights, so the strip threads of strip.h, which
// hold 4 channels each, would read every weight C / 4 times. Here a block of kTileThreads
// threads owns a tile of kTileRows rows by one band of kBandStrips strips. For each chunk of
// tile_channels() channels it first copies the chunk's source (x, or grad_y for grad_x) over the
// tile and its halo into shared memory (zeros outside the image), then each thread runs every
// tap of its strip over the whole chunk from there: a kernel row's weights are loaded once per
// chunk, a source row segment is a few aligned 16-byte shared-memory loads, and no source load
// needs a bounds check. Sizes 1, 3, 5 and 7 at dilation 1 only (a halo of 3), with rows that
// strips can read as aligned vectors; any other call takes the strips.
//
// The CUDA kernel (cuda/v2_kernels.cuh) runs the two phases of a chunk with a barrier after each;
// the test harness runs each phase for every thread of a block in turn, the same order.
#pragma once

#include "strip.h"

namespace ddet_ops {

// The fewest channels (with groups = 1) that take the tiles; a build can raise it to time the
// strips on the same shapes (-DDDET_V2_TILE_MIN_CHANNELS=N).
#ifndef DDET_V2_TILE_MIN_CHANNELS
#define DDET_V2_TILE_MIN_CHANNELS 8
#endif
constexpr int64_t kTileMinChannels = DDET_V2_TILE_MIN_CHANNELS;

// Channels a thread sums at a time (a chunk): its sums are that many strips of registers, and
// the chunk's tile 6 * 14 * 136 floats (45 KB) or 4 * 14 * 72 doubles (32 KB) of shared memory.
// 8 float strips spill at 128 registers on sm_80 (in grad_x, whose shifted weights take more).
template <typename acc_t>
constexpr int tile_channels() {
  return sizeof(acc_t) == 8 ? 4 : 6;
}
constexpr int kTileRows = 8;
constexpr int kTileThreads = kTileRows * static_cast<int>(kBandStrips);
// Halo rows above and below the tile: the reach of size 7.
constexpr int kTileHalo = 3;
// Halo columns left and right: the reach rounded up to whole 16-byte chunks of float or double,
// so that every strip's columns in the tile start 16-byte aligned.
constexpr int kTilePad = 4;

template <int kV>
constexpr int tile_row_length() {
  return static_cast<int>(kBandStrips) * kV + 2 * kTilePad;
}

template <int kV>
constexpr int tile_channel_length() {
  return (kTileRows + 2 * kTileHalo) * tile_row_length<kV>();
}

// Whether the forward and grad_x of this call take the channel tiles. `vector`: strips_can_use_vectors.
inline bool takes_channel_tiles(const Geometry& geo, bool vector) {
  if (!vector || geo.groups != 1 || geo.C < kTileMinChannels || geo.dilation != 1) return false;
  for (int k = 0; k < geo.num_sizes; ++k) {
    if (geo.size[k] > 2 * kTileHalo + 1) return false;
  }
  return true;
}

// Tiles are numbered with the band fastest, then the rows of tiles, then the image.
DDET_HOST_DEVICE int64_t tile_bands(const Geometry& geo, int width) {
  return (strips_per_row(geo, width) + kBandStrips - 1) / kBandStrips;
}

DDET_HOST_DEVICE int64_t channel_tile_count(const Geometry& geo, int width) {
  return geo.N * ((geo.H + kTileRows - 1) / kTileRows) * tile_bands(geo, width);
}

// A tile's image and its first row and column.
struct TilePlace {
  int64_t n, h0, w0;
};

DDET_HOST_DEVICE TilePlace tile_place(const Geometry& geo, int width, int64_t tile) {
  const int64_t bands = tile_bands(geo, width), tile_rows = (geo.H + kTileRows - 1) / kTileRows;
  const int64_t band = tile % bands;
  tile /= bands;
  return {tile / tile_rows, tile % tile_rows * kTileRows, band * kBandStrips * width};
}

// Phase 1, by every thread of the block: the chunk of channels from c0 of src (x or grad_y) over the tile
// and its halo into `tile`, 0 outside the image and past the last channel.
template <int kV, typename scalar_t, typename acc_t>
DDET_HOST_DEVICE void load_channel_tile(const Geometry& geo, const scalar_t* __restrict__ src, TilePlace at,
                                        int64_t c0, int thread, acc_t* tile) {
  constexpr int kRow = tile_row_length<kV>(), kChannel = tile_channel_length<kV>();
  const int64_t hw = plane(geo);
  for (int e = thread; e < tile_channels<acc_t>() * kChannel; e += kTileThreads) {
    const int64_t c = c0 + e / kChannel, h = at.h0 - kTileHalo + e % kChannel / kRow;
    const int64_t w = at.w0 - kTilePad + e % kRow;
    const bool inside = c < geo.C && h >= 0 && h < geo.H && w >= 0 && w < geo.W;
    tile[e] = inside ? static_cast<acc_t>(src[(at.n * geo.C + c) * hw + h * geo.W + w]) : acc_t(0);
  }
}

// kV values of the tile at p, 16-byte aligned: one shared-memory load on the device.
template <int kV, typename acc_t>
DDET_HOST_DEVICE void load_tile_chunk(const acc_t* p, acc_t (&out)[kV]) {
  static_assert(kV * sizeof(acc_t) == 16, "tile chunks are 16 bytes");
#if defined(__CUDA_ARCH__)
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  memcpy(out, &v, sizeof(v));
#else
  std::memcpy(out, p, sizeof(out));
#endif
}

// The taps of size kS for a strip at (h, w0) and `count` channels of the tile, forward
// (kGather = false) or grad_x (kGather = true, the inverse window: each tap's weight is the
// neighbour's it came from, read shifted from the aligned chunks around the strip). Per kernel
// row, the row's kS weight strips once, then each channel's source segment from the tile.
// weights: the size's tap 0 plane of this image; tile_at: channel 0 of the tile at the strip's
// row and first column.
template <int kS, bool kGather, int kV, int kTC, typename kernel_t, typename acc_t>
DDET_HOST_DEVICE void tile_size_taps(const Geometry& geo, const kernel_t* weights, const acc_t* tile_at, int count,
                                     int64_t h, int64_t w0, acc_t (&acc)[kTC][kV]) {
  constexpr int kR = kS / 2, kSpan = kV + kS - 1;
  const int64_t hw = plane(geo);
  DDET_ROLLED
  for (int i = 0; i < kS; ++i) {
    const int64_t row = kGather ? h - (i - kR) : h + (i - kR);
    if (row < 0 || row >= geo.H) continue;  // its source values are zeros
    acc_t wt[kS][kV];
    DDET_UNROLL
    for (int j = 0; j < kS; ++j) {
      const kernel_t* plane_ij = weights + (i * kS + j) * hw;
      load_columns<kV, kR, kV, Access::kVector, false>(plane_ij + (kGather ? row : h) * geo.W, w0,
                                                       kGather ? kR - j : 0, geo.W, wt[j]);
    }
    DDET_UNROLL
    for (int c = 0; c < kTC; ++c) {
      if (c >= count) break;
      const acc_t* src = tile_at + c * tile_channel_length<kV>() + (row - h) * tile_row_length<kV>();
      acc_t span[kSpan];
      gather_chunks<kSpan, kR, kV, acc_t>(-kR, span,
                                          [&](int q, acc_t (&chunk)[kV]) { load_tile_chunk(src + q * kV, chunk); });
      DDET_UNROLL
      for (int j = 0; j < kS; ++j) {
        DDET_UNROLL
        for (int v = 0; v < kV; ++v) acc[c][v] += wt[j][v] * span[kGather ? v + kS - 1 - j : v + j];
      }
    }
  }
}

// Phase 2, by every thread of the block: the sums of every size for the thread's strip and the
// chunk's channels, from the tile (of x, or of grad_y for grad_x), written to out.
template <bool kGather, int kV, typename scalar_t, typename kernel_t, typename acc_t, typename Trace>
DDET_HOST_DEVICE void channel_tile_strip(const Geometry& geo, const KernelBank<const kernel_t>& kernels,
                                         scalar_t* __restrict__ out, TilePlace at, int64_t c0, int thread,
                                         const acc_t* tile, Trace& trace) {
  const int64_t h = at.h0 + thread / kBandStrips, w0 = at.w0 + thread % kBandStrips * kV;
  if (h >= geo.H || w0 >= geo.W) return;
  constexpr int kTC = tile_channels<acc_t>();
  const int count = static_cast<int>(geo.C - c0 < kTC ? geo.C - c0 : kTC);
  const acc_t* tile_at = tile + (thread / kBandStrips + kTileHalo) * tile_row_length<kV>() + kTilePad +
                         thread % kBandStrips * kV;
  acc_t acc[kTC][kV];
  zero_sums(acc);
  for (int k = 0; k < geo.num_sizes; ++k) {
    const int s = geo.size[k];
    const kernel_t* weights = kernels.data[k] + at.n * kernels.batch_stride[k];
    trace(kGather ? Pass::kGradXTile : Pass::kForwardTile, s, true, true);
    switch (s) {
      case 1: tile_size_taps<1, kGather>(geo, weights, tile_at, count, h, w0, acc); break;
      case 3: tile_size_taps<3, kGather>(geo, weights, tile_at, count, h, w0, acc); break;
      case 5: tile_size_taps<5, kGather>(geo, weights, tile_at, count, h, w0, acc); break;
      case 7: tile_size_taps<7, kGather>(geo, weights, tile_at, count, h, w0, acc); break;
    }
  }
  scalar_t* out_at = out + (at.n * geo.C + c0) * plane(geo) + h * geo.W + w0;
  DDET_UNROLL
  for (int c = 0; c < kTC; ++c) {
    if (c < count) store_strip<kV>(out_at + c * plane(geo), kV, true, acc[c]);
  }
}

}  // namespace ddet_ops
