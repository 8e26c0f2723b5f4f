/*
 * cuda_reserve.c - the CUDA backend's op scratch, sized in plain C: the backend carves its
 * reservation from kern_cuda_reserve_sizes (kernels/cuda/backend_cuda.cu), and memory plans
 * (topology/topo_plan.c, `tandem plan`, a GPU shard's fit check) count the same bytes with
 * kern_cuda_reserve_bytes, in builds without CUDA and on machines without a GPU. One
 * formula, so a plan and the allocation cannot drift apart.
 *
 *   act      two buffers of quantized activations for the widest product input, as many
 *            rows as tokens or token-expert pairs (the largest of the three formats)
 *   partial  split-K partial sums, at most CU_PARTIAL_FLOATS floats
 *   attn     attention segment states when a sequence spans more than one segment of
 *            CU_ATTN_SEG keys, at most CU_ATTN_PART_FLOATS floats
 *   MoE      per-expert counts and offsets, the pair lists, the tile list, gate/up/out rows
 *            of every pair
 *   meta     the step metadata (tokens, positions, block tables), device and pinned host
 * each piece 256-byte aligned.
 */
#include "kernels/cuda/cuda_limits.h"
#include "kernels/cuda/qblock.h"
#include "kernels/kern_backend_impl.h"

static uint64_t a256(uint64_t n)
{
    return (n + 255) & ~(uint64_t)255;
}

uint64_t kern_cuda_act_bytes(int fmt, int64_t n_rows, int64_t k)
{
    const uint64_t r = (uint64_t)n_rows, kk = (uint64_t)k;
    uint64_t b = a256(r * kk);
    if (fmt == QB_ACT_Q8_K) {
        b += a256(r * (kk / 256) * 4) + a256(r * (kk / 16) * 4);
    } else {
        b += a256(r * (kk / 32) * 4);
        if (fmt == QB_ACT_Q8_1) {
            b += a256(r * (kk / 32) * 4);
        }
    }
    return b;
}

int kern_cuda_moe_max_tiles(int max_pairs, int n_exp)
{
    return (max_pairs + CU_MOE_TILE - 1) / CU_MOE_TILE + n_exp;
}

void kern_cuda_reserve_sizes(const kern_reserve_t *r, kern_cuda_sizes_t *z)
{
    memset(z, 0, sizeof(*z));
    const int64_t k = r->n_expert_used > 0 ? r->n_expert_used : 0;
    z->max_pairs = r->n_expert > 0 ? (int)(r->n_tok * k) : 0;
    const int64_t rows = r->n_tok > z->max_pairs ? r->n_tok : z->max_pairs;
    for (int f = QB_ACT_Q8_0; f <= QB_ACT_Q8_K; f++) {
        const uint64_t b = kern_cuda_act_bytes(f, rows, r->max_cols);
        z->act = b > z->act ? b : z->act;
    }
    z->act = a256(z->act);
    const uint64_t part = 8u * (uint64_t)rows * (uint64_t)r->max_rows;
    z->partial = part < CU_PARTIAL_FLOATS ? part : CU_PARTIAL_FLOATS;
    const int64_t segs = (r->n_ctx + CU_ATTN_SEG - 1) / CU_ATTN_SEG;
    const uint64_t attn =
        (uint64_t)r->n_tok * (uint64_t)r->n_head * (uint64_t)segs * (uint64_t)(r->head_dim + 2);
    z->attn = segs > 1 ? (attn < CU_ATTN_PART_FLOATS ? attn : CU_ATTN_PART_FLOATS) : 0;
    if (r->n_expert > 0) {
        z->max_tiles = kern_cuda_moe_max_tiles(z->max_pairs, r->n_expert);
        z->cnt = (uint64_t)r->n_expert + 1;
        z->pair = (uint64_t)z->max_pairs;
        z->tiles = (uint64_t)z->max_tiles * 3 + 2; /* + the count of tiles and of pairs */
        z->ff = (uint64_t)z->max_pairs * (uint64_t)r->n_ff_exp;
        z->out = (uint64_t)z->max_pairs * (uint64_t)r->n_embd;
    }
    /* tokens, positions, sequences, outputs and the two offset arrays (6T + 2), and a
     * table of n_ctx / 16 + 1 blocks per token, for each pool with a sliding pool; smaller
     * blocks grow it at the step that needs them */
    const uint64_t tables = (uint64_t)r->n_tok * (uint64_t)(r->n_ctx / 16 + 1);
    z->meta = (uint64_t)(6 * r->n_tok + 2) + (r->swa_tables ? 2 : 1) * tables;
    z->scratch_bytes = 2 * z->act + a256(z->partial * 4) + a256(z->attn * 4) +
                       2 * a256(z->cnt * 4) + 3 * a256(z->pair * 4) + a256(z->tiles * 4) +
                       2 * a256(z->ff * 4) + a256(z->out * 4);
}

uint64_t kern_cuda_reserve_bytes(const kern_reserve_t *r)
{
    kern_cuda_sizes_t z;
    kern_cuda_reserve_sizes(r, &z);
    return z.scratch_bytes + 2 * z.meta * sizeof(int32_t); /* metadata: device + pinned */
}
