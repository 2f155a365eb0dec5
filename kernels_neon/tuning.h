/* Tuning values of the kernels: the defaults below, or a target's own (its TOML's [kernels]
 * table, passed as -DEDGERT_<NAME>=<value> by the build; see edgert/format/target.py). Each says
 * what was measured to choose it. */
#ifndef EDGERT_TUNING_H
#define EDGERT_TUNING_H

/* How far ahead of the kernel the weight stream is prefetched (cold weights come from DRAM): at
 * least DRAM latency x one core's read bandwidth, and no more than L1 holds beside the tables
 * (AVX2: 2 KiB ran at 21 GB/s, 8 KiB at 25, 16 KiB at 28-35 on a 39 GB/s core; AVX-512, 2-bit
 * 4096x4096: 6 KiB 35.5 GB/s, 8 KiB 37.5, 16 KiB 36.2, as prefetched lines and the 32 KiB of
 * tables outgrow a 48 KiB L1; the NEON value is unmeasured on hardware and stays small). */
#ifndef EDGERT_PREFETCH_BYTES
#if defined(__ARM_NEON)
#define EDGERT_PREFETCH_BYTES 2048
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define EDGERT_PREFETCH_BYTES 8192
#else
#define EDGERT_PREFETCH_BYTES 16384
#endif
#endif

/* How far ahead the 8-bit rows (the head) prefetch their weights: a near line into L1 and a far
 * one into L2 (0: none), as L1's few outstanding misses alone do not cover DRAM latency at this
 * rate (SmolLM2's 49152x576 head, cold, 1 thread, AVX-512 rows, AMD EPYC with 28 GB/s one-core
 * reads: L1 only, 512 bytes ahead 3.0 ms, 1 KiB 2.0 ms, 2 KiB and 8 KiB 2.8 ms; 1 KiB + 8 KiB
 * into L2 1.30 ms, 512 + 16 KiB 1.29 ms, 512 + 32 KiB 1.21 ms (26 GB/s); on another day's VM, AVX2
 * rows, L1 only: 512 bytes 2.1 ms, 8 KiB 0.84 ms, so the best distance moves with the machine,
 * and a target may set its own). The LUT tiles gained nothing from a far prefetch (30 layers of
 * SmolLM2's 4-bit weights, 4.2 ms either way). NEON: unmeasured on hardware, the tiles' distance
 * and no far prefetch. */
#ifndef EDGERT_Q8_PREFETCH_BYTES
#if defined(__ARM_NEON)
#define EDGERT_Q8_PREFETCH_BYTES EDGERT_PREFETCH_BYTES
#else
#define EDGERT_Q8_PREFETCH_BYTES 512
#endif
#endif
#ifndef EDGERT_Q8_PREFETCH_FAR_BYTES
#if defined(__ARM_NEON)
#define EDGERT_Q8_PREFETCH_FAR_BYTES 0
#else
#define EDGERT_Q8_PREFETCH_FAR_BYTES 32768
#endif
#endif

/* With two tiles in turn (see EDGERT_PAIR_MIN_TILES), each stream is prefetched this far ahead:
 * the two together keep more lines in flight than one stream did, and less of L1 (2-bit
 * 4096x4096 at 2 threads, AVX-512, two streams: 8 KiB each 12.4x fp32 BLAS, 6 KiB 12.6x, 4 KiB
 * 12.6x; 1 thread 13.0-13.3x, 13.4-13.8x, 13.6-13.8x; 4-bit at 2 threads 7.0x, 7.0x,
 * 6.8-6.9x). */
#ifndef EDGERT_PAIR_PREFETCH_BYTES
#define EDGERT_PAIR_PREFETCH_BYTES (EDGERT_PREFETCH_BYTES * 3 / 4)
#endif

/* After a job a helper thread watches for the next one this many microseconds before sleeping:
 * decode calls come back to back, and waking a sleeping thread costs tens of microseconds. */
#ifndef EDGERT_SPIN_US
#define EDGERT_SPIN_US 50.0
#endif

/* A run of L tiles goes as pairs (i, i + ceil(L/2)), where the ISA has a pair kernel: two weight
 * streams per core, as one read stream leaves DRAM bandwidth unused (reading 1 GiB, one core: one
 * stream 35-36 GB/s, one stream prefetched 8 KiB ahead 38, two streams 40-41; two cores: 63-68,
 * 74, 70-78). AVX-512, in rounds taking turns with fp32 BLAS (three runs, two cores sharing one
 * memory link): 2-bit 4096x4096 11.8-12.3x -> 12.4-12.9x its speed at 2 threads, 13.1-13.3x ->
 * 13.9x at 1; 4-bit 6.7-6.9x -> 6.9-7.1x at 2 threads; 2-bit 4096x11008 11.8-13.3x ->
 * 12.7-14.2x. Runs shorter than this go one tile at a time. */
#ifndef EDGERT_PAIR_MIN_TILES
#define EDGERT_PAIR_MIN_TILES 4
#endif

/* Activation rows per pass over a tile: their tables (~256 KiB) stay in L2 while the tile's
 * planes are reused from L1. */
#ifndef EDGERT_TABLE_BLOCK_BYTES
#define EDGERT_TABLE_BLOCK_BYTES (256 << 10)
#endif

/* From this many activation rows on, uniform weights go through the int8 kernels (i8_gemm.c):
 * unpacking a tile's codes once pays off over the rows. A 4-bit 1536x576 weight at 1 thread (AMD
 * EPYC), int8 path / LUT GEMM: AVX-512 VNNI 0.18 / 0.13 ms for 4 rows, 0.24 / 0.24 for 8, 0.23 /
 * 0.35 for 12; AVX2 0.36 / 0.30 for 8, 0.38 / 0.43 for 12, 0.51 / 0.64 for 16. NEON: unmeasured
 * on hardware, 8. */
#ifndef EDGERT_I8_MIN_ROWS
#if defined(__AVX2__) && !defined(__AVX512VNNI__)
#define EDGERT_I8_MIN_ROWS 12
#else
#define EDGERT_I8_MIN_ROWS 8
#endif
#endif

/* Below this many multiply-adds a parallel section of the forward pass costs more than it
 * saves. */
#ifndef EDGERT_PARALLEL_MIN_WORK
#define EDGERT_PARALLEL_MIN_WORK (1 << 16)
#endif

#endif
