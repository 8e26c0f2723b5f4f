/*
 * ctx_default.c - the context `tandem serve` runs with when --ctx-size is not given.
 *
 * Single node: the model's trained context whenever the memory plan (topology/topo_plan.h,
 * what `tandem plan` prints) holds the KV cache of one such sequence plus a batch beside the
 * weights and buffers, else the largest context that fits; the log says which. The memory is
 * the GPU's free memory (on a unified-memory GPU at most MemAvailable) or, on the CPU, the
 * host's MemAvailable. Distributed: the server cannot see the shards' memory, so the old
 * rule stays (the model's context, at most 8192; --ctx-size for more).
 */
#include "api/server/srv.h"

#include "common/check.h"
#include "common/log.h"
#include "kernels/kern_backend.h"
#include "topology/topo_plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* The device the executor will pick (kern_backend_create's rule) and its memory. */
static tdm_status_t device_budget(const srv_config_t *cfg, topo_plan_device_t *kind,
                                  uint64_t *budget, tdm_error_t *err)
{
    kern_device_kind_t k;
    int index = 0;
    bool auto_pick = false;
    const char *dev = cfg->device != NULL ? cfg->device : getenv("TANDEM_DEVICE");
    TDM_CHECK(kern_device_parse(dev, &k, &index, &auto_pick, err));
    uint64_t host = 0;
    if (k == KERN_DEVICE_CUDA && index < kern_gpu_count()) {
        kern_gpu_info_t gi;
        TDM_CHECK(kern_gpu_info(index, &gi, err));
        if (gi.integrated && topo_meminfo_available(NULL, &host, NULL) != TDM_OK) {
            host = UINT64_MAX;
        }
        *kind = TOPO_PLAN_CUDA;
        *budget = topo_gpu_budget(&gi, host);
        return TDM_OK;
    }
    *kind = TOPO_PLAN_CPU;
    return topo_meminfo_available(NULL, budget, err);
}

tdm_status_t srv_default_ctx(const srv_config_t *cfg, const gguf_ctx_t *g, int *n_ctx,
                             size_t *kv_bytes, char *note, size_t note_size, tdm_error_t *err)
{
    mdl_hparams_t hp;
    TDM_CHECK(mdl_hparams_load(g, &hp, err));
    const int legacy = hp.n_ctx_train > 0 && hp.n_ctx_train < 8192 ? hp.n_ctx_train : 8192;
    *n_ctx = legacy;
    *kv_bytes = cfg->kv_bytes;
    bool shards = cfg->n_shards > 0;
    for (int i = 0; i < cfg->n_groups; i++) {
        shards |= cfg->groups[i].n_shards > 0;
    }
    if (shards) {
        snprintf(note, note_size,
                 "%d tokens (distributed: the model's, at most 8192, as the shards' "
                 "memory is not known here; --ctx-size sets it)",
                 legacy);
        return TDM_OK;
    }
    topo_plan_params_t p = {.n_shards = 1,
                            .kv_bytes = cfg->kv_bytes,
                            .batch = cfg->batch,
                            .n_out = cfg->max_running,
                            .spec = cfg->spec_mode != CRD_SPEC_OFF,
                            .spec_max = cfg->spec_max,
                            .mtp = cfg->spec_mode == CRD_SPEC_MTP,
                            .threads = cfg->threads > 0 ? cfg->threads
                                                        : (int)sysconf(_SC_NPROCESSORS_ONLN)};
    uint64_t budget = 0;
    tdm_error_t derr = {0};
    if (device_budget(cfg, &p.device, &budget, &derr) != TDM_OK ||
        topo_kv_type_parse(cfg->kv_type, p.device, &p.kv_type, &derr) != TDM_OK) {
        snprintf(note, note_size, "%d tokens (the memory could not be read: %s)", legacy,
                 tdm_error_msg(&derr));
        return TDM_OK;
    }
    topo_ctx_pick_t pick;
    if (topo_pick_ctx(g, &p, budget, &pick, &derr) != TDM_OK) {
        snprintf(note, note_size, "%d tokens (no memory plan: %s)", legacy, tdm_error_msg(&derr));
        return TDM_OK;
    }
    *n_ctx = pick.ctx;
    *kv_bytes = (size_t)pick.kv_bytes;
    const double gib = 1073741824.0;
    if (cfg->kv_bytes > 0) {
        snprintf(note, note_size,
                 "%d tokens, %s (--kv-memory %.1f MiB holds %llu KV tokens; trained "
                 "for %d)",
                 pick.ctx, pick.trained ? "the model's trained context" : "the most it holds",
                 (double)cfg->kv_bytes / 1048576.0, (unsigned long long)pick.kv_tokens,
                 pick.ctx_train);
    } else if (pick.kv_tokens == 0) {
        snprintf(note, note_size,
                 "%d tokens: the memory plan leaves no room for KV beside the weights "
                 "(%.2f GiB available)",
                 pick.ctx, (double)budget / gib);
    } else {
        snprintf(note, note_size,
                 "%d tokens, %s (trained for %d; KV cache %llu tokens, %llu fit in "
                 "%.2f GiB available%s)",
                 pick.ctx,
                 pick.trained ? "the model's trained context" : "the largest that fits in memory",
                 pick.ctx_train, (unsigned long long)pick.kv_tokens, (unsigned long long)pick.fit,
                 (double)budget / gib,
                 p.device == TOPO_PLAN_CUDA ? " on the GPU" : ", MemAvailable");
    }
    return TDM_OK;
}
