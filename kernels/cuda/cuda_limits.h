/*
 * cuda_limits.h - the CUDA backend's sizing constants, in plain C: the kernels use them,
 * and so does kernels/cuda_reserve.c, which computes the backend's scratch without CUDA
 * (memory plans, `tandem plan`).
 */
#ifndef KERN_CUDA_LIMITS_H
#define KERN_CUDA_LIMITS_H

/* Keys per segment of the attention's canonical split (attention.cu). */
#define CU_ATTN_SEG 512
/* Split-K partial sums and attention segments: at most this many floats each. */
#define CU_PARTIAL_FLOATS   (16u << 20)
#define CU_ATTN_PART_FLOATS (8u << 20)
/* Token-expert pairs per tile of a grouped (MoE) product: one mma column group. */
#define CU_MOE_TILE 8

#endif
