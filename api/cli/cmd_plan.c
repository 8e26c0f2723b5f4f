/*
 * cmd_plan.c - `tandem plan --model M.gguf --shards N [--tp T --ep E] [--ctx-size C]
 * [--kv-memory SIZE] [--node-memory SIZE] [--device D] [--kv-type T] [--gpu-memory SIZE]
 * [--mem-bw GBPS] [--streams N [--prompt-tokens N] [--answer-tokens N]] [--cluster FILE]
 * [--max-running N] [--spec MODE [--spec-max K]] [--json]`: the per-shard memory plan of a model
 * split by tensor and expert parallelism (topology/topo_plan.h), printed without loading a tensor,
 * and checked against the memory a shard has: a GPU's free memory when the shards run on one (on a
 * unified-memory GPU at most the host's MemAvailable), else the host's MemAvailable, or
 * --node-memory.
 *
 * --streams N also recommends an engine-group layout for that load (replicas with prefix
 * routing, one TP/EP group, or prefill + decode groups: topology/topo_layout.h holds the
 * rule; this file prints it). --cluster FILE takes the machines from a `tandem serve`
 * cluster file (distinct hosts of its shards) instead of --shards.
 *
 * --gpu-memory SIZE plans for a GPU that need not be here (another machine's, or the tests'
 * on a machine without one): the CUDA backend's accounting with SIZE as its free memory.
 *
 * Exit status: 0 the plan fits, 1 the model or the memory cannot be read, 2 bad options,
 * an impossible split (the message names the constraint) or --device cuda without a GPU,
 * 3 some shard needs more than it has; the plan is printed either way and the refusal with
 * its numbers goes to stderr.
 */
#include "api/cli/cli.h"
#include "kernels/kern_backend.h"
#include "model/gguf.h"
#include "topology/topo_layout.h"
#include "topology/topo_plan.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct plan_opts {
    const char *model;
    topo_plan_params_t p;
    uint64_t node_memory; /* 0: the device's memory                              */
    const char *device;   /* NULL: auto                                          */
    const char *kv_type;  /* NULL: by device                                     */
    uint64_t gpu_memory;  /* > 0: plan for a GPU with this much free, not queried */
    double mem_bw;        /* > 0: memory bandwidth, GB/s, for the decode ceiling  */
    int streams;          /* > 0: recommend a layout for this many streams        */
    int prompt_tokens;    /* new prompt tokens per turn (the layout rule)         */
    int answer_tokens;    /* generated tokens per turn (the layout rule)          */
    const char *cluster;  /* a cluster file: its machines instead of --shards     */
    const char *spec;     /* --spec as serve takes it; NULL: off                  */
    bool json;
} plan_opts_t;

/* The device the plan is for and the memory a shard has there. */
typedef struct plan_device {
    topo_plan_device_t kind;
    int index;            /* the GPU                                             */
    bool queried;         /* info came from the driver (not --gpu-memory)         */
    kern_gpu_info_t info; /* when queried                                        */
    uint64_t host_avail;  /* MemAvailable, when read (0 otherwise)                */
    char label[320];      /* "cpu", "cuda:0 NVIDIA H100 ... (sm_90, 132 SMs)"     */
    uint64_t budget;      /* a shard's memory                                    */
    char budget_src[256]; /* where budget comes from                             */
} plan_device_t;

static void usage(FILE *out)
{
    fputs("usage: tandem plan --model M.gguf --shards N [options]\n"
          "\n"
          "Prints how a model would be split over N shards (one per node) and what each shard\n"
          "needs: weights (attention and dense FFN split by TP, experts by EP with bytes\n"
          "balanced, embeddings/norms/routers replicated), KV cache and buffers; refuses a plan\n"
          "that does not fit a node (exit 3). Reads tensor infos only.\n"
          "\n"
          "  --model FILE         GGUF model (first file of a split model)\n"
          "  --shards N           shards = tp x ep\n"
          "  --tp T, --ep E       tensor / expert parallel degrees (default: a model with\n"
          "                       experts gets ep = N, tp = 1; a dense model tp = N)\n"
          "  --ctx-size C         KV cache tokens per shard (default: the model's context,\n"
          "                       at most 8192)\n"
          "  --kv-memory SIZE     KV cache budget per shard instead, e.g. 2G\n"
          "  --node-memory SIZE   memory a shard has (default: the device's: a GPU's free\n"
          "                       memory, at most MemAvailable on a unified-memory GPU; the\n"
          "                       CPU's MemAvailable)\n"
          "  --device D           auto (GPU 0 when there is one, else the CPU), cpu, cuda or\n"
          "                       cuda:N: the shards' memory and backend scratch (default:\n"
          "                       TANDEM_DEVICE, else auto, as serve and shard choose)\n"
          "  --kv-type T          KV cache rows: f32, f16, q8_0 (default: f16 on a GPU, f32 on\n"
          "                       the CPU, as serve and shard choose)\n"
          "  --gpu-memory SIZE    plan for a GPU with SIZE free without asking the driver (a\n"
          "                       GPU elsewhere, or none here); implies --device cuda\n"
          "  --batch N            tokens per step for the buffer estimate (default 512)\n"
          "  --threads N          kernel threads per shard (default: CPUs of this machine)\n"
          "  --experts RULE       balanced (bytes, default) or contiguous (the shard loader's\n"
          "                       rule without per-layer ranges: n_expert / ep consecutive experts "
          "per group)\n"
          "  --mem-bw GBPS        memory bandwidth of a shard in GB/s (a DGX Spark: 273): prints\n"
          "                       the decode ceiling, bandwidth / weight bytes read per token\n"
          "  --streams N          also recommend an engine-group layout for N concurrent\n"
          "                       conversations: replicas with prefix routing, one TP/EP group,\n"
          "                       or prefill + decode groups, and why (docs/distributed.md)\n"
          "  --prompt-tokens N    new prompt tokens per turn that no cache holds (default 0:\n"
          "                       a shared prompt the prefix cache keeps)\n"
          "  --answer-tokens N    tokens generated per turn (default 128)\n"
          "  --cluster FILE       a `tandem serve` cluster file: its distinct hosts are the\n"
          "                       machines (instead of --shards)\n"
          "  --max-running N      sequences per step, as serve's (default 64): logits rows and\n"
          "                       a hybrid model's recurrent state slots\n"
          "  --spec MODE          the speculative mode serve will run: off (default), ngram,\n"
          "                       draft (the draft model's own cache is not counted) or mtp\n"
          "                       (the MTP block runs: one more attention layer's K/V per token);\n"
          "                       other than off, logits rows for the drafts\n"
          "  --spec-max K         drafted tokens per sequence, as serve's (default 8)\n"
          "  --json               one JSON object (every tensor's bytes per shard)\n",
          out);
}

static int parse_int(const char *opt, const char *v, int lo, int hi, int *out)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end != '\0' || x < lo || x > hi) {
        fprintf(stderr, "tandem plan: %s wants an integer in [%d, %d], got '%s'\n", opt, lo, hi, v);
        return -1;
    }
    *out = (int)x;
    return 0;
}

/* The machines of a cluster file: the distinct hosts of its shards, in the one-group form
 * ("shards") or over every group's. */
static int cluster_machines(const char *path, int *out)
{
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (root == NULL) {
        fprintf(stderr, "tandem plan: --cluster %s: %s (line %d)\n", path, je.text, je.line);
        return -1;
    }
    json_t *lists[64];
    int n_lists = 0;
    json_t *groups = json_object_get(root, "groups");
    if (json_is_array(groups)) {
        size_t i;
        json_t *g;
        json_array_foreach(groups, i, g)
        {
            if (n_lists < 64 && json_is_array(json_object_get(g, "shards"))) {
                lists[n_lists++] = json_object_get(g, "shards");
            }
        }
    } else if (json_is_array(json_object_get(root, "shards"))) {
        lists[n_lists++] = json_object_get(root, "shards");
    }
    char hosts[256][64];
    int n = 0;
    for (int l = 0; l < n_lists; l++) {
        size_t i;
        json_t *a;
        json_array_foreach(lists[l], i, a)
        {
            const char *addr = json_string_value(a);
            const char *colon = addr != NULL ? strrchr(addr, ':') : NULL;
            size_t len = colon != NULL ? (size_t)(colon - addr) : 0;
            if (len == 0 || len >= sizeof(hosts[0])) {
                fprintf(stderr, "tandem plan: --cluster %s: '%s' is not HOST:PORT\n", path,
                        addr != NULL ? addr : "(not a string)");
                json_decref(root);
                return -1;
            }
            int k = 0;
            while (k < n && !(strlen(hosts[k]) == len && memcmp(hosts[k], addr, len) == 0)) {
                k++;
            }
            if (k == n && n < 256) {
                memcpy(hosts[n], addr, len);
                hosts[n++][len] = '\0';
            }
        }
    }
    json_decref(root);
    if (n == 0) {
        fprintf(stderr, "tandem plan: --cluster %s lists no shards\n", path);
        return -1;
    }
    *out = n;
    return 0;
}

static int parse_opts(int argc, char **argv, plan_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        }
        if (strcmp(a, "--json") == 0) {
            o->json = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "tandem plan: unknown option or missing value: '%s'\n\n", a);
            usage(stderr);
            return -1;
        }
        const char *v = argv[++i];
        int bad = 0;
        if (strcmp(a, "--model") == 0 || strcmp(a, "-m") == 0) {
            o->model = v;
        } else if (strcmp(a, "--shards") == 0) {
            bad = parse_int(a, v, 1, 1024, &o->p.n_shards);
        } else if (strcmp(a, "--tp") == 0) {
            bad = parse_int(a, v, 1, 1024, &o->p.tp);
        } else if (strcmp(a, "--ep") == 0) {
            bad = parse_int(a, v, 1, 1024, &o->p.ep);
        } else if (strcmp(a, "--ctx-size") == 0 || strcmp(a, "-c") == 0) {
            bad = parse_int(a, v, 1, 1 << 30, &o->p.ctx_size);
        } else if (strcmp(a, "--batch") == 0) {
            bad = parse_int(a, v, 1, 1 << 20, &o->p.batch);
        } else if (strcmp(a, "--threads") == 0) {
            bad = parse_int(a, v, 1, 4096, &o->p.threads);
        } else if (strcmp(a, "--device") == 0) {
            o->device = v;
        } else if (strcmp(a, "--kv-type") == 0) {
            o->kv_type = v;
        } else if (strcmp(a, "--kv-memory") == 0 || strcmp(a, "--node-memory") == 0 ||
                   strcmp(a, "--gpu-memory") == 0) {
            uint64_t *dst = strcmp(a, "--kv-memory") == 0     ? &o->p.kv_bytes
                            : strcmp(a, "--node-memory") == 0 ? &o->node_memory
                                                              : &o->gpu_memory;
            if (!topo_parse_size(v, dst) || *dst == 0) {
                fprintf(stderr, "tandem plan: %s '%s' is not a size (e.g. 2G, 512M)\n", a, v);
                bad = -1;
            }
        } else if (strcmp(a, "--mem-bw") == 0) {
            char *end;
            o->mem_bw = strtod(v, &end);
            if (end == v || *end != '\0' || !(o->mem_bw > 0) || o->mem_bw > 1e6) {
                fprintf(stderr, "tandem plan: --mem-bw wants GB/s, e.g. 273, got '%s'\n", v);
                bad = -1;
            }
        } else if (strcmp(a, "--streams") == 0) {
            bad = parse_int(a, v, 1, 1 << 20, &o->streams);
        } else if (strcmp(a, "--prompt-tokens") == 0) {
            bad = parse_int(a, v, 0, 1 << 24, &o->prompt_tokens);
        } else if (strcmp(a, "--answer-tokens") == 0) {
            bad = parse_int(a, v, 1, 1 << 24, &o->answer_tokens);
        } else if (strcmp(a, "--cluster") == 0) {
            o->cluster = v;
        } else if (strcmp(a, "--spec") == 0) {
            if (strcmp(v, "off") != 0 && strcmp(v, "ngram") != 0 && strcmp(v, "draft") != 0 &&
                strcmp(v, "mtp") != 0) {
                fprintf(stderr, "tandem plan: --spec is off, ngram, draft or mtp, not '%s'\n", v);
                bad = -1;
            }
            o->spec = v;
            o->p.spec = strcmp(v, "off") != 0;
            o->p.mtp = strcmp(v, "mtp") == 0;
        } else if (strcmp(a, "--spec-max") == 0) {
            bad = parse_int(a, v, 1, 16, &o->p.spec_max);
        } else if (strcmp(a, "--max-running") == 0) {
            bad = parse_int(a, v, 1, 1 << 20, &o->p.n_out);
        } else if (strcmp(a, "--experts") == 0) {
            if (strcmp(v, "balanced") == 0) {
                o->p.experts = TOPO_EXPERTS_BALANCED;
            } else if (strcmp(v, "contiguous") == 0) {
                o->p.experts = TOPO_EXPERTS_CONTIGUOUS;
            } else {
                fprintf(stderr, "tandem plan: --experts is balanced or contiguous, not '%s'\n", v);
                bad = -1;
            }
        } else {
            fprintf(stderr, "tandem plan: unknown option '%s'\n\n", a);
            usage(stderr);
            return -1;
        }
        if (bad != 0) {
            return -1;
        }
    }
    if (o->cluster != NULL && o->p.n_shards != 0) {
        fprintf(stderr, "tandem plan: --cluster and --shards both name the machines: give one\n");
        return -1;
    }
    if (o->cluster != NULL && cluster_machines(o->cluster, &o->p.n_shards) != 0) {
        return -1;
    }
    if (o->model == NULL || o->p.n_shards == 0) {
        fprintf(stderr,
                "tandem plan: --model and --shards are required (or --cluster for --shards)\n\n");
        usage(stderr);
        return -1;
    }
    if (o->p.threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        o->p.threads = n > 0 ? (int)n : 1;
    }
    return 0;
}

/* ---- text ---------------------------------------------------------------------------- */

static const char *fmt_bytes(uint64_t b, char *buf, size_t n)
{
    if (b >= (1ull << 30)) {
        snprintf(buf, n, "%.2f GiB", (double)b / (double)(1ull << 30));
    } else if (b >= (1ull << 20)) {
        snprintf(buf, n, "%.1f MiB", (double)b / (double)(1ull << 20));
    } else if (b >= 1024) {
        snprintf(buf, n, "%.1f KiB", (double)b / 1024.0);
    } else {
        snprintf(buf, n, "%" PRIu64 " B", b);
    }
    return buf;
}

/* --device, --gpu-memory and --node-memory: the device planned for and a shard's memory.
 * Returns 0, or the exit status with the message printed. */
static int resolve_device(const plan_opts_t *o, plan_device_t *d)
{
    memset(d, 0, sizeof(*d));
    tdm_error_t err = {0};
    char b1[32], b2[32];
    kern_device_kind_t kind;
    bool auto_pick;
    /* the default the shards themselves take (kern_backend_create): TANDEM_DEVICE, else
     * auto; --gpu-memory names a GPU itself */
    const char *dev = o->device != NULL   ? o->device
                      : o->gpu_memory > 0 ? "cuda"
                                          : getenv("TANDEM_DEVICE");
    if (kern_device_parse(dev, &kind, &d->index, &auto_pick, &err) != TDM_OK) {
        fprintf(stderr, "tandem plan: %s\n", tdm_error_msg(&err));
        return 2;
    }
    d->kind = TOPO_PLAN_CPU;
    if (o->gpu_memory > 0) {
        if (kind == KERN_DEVICE_CPU) {
            fprintf(stderr, "tandem plan: --gpu-memory plans for a GPU, not for --device cpu\n");
            return 2;
        }
        d->kind = TOPO_PLAN_CUDA;
        snprintf(d->label, sizeof(d->label),
                 "cuda:%d, a GPU with %s free (--gpu-memory; not queried)", d->index,
                 fmt_bytes(o->gpu_memory, b1, sizeof(b1)));
    } else if (kind == KERN_DEVICE_CUDA) {
        const int n = kern_gpu_count();
        if (d->index >= n && !auto_pick) {
            /* a plan for a GPU that is not here takes its memory from --gpu-memory */
            fprintf(stderr,
                    "tandem plan: --device %s: no CUDA device %d (this machine has %d GPU%s); "
                    "plan for a GPU elsewhere with --gpu-memory SIZE\n",
                    dev, d->index, n, n == 1 ? "" : "s");
            return 2;
        }
        if (n > 0) {
            if (kern_gpu_info(d->index, &d->info, &err) != TDM_OK) {
                fprintf(stderr, "tandem plan: GPU %d: %s\n", d->index, tdm_error_msg(&err));
                return 1;
            }
            d->kind = TOPO_PLAN_CUDA;
            d->queried = true;
            snprintf(d->label, sizeof(d->label), "cuda:%d %s (sm_%d%d, %d SMs%s): %s free of %s",
                     d->index, d->info.name, d->info.cc_major, d->info.cc_minor, d->info.n_sm,
                     d->info.integrated ? ", unified memory" : "",
                     fmt_bytes(d->info.free_bytes, b1, sizeof(b1)),
                     fmt_bytes(d->info.total_bytes, b2, sizeof(b2)));
        }
    }
    if (d->kind == TOPO_PLAN_CPU) {
        snprintf(d->label, sizeof(d->label), "cpu (%d kernel threads)%s", o->p.threads,
                 auto_pick ? "; no CUDA device here (--gpu-memory SIZE plans for one)" : "");
    }
    if (o->node_memory > 0) {
        d->budget = o->node_memory;
        snprintf(d->budget_src, sizeof(d->budget_src), "--node-memory");
        return 0;
    }
    if (o->gpu_memory > 0) {
        d->budget = o->gpu_memory;
        snprintf(d->budget_src, sizeof(d->budget_src), "--gpu-memory");
        return 0;
    }
    /* the host's MemAvailable: the CPU's budget, and a unified-memory GPU's bound */
    const bool need_host = d->kind == TOPO_PLAN_CPU || d->info.integrated;
    if (need_host && topo_meminfo_available(NULL, &d->host_avail, &err) != TDM_OK) {
        if (d->kind == TOPO_PLAN_CPU) {
            fprintf(stderr, "tandem plan: %s (pass --node-memory)\n", tdm_error_msg(&err));
            return 1;
        }
        d->host_avail = UINT64_MAX; /* the GPU's own number, unbounded */
    }
    if (d->kind == TOPO_PLAN_CPU) {
        d->budget = d->host_avail;
        snprintf(d->budget_src, sizeof(d->budget_src), "MemAvailable of this machine");
    } else if (d->info.integrated) {
        d->budget = topo_gpu_budget(&d->info, d->host_avail);
        snprintf(d->budget_src, sizeof(d->budget_src),
                 "free memory of cuda:%d, at most MemAvailable (unified memory: GPU free %s, "
                 "MemAvailable %s)",
                 d->index, fmt_bytes(d->info.free_bytes, b1, sizeof(b1)),
                 d->host_avail == UINT64_MAX ? "unknown"
                                             : fmt_bytes(d->host_avail, b2, sizeof(b2)));
    } else {
        d->budget = topo_gpu_budget(&d->info, 0);
        snprintf(d->budget_src, sizeof(d->budget_src), "free memory of cuda:%d", d->index);
    }
    return 0;
}

#define COL 15

static void row_label(const char *label)
{
    printf("  %-26s", label);
}

static void row_range(const topo_plan_t *pl, const char *label, size_t off)
{
    row_label(label);
    for (int s = 0; s < pl->n_shards; s++) {
        const topo_range_t *r = (const topo_range_t *)((const char *)&pl->shards[s] + off);
        char buf[32];
        if (r->n > 0) {
            snprintf(buf, sizeof(buf), "%d-%d", r->lo, r->lo + r->n - 1);
        } else {
            snprintf(buf, sizeof(buf), "-");
        }
        printf("%*s", COL, buf);
    }
    printf("\n");
}

static void row_bytes(const topo_plan_t *pl, const char *label, size_t off)
{
    row_label(label);
    for (int s = 0; s < pl->n_shards; s++) {
        char buf[32];
        printf(
            "%*s", COL,
            fmt_bytes(*(const uint64_t *)((const char *)&pl->shards[s] + off), buf, sizeof(buf)));
    }
    printf("\n");
}

static void row_class(const topo_plan_t *pl, const char *label, topo_class_t c)
{
    row_bytes(pl, label, offsetof(topo_shard_plan_t, bytes) + (size_t)c * sizeof(uint64_t));
}

/* Per-layer expert counts of EP group g: "12" or "11-12". */
static void expert_counts(const topo_plan_t *pl, int g, char *buf, size_t n)
{
    int lo = 1 << 30, hi = -1;
    for (int il = 0; il < pl->hp.n_layer; il++) {
        if (!pl->hp.layer_moe[il]) {
            continue;
        }
        const int c = pl->expert_n[il * pl->ep + g];
        lo = c < lo ? c : lo;
        hi = c > hi ? c : hi;
    }
    if (hi < 0) {
        snprintf(buf, n, "-");
    } else if (lo == hi) {
        snprintf(buf, n, "%d", lo);
    } else {
        snprintf(buf, n, "%d-%d", lo, hi);
    }
}

/* "2 x 64 x 4 B" style: the bytes of one KV row of head_dim values. */
static void kv_row_text(const topo_plan_t *pl, char *buf, size_t n)
{
    const tdm_type_t t = pl->p.kv_type;
    const int hd = pl->hp.head_dim;
    if (t == TDM_TYPE_Q8_0) {
        snprintf(buf, n, "%zu B (%d values as q8_0: 34 B per 32)", tdm_type_row_size(t, hd), hd);
    } else {
        snprintf(buf, n, "%d x %zu B", hd, tdm_type_row_size(t, 1));
    }
}

static void print_text(const plan_opts_t *o, const topo_plan_t *pl, const plan_device_t *d)
{
    const uint64_t node = d->budget;
    const bool gpu = d->kind == TOPO_PLAN_CUDA;
    const mdl_hparams_t *hp = &pl->hp;
    char b1[32], b2[32], b3[32];
    printf("model    %s: %s, %d layers, n_embd %d, %d q heads / %d kv heads x %d", o->model,
           hp->arch_name, hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->head_dim);
    if (pl->n_moe_layers > 0) {
        printf(", %d experts x %d (top %d) in %d MoE layers", hp->n_expert, hp->n_ff_exp,
               hp->n_expert_used, pl->n_moe_layers);
    }
    if (pl->n_moe_layers < hp->n_layer) {
        printf(", dense FFN %d", hp->n_ff);
    }
    printf(", vocab %d; %s of tensors\n", hp->n_vocab, fmt_bytes(pl->model_bytes, b1, sizeof(b1)));
    printf("split    %d shard%s = tp %d x ep %d", pl->n_shards, pl->n_shards == 1 ? "" : "s",
           pl->tp, pl->ep);
    if (pl->split_chosen && pl->n_shards > 1) {
        printf(pl->ep > 1 ? " (chosen: experts over the shards, attention replicated; --tp/--ep "
                            "to choose)"
                          : " (chosen: heads and FFN columns over the shards; --tp/--ep to "
                            "choose)");
    }
    printf("\n");
    if (pl->n_moe_layers > 0) {
        printf("experts  %s\n",
               pl->p.experts == TOPO_EXPERTS_BALANCED
                   ? "balanced by bytes: largest first onto the EP group with the fewest bytes"
                   : "contiguous: n_expert / ep consecutive experts per EP group in every layer "
                     "(the contiguous rule)");
    }
    printf("KV cache %d tokens per shard (%d blocks of %d), %s", pl->kv_tokens, pl->kv_blocks,
           pl->p.block_tokens, topo_kv_type_name(pl->p.kv_type));
    if (pl->p.kv_bytes > 0) {
        printf(": what --kv-memory %s holds on the shard with the most kv heads",
               fmt_bytes(pl->p.kv_bytes, b1, sizeof(b1)));
    } else if (pl->kv_tokens >= pl->p.ctx_size + pl->p.block_tokens) {
        printf(": raised from %d to hold one batch of %d tokens plus a block", pl->p.ctx_size,
               pl->p.batch);
    }
    if (pl->p.mtp) {
        printf("; with the MTP block's attention layer (--spec mtp)");
    }
    printf("\n");
    if (gpu) {
        printf("step     batch %d tokens, %d logit rows\n", pl->p.batch, pl->p.n_out);
    } else {
        printf("step     batch %d tokens, %d logit rows, %d kernel threads\n", pl->p.batch,
               pl->p.n_out, pl->p.threads);
    }
    printf("device   %s\n", d->label);
    printf("memory   %s per shard (%s)\n\n", fmt_bytes(node, b1, sizeof(b1)), d->budget_src);

    row_label("");
    for (int s = 0; s < pl->n_shards; s++) {
        char h[24];
        snprintf(h, sizeof(h), "shard %d", s);
        printf("%*s", COL, h);
    }
    printf("\n");
    row_label("tp / ep rank");
    for (int s = 0; s < pl->n_shards; s++) {
        char h[24];
        snprintf(h, sizeof(h), "%d / %d", pl->shards[s].tp_rank, pl->shards[s].ep_rank);
        printf("%*s", COL, h);
    }
    printf("\n");
    row_range(pl, "q heads", offsetof(topo_shard_plan_t, heads));
    row_range(pl, "kv heads", offsetof(topo_shard_plan_t, kv_heads));
    if (pl->n_moe_layers < hp->n_layer) {
        row_range(pl, "dense FFN columns", offsetof(topo_shard_plan_t, ffn_cols));
    }
    if (pl->n_moe_layers > 0) {
        row_range(pl, "expert columns", offsetof(topo_shard_plan_t, expert_cols));
        row_label("experts per MoE layer");
        for (int s = 0; s < pl->n_shards; s++) {
            char h[24];
            expert_counts(pl, pl->shards[s].ep_rank, h, sizeof(h));
            printf("%*s", COL, h);
        }
        printf("\n");
    }
    row_range(pl, "output (vocab) rows", offsetof(topo_shard_plan_t, vocab_rows));
    row_class(pl, "embeddings, norms, routers", TOPO_CLASS_EMBD_NORMS);
    row_class(pl, "attention", TOPO_CLASS_ATTENTION);
    if (pl->n_moe_layers < hp->n_layer) {
        row_class(pl, "dense FFN", TOPO_CLASS_DENSE_FFN);
    }
    if (pl->n_moe_layers > 0) {
        row_class(pl, "experts", TOPO_CLASS_EXPERTS);
    }
    if (!hp->tied_output) {
        row_class(pl, "output head", TOPO_CLASS_OUTPUT);
    }
    if (hp->n_mtp > 0) {
        row_class(pl, pl->p.mtp ? "MTP (run: --spec mtp)" : "MTP (kept, not run)", TOPO_CLASS_MTP);
    }
    row_bytes(pl, "= weights", offsetof(topo_shard_plan_t, weights));
    row_bytes(pl, "  of which replicated", offsetof(topo_shard_plan_t, replicated));
    if (gpu) {
        row_bytes(pl, "weights on the GPU", offsetof(topo_shard_plan_t, weights_device));
    }
    row_bytes(pl, "KV cache", offsetof(topo_shard_plan_t, kv));
    if (gpu) {
        row_bytes(pl, "step scratch", offsetof(topo_shard_plan_t, scratch));
        row_bytes(pl, "GPU scratch", offsetof(topo_shard_plan_t, backend_scratch));
        row_bytes(pl, "GPU margin", offsetof(topo_shard_plan_t, margin));
    } else {
        row_bytes(pl, "buffers", offsetof(topo_shard_plan_t, buffers));
    }
    row_bytes(pl, "= total", offsetof(topo_shard_plan_t, total));
    row_label(gpu ? "fits the GPU" : "fits the node");
    for (int s = 0; s < pl->n_shards; s++) {
        printf("%*s", COL, pl->shards[s].total <= node ? "yes" : "NO");
    }
    printf("\n\n");

    /* What every shard holds whole, by kind. */
    static const char *const kinds[] = {
        "token_embd.weight", "output.weight",          "attention", "dense FFN",
        "experts",           "routers (ffn_gate_inp)", "norms"};
    uint64_t whole[7] = {0};
    for (int i = 0; i < pl->n_tensors; i++) {
        const topo_tensor_plan_t *t = &pl->tensors[i];
        bool all = t->split != TOPO_SPLIT_UNUSED;
        for (int s = 0; s < pl->n_shards && all; s++) {
            all = t->per_shard[s] == t->nbytes;
        }
        if (!all) {
            continue;
        }
        const int k = strcmp(t->name, "token_embd.weight") == 0 ? 0
                      : strcmp(t->name, "output.weight") == 0   ? 1
                      : t->cls == TOPO_CLASS_ATTENTION          ? 2
                      : t->cls == TOPO_CLASS_DENSE_FFN          ? 3
                      : t->cls == TOPO_CLASS_EXPERTS            ? 4
                      : strstr(t->name, "ffn_gate_inp") != NULL ? 5
                                                                : 6;
        whole[k] += t->nbytes;
    }
    printf("held whole by every shard:");
    for (int k = 0, first = 1; k < 7; k++) {
        if (whole[k] > 0) {
            printf("%s %s %s", first ? "" : ",", kinds[k], fmt_bytes(whole[k], b1, sizeof(b1)));
            first = 0;
        }
    }
    if (hp->tied_output) {
        printf("; the output head is token_embd (tied), no extra bytes");
    } else if (pl->tp > 1 && hp->n_vocab % pl->tp != 0) {
        printf("; output.weight is replicated because vocab %d does not divide by tp %d",
               hp->n_vocab, pl->tp);
    }
    if (pl->tp == 1 && pl->n_shards > 1) {
        printf("; tp 1: attention%s is replicated, only experts are split",
               pl->n_moe_layers < hp->n_layer ? " and dense FFN" : "");
    }
    printf("\n");
    if (pl->tp > 1) {
        printf("split by TP: attn_q/k/v rows and attn_output columns by heads%s%s%s%s\n",
               pl->n_moe_layers < hp->n_layer ? ", dense FFN gate/up rows and down columns" : "",
               pl->n_moe_layers > 0 ? ", each expert's width (gate/up rows, down columns)" : "",
               hp->n_vocab % pl->tp == 0 && !hp->tied_output ? ", output rows by vocab" : "",
               hp->n_head_kv % pl->tp != 0 ? "; kv heads do not divide by tp, so neighbouring TP "
                                             "ranks share (replicate) a kv head"
                                           : "");
    }
    if (pl->n_moe_layers > 0 && pl->ep > 1) {
        printf("experts by EP group:");
        uint64_t lo = UINT64_MAX, hi = 0;
        for (int g = 0; g < pl->ep; g++) {
            printf("%s %s", g ? "," : "", fmt_bytes(pl->ep_load[g], b1, sizeof(b1)));
            lo = pl->ep_load[g] < lo ? pl->ep_load[g] : lo;
            hi = pl->ep_load[g] > hi ? pl->ep_load[g] : hi;
        }
        printf(" (spread %s; one expert of the largest layer is %s)\n",
               fmt_bytes(hi - lo, b1, sizeof(b1)), fmt_bytes(pl->expert_item_max, b2, sizeof(b2)));
        if (pl->p.experts == TOPO_EXPERTS_BALANCED) {
            bool same = true;
            for (int s = 0; s < pl->n_shards; s++) {
                same &= pl->shards[s].experts_as_loader == pl->shards[s].bytes[TOPO_CLASS_EXPERTS];
            }
            printf("  the contiguous rule (shard/model.c without per-layer ranges: experts [r*base "
                   "+ min(r, rem), +base + "
                   "(r < rem)) in every layer) %s",
                   same ? "gives the same bytes\n" : "would give expert bytes");
            for (int s = 0; !same && s < pl->n_shards; s++) {
                printf("%s %s", s ? "," : "",
                       fmt_bytes(pl->shards[s].experts_as_loader, b1, sizeof(b1)));
            }
            if (!same) {
                printf("\n");
            }
        }
    }
    const topo_shard_plan_t *s0 = &pl->shards[0];
    char row[64];
    kv_row_text(pl, row, sizeof(row));
    printf("KV per token on shard 0: 2 x %d layers%s x %d kv heads x %s = %s; x %d tokens = %s\n",
           hp->n_layer - hp->n_recurrent + (pl->p.mtp ? 1 : 0),
           pl->p.mtp ? " (with the MTP block's)" : "", s0->kv_heads.n, row,
           fmt_bytes(s0->kv_per_token, b1, sizeof(b1)), pl->kv_tokens,
           fmt_bytes(s0->kv - s0->state, b2, sizeof(b2)));
    if (pl->n_state_slots > 0) {
        printf("  recurrent state: %d Gated DeltaNet layers, %s per sequence x (%d running + %d "
               "stored prefix states) = %s (in the KV total)\n",
               hp->n_recurrent, fmt_bytes(mdl_hparams_state_bytes(hp), b1, sizeof(b1)),
               (int)pl->n_state_slots, (int)pl->n_state_store,
               fmt_bytes(s0->state, b2, sizeof(b2)));
    }
    if (pl->n_swa_layers > 0) {
        printf(
            "  of which the %d sliding-window layer%s (window %d) %s per token, for %d tokens%s\n",
            pl->n_swa_layers, pl->n_swa_layers == 1 ? "" : "s", pl->swa_window,
            fmt_bytes(s0->kv_per_token_swa, b1, sizeof(b1)), pl->kv_swa_tokens,
            pl->kv_swa_blocks == pl->kv_blocks ? " (one pool with the full-attention layers)"
                                               : " (their own pool)");
    }
    const topo_shard_plan_t *rd = s0;
    for (int s = 1; s < pl->n_shards; s++) {
        rd = pl->shards[s].read_per_token > rd->read_per_token ? &pl->shards[s] : rd;
    }
    printf("decode reads %s of weights per token on shard %d",
           fmt_bytes(rd->read_per_token, b1, sizeof(b1)), rd->rank);
    if (pl->n_moe_layers > 0) {
        printf(" (experts %s: the top %d of %d, uniform routing)",
               fmt_bytes(rd->read_experts, b2, sizeof(b2)), hp->n_expert_used, hp->n_expert);
    }
    printf("; and %s of KV at a context of %d tokens\n",
           fmt_bytes(topo_plan_kv_read(pl, pl->p.ctx_size), b2, sizeof(b2)), pl->p.ctx_size);
    if (o->mem_bw > 0) {
        printf("decode ceiling at %.0f GB/s: %.1f tokens/s for one sequence at a short context, "
               "%.1f at %d tokens (memory reads only: compute and collectives come on top)\n",
               o->mem_bw, topo_plan_decode_ceiling(pl, o->mem_bw * 1e9, 0),
               topo_plan_decode_ceiling(pl, o->mem_bw * 1e9, pl->p.ctx_size), pl->p.ctx_size);
    }
    const uint64_t fit = topo_plan_kv_tokens_fit(pl, node);
    printf("KV that fits beside weights and buffers: %" PRIu64 " tokens per shard", fit);
    if (fit > 0) {
        printf(" (%.1f sequences of %d tokens)", (double)fit / (double)pl->p.ctx_size,
               pl->p.ctx_size);
    }
    printf("\n");
    if (gpu) {
        char b4[32], b5[32];
        printf("GPU memory on shard 0, as the shard's load checks it (shard/model.c check_fit): "
               "weights stored compact %s + KV %s + step scratch for %d tokens %s + the CUDA "
               "backend's op scratch for %d tokens and %d positions (kern_cuda_reserve_bytes: "
               "quantized activations, split-K and attention partials, MoE pairs, step "
               "metadata) %s + margin %s\n",
               fmt_bytes(s0->weights_device, b1, sizeof(b1)), fmt_bytes(s0->kv, b2, sizeof(b2)),
               pl->p.batch, fmt_bytes(s0->scratch, b3, sizeof(b3)), pl->p.batch, pl->p.ctx_size,
               fmt_bytes(s0->backend_scratch, b4, sizeof(b4)),
               fmt_bytes(s0->margin, b5, sizeof(b5)));
        printf("host memory on shard 0 besides (not in the GPU total): f32 copies of non-f32 "
               "norms %s + collective staging %s (estimate)\n",
               fmt_bytes(s0->vec_copies, b1, sizeof(b1)), fmt_bytes(s0->comm, b2, sizeof(b2)));
    } else {
        char b4[32];
        printf("buffers on shard 0: step scratch for %d tokens (shard/model.c alloc_scratch) %s + "
               "the CPU backend's op scratch for %d threads and %d positions %s + f32 copies of "
               "non-f32 norms %s + collective staging 2 x %d x %d x 4 B %s (estimate)\n",
               pl->p.batch, fmt_bytes(s0->scratch, b1, sizeof(b1)), pl->p.threads, pl->p.ctx_size,
               fmt_bytes(s0->backend_scratch, b4, sizeof(b4)),
               fmt_bytes(s0->vec_copies, b2, sizeof(b2)), pl->n_shards > 1 ? pl->p.batch : 0,
               hp->n_embd, fmt_bytes(s0->comm, b3, sizeof(b3)));
    }
    if (pl->tp > 1 && !gpu) {
        printf("mmapped as shd_model_load does today, column slices (attn_output, ffn_down, "
               "ffn_down_exps) touch every page of their tensors: resident weights up to %s on "
               "shard 0 until the loader copies its slice\n",
               fmt_bytes(s0->weights_mmap, b1, sizeof(b1)));
    }
}

/* ---- JSON ---------------------------------------------------------------------------- */

static json_t *jrange(topo_range_t r)
{
    return json_pack("{s:i, s:i}", "lo", r.lo, "n", r.n);
}

static json_t *device_json(const plan_device_t *d)
{
    json_t *j = json_object();
    const bool gpu = d->kind == TOPO_PLAN_CUDA;
    json_object_set_new(j, "kind", json_string(gpu ? "cuda" : "cpu"));
    json_object_set_new(j, "label", json_string(d->label));
    if (gpu) {
        json_object_set_new(j, "index", json_integer(d->index));
        json_object_set_new(j, "queried", json_boolean(d->queried));
    }
    if (d->queried) {
        char cc[16];
        snprintf(cc, sizeof(cc), "%d.%d", d->info.cc_major, d->info.cc_minor);
        json_object_set_new(j, "name", json_string(d->info.name));
        json_object_set_new(j, "compute_capability", json_string(cc));
        json_object_set_new(j, "n_sm", json_integer(d->info.n_sm));
        json_object_set_new(j, "integrated", json_boolean(d->info.integrated));
        json_object_set_new(j, "total_bytes", json_integer((json_int_t)d->info.total_bytes));
        json_object_set_new(j, "free_bytes", json_integer((json_int_t)d->info.free_bytes));
    }
    if (d->host_avail > 0 && d->host_avail != UINT64_MAX) {
        json_object_set_new(j, "host_available", json_integer((json_int_t)d->host_avail));
    }
    return j;
}

static json_t *to_json(const plan_opts_t *o, const topo_plan_t *pl, const plan_device_t *d,
                       bool fits)
{
    const uint64_t node = d->budget;
    const mdl_hparams_t *hp = &pl->hp;
    json_t *root = json_object();
    json_object_set_new(root, "model", json_string(o->model));
    json_object_set_new(root, "arch", json_string(hp->arch_name));
    json_t *h = json_object();
    json_object_set_new(h, "n_layer", json_integer(hp->n_layer));
    json_object_set_new(h, "n_embd", json_integer(hp->n_embd));
    json_object_set_new(h, "n_head", json_integer(hp->n_head));
    json_object_set_new(h, "n_head_kv", json_integer(hp->n_head_kv));
    json_object_set_new(h, "head_dim", json_integer(hp->head_dim));
    json_object_set_new(h, "n_ff", json_integer(hp->n_ff));
    json_object_set_new(h, "n_expert", json_integer(hp->n_expert));
    json_object_set_new(h, "n_expert_used", json_integer(hp->n_expert_used));
    json_object_set_new(h, "n_ff_exp", json_integer(hp->n_ff_exp));
    json_object_set_new(h, "n_vocab", json_integer(hp->n_vocab));
    json_object_set_new(h, "n_ctx_train", json_integer(hp->n_ctx_train));
    json_object_set_new(h, "n_moe_layers", json_integer(pl->n_moe_layers));
    json_object_set_new(h, "tied_output", json_boolean(hp->tied_output));
    json_object_set_new(h, "n_swa", json_integer(hp->n_swa));
    json_object_set_new(root, "hparams", h);
    json_object_set_new(root, "n_shards", json_integer(pl->n_shards));
    json_object_set_new(root, "tp", json_integer(pl->tp));
    json_object_set_new(root, "ep", json_integer(pl->ep));
    json_object_set_new(root, "split_chosen", json_boolean(pl->split_chosen));
    json_object_set_new(
        root, "experts_rule",
        json_string(pl->p.experts == TOPO_EXPERTS_BALANCED ? "balanced" : "contiguous"));
    json_object_set_new(root, "kv_tokens", json_integer(pl->kv_tokens));
    json_object_set_new(root, "kv_blocks", json_integer(pl->kv_blocks));
    json_object_set_new(root, "n_swa_layers", json_integer(pl->n_swa_layers));
    json_object_set_new(root, "swa_window", json_integer(pl->swa_window));
    json_object_set_new(root, "kv_swa_tokens", json_integer(pl->kv_swa_tokens));
    json_object_set_new(root, "kv_swa_blocks", json_integer(pl->kv_swa_blocks));
    json_object_set_new(root, "n_state_slots", json_integer(pl->n_state_slots));
    json_object_set_new(root, "n_state_store", json_integer(pl->n_state_store));
    json_object_set_new(root, "gdn_layers", json_integer(pl->hp.n_recurrent));
    json_object_set_new(root, "kv_tokens_fit",
                        json_integer((json_int_t)topo_plan_kv_tokens_fit(pl, node)));
    json_object_set_new(root, "read_per_token_max",
                        json_integer((json_int_t)pl->read_per_token_max));
    json_object_set_new(root, "mem_bw_gbps", o->mem_bw > 0 ? json_real(o->mem_bw) : json_null());
    json_object_set_new(root, "kv_read_at_ctx",
                        json_integer((json_int_t)topo_plan_kv_read(pl, pl->p.ctx_size)));
    json_object_set_new(root, "decode_ceiling_tps",
                        o->mem_bw > 0 ? json_real(topo_plan_decode_ceiling(pl, o->mem_bw * 1e9, 0))
                                      : json_null());
    json_object_set_new(
        root, "decode_ceiling_tps_at_ctx",
        o->mem_bw > 0 ? json_real(topo_plan_decode_ceiling(pl, o->mem_bw * 1e9, pl->p.ctx_size))
                      : json_null());
    json_object_set_new(root, "block_tokens", json_integer(pl->p.block_tokens));
    json_object_set_new(root, "ctx_size", json_integer(pl->p.ctx_size));
    json_object_set_new(root, "batch", json_integer(pl->p.batch));
    json_object_set_new(root, "n_out", json_integer(pl->p.n_out));
    json_object_set_new(root, "threads", json_integer(pl->p.threads));
    json_object_set_new(root, "device", device_json(d));
    json_object_set_new(root, "kv_type", json_string(topo_kv_type_name(pl->p.kv_type)));
    json_object_set_new(root, "spec", json_string(o->spec != NULL ? o->spec : "off"));
    json_object_set_new(root, "node_memory", json_integer((json_int_t)node));
    json_object_set_new(root, "node_memory_source", json_string(d->budget_src));
    json_object_set_new(root, "model_bytes", json_integer((json_int_t)pl->model_bytes));
    json_object_set_new(root, "expert_item_max", json_integer((json_int_t)pl->expert_item_max));
    json_object_set_new(root, "expert_bytes_total",
                        json_integer((json_int_t)pl->expert_bytes_total));
    json_t *load = json_array();
    for (int g = 0; g < pl->ep; g++) {
        json_array_append_new(load, json_integer((json_int_t)pl->ep_load[g]));
    }
    json_object_set_new(root, "ep_load", load);
    json_t *ranges = json_array();
    for (int il = 0; il < hp->n_layer; il++) {
        if (!hp->layer_moe[il] || pl->expert_n == NULL) {
            json_array_append_new(ranges, json_null());
            continue;
        }
        json_t *lr = json_array();
        for (int g = 0; g < pl->ep; g++) {
            json_array_append_new(lr, jrange((topo_range_t){pl->expert_lo[il * pl->ep + g],
                                                            pl->expert_n[il * pl->ep + g]}));
        }
        json_array_append_new(ranges, lr);
    }
    json_object_set_new(root, "expert_ranges", ranges);

    json_t *shards = json_array();
    for (int s = 0; s < pl->n_shards; s++) {
        const topo_shard_plan_t *sp = &pl->shards[s];
        json_t *j = json_object();
        json_object_set_new(j, "rank", json_integer(sp->rank));
        json_object_set_new(j, "tp_rank", json_integer(sp->tp_rank));
        json_object_set_new(j, "ep_rank", json_integer(sp->ep_rank));
        json_object_set_new(j, "heads", jrange(sp->heads));
        json_object_set_new(j, "kv_heads", jrange(sp->kv_heads));
        json_object_set_new(j, "ffn_cols", jrange(sp->ffn_cols));
        json_object_set_new(j, "expert_cols", jrange(sp->expert_cols));
        json_object_set_new(j, "vocab_rows", jrange(sp->vocab_rows));
        json_object_set_new(j, "experts_contiguous", jrange(sp->experts_contiguous));
        json_object_set_new(j, "expert_slots", json_integer(sp->expert_slots));
        json_t *by = json_object();
        for (int c = 0; c < TOPO_CLASS_COUNT; c++) {
            json_object_set_new(by, topo_class_name((topo_class_t)c),
                                json_integer((json_int_t)sp->bytes[c]));
        }
        json_object_set_new(j, "bytes", by);
#define U64(k, v) json_object_set_new(j, k, json_integer((json_int_t)(v)))
        U64("replicated", sp->replicated);
        U64("sharded", sp->sharded);
        U64("weights", sp->weights);
        U64("weights_mmap", sp->weights_mmap);
        U64("weights_device", sp->weights_device);
        U64("experts_as_loader", sp->experts_as_loader);
        U64("kv_per_token", sp->kv_per_token);
        U64("kv_per_token_full", sp->kv_per_token_full);
        U64("kv_per_token_swa", sp->kv_per_token_swa);
        U64("kv", sp->kv);
        U64("state", sp->state);
        U64("read_per_token", sp->read_per_token);
        U64("read_experts", sp->read_experts);
        U64("scratch", sp->scratch);
        U64("backend_scratch", sp->backend_scratch);
        U64("margin", sp->margin);
        U64("vec_copies", sp->vec_copies);
        U64("comm", sp->comm);
        U64("buffers", sp->buffers);
        U64("total", sp->total);
#undef U64
        json_object_set_new(j, "fits", json_boolean(sp->total <= node));
        json_array_append_new(shards, j);
    }
    json_object_set_new(root, "shards", shards);

    json_t *tensors = json_array();
    for (int i = 0; i < pl->n_tensors; i++) {
        const topo_tensor_plan_t *t = &pl->tensors[i];
        json_t *j = json_object();
        json_object_set_new(j, "name", json_string(t->name));
        json_object_set_new(j, "type", json_string(tdm_type_name(t->type)));
        json_object_set_new(j, "bytes", json_integer((json_int_t)t->nbytes));
        json_object_set_new(j, "layer", t->layer >= 0 ? json_integer(t->layer) : json_null());
        json_object_set_new(j, "split", json_string(topo_split_name(t->split)));
        json_object_set_new(j, "class", json_string(topo_class_name(t->cls)));
        json_t *ps = json_array();
        for (int s = 0; s < pl->n_shards; s++) {
            json_array_append_new(ps, json_integer((json_int_t)t->per_shard[s]));
        }
        json_object_set_new(j, "per_shard", ps);
        json_array_append_new(tensors, j);
    }
    json_object_set_new(root, "tensors", tensors);
    json_object_set_new(root, "fits", json_boolean(fits));
    return root;
}

/* ---- layout -------------------------------------------------------------------------- */

/* The layout rule's inputs: the machines and their memory, what one whole replica needs
 * there (the same options planned on one shard), the load, and whether the model and
 * device can run prefill/decode groups (docs/distributed.md says why not). */
static void layout_for(const plan_opts_t *o, const topo_plan_t *pl, const gguf_ctx_t *g,
                       uint64_t node, topo_layout_in_t *in, topo_layout_t *out)
{
    topo_plan_params_t p1 = pl->p;
    p1.n_shards = p1.tp = p1.ep = 1;
    topo_plan_t *one = NULL;
    tdm_error_t err = {0};
    uint64_t replica = UINT64_MAX; /* a plan that cannot be built fits nowhere */
    if (topo_plan_build(g, &p1, &one, &err) == TDM_OK) {
        replica = one->shards[0].total;
    }
    topo_plan_destroy(one);
    *in = (topo_layout_in_t){.n_nodes = pl->n_shards,
                             .node_bytes = node,
                             .replica_bytes = replica,
                             .streams = o->streams,
                             .prompt_tokens = o->prompt_tokens,
                             .answer_tokens = o->answer_tokens,
                             .disagg_supported = true};
    if (pl->p.device != TOPO_PLAN_CPU) {
        in->disagg_supported = false;
        in->disagg_why_not = "GPU shards have no pinned host KV pool yet";
    }
    topo_layout_recommend(in, out);
}

static void print_layout(const topo_layout_in_t *in, const topo_layout_t *l)
{
    char b1[32], b2[32];
    printf("\nlayout for %d stream%s (%d new prompt / %d generated tokens per turn) on %d "
           "machine%s:\n  %s",
           in->streams, in->streams == 1 ? "" : "s", in->prompt_tokens,
           in->answer_tokens > 0 ? in->answer_tokens : 128, in->n_nodes,
           in->n_nodes == 1 ? "" : "s", topo_layout_name(l->kind));
    if (l->kind == TOPO_LAYOUT_REPLICAS) {
        printf(": %d groups of %d shard, --routing prefix", l->groups, l->shards_per_group);
    } else if (l->kind == TOPO_LAYOUT_SPLIT) {
        printf(": one group of %d shards", l->shards_per_group);
    } else if (l->kind == TOPO_LAYOUT_PREFILL_DECODE) {
        printf(": %d prefill + %d decode groups of %d shard", l->groups / 2, l->groups / 2,
               l->shards_per_group);
    }
    printf(" (one replica needs %s, a machine has %s)\n",
           in->replica_bytes == UINT64_MAX ? "more than any plan allows"
                                           : fmt_bytes(in->replica_bytes, b1, sizeof(b1)),
           fmt_bytes(in->node_bytes, b2, sizeof(b2)));
    for (int i = 0; i < l->n_notes; i++) {
        printf("  - %s\n", l->notes[i]);
    }
}

static json_t *layout_json(const topo_layout_in_t *in, const topo_layout_t *l)
{
    json_t *j = json_object();
    json_object_set_new(j, "kind", json_string(topo_layout_name(l->kind)));
    json_object_set_new(j, "groups", json_integer(l->groups));
    json_object_set_new(j, "shards_per_group", json_integer(l->shards_per_group));
    json_object_set_new(j, "routing",
                        l->kind == TOPO_LAYOUT_REPLICAS || l->kind == TOPO_LAYOUT_PREFILL_DECODE
                            ? json_string("prefix")
                            : json_null());
    json_object_set_new(j, "replicas_possible", json_boolean(l->replicas_possible));
    json_object_set_new(j, "replica_bytes",
                        in->replica_bytes == UINT64_MAX
                            ? json_null()
                            : json_integer((json_int_t)in->replica_bytes));
    json_object_set_new(j, "machines", json_integer(in->n_nodes));
    json_object_set_new(j, "streams", json_integer(in->streams));
    json_object_set_new(j, "prompt_tokens", json_integer(in->prompt_tokens));
    json_object_set_new(j, "answer_tokens",
                        json_integer(in->answer_tokens > 0 ? in->answer_tokens : 128));
    json_object_set_new(j, "prefill_decode_supported", json_boolean(in->disagg_supported));
    json_t *why = json_array();
    for (int i = 0; i < l->n_notes; i++) {
        json_array_append_new(why, json_string(l->notes[i]));
    }
    json_object_set_new(j, "why", why);
    return j;
}

int cmd_plan(int argc, char **argv)
{
    plan_opts_t o;
    int r = parse_opts(argc, argv, &o);
    if (r != 0) {
        return r > 0 ? 0 : 2;
    }
    tdm_error_t err = {0};
    plan_device_t d;
    r = resolve_device(&o, &d);
    if (r != 0) {
        return r;
    }
    o.p.device = d.kind;
    if (topo_kv_type_parse(o.kv_type, d.kind, &o.p.kv_type, &err) != TDM_OK) {
        fprintf(stderr, "tandem plan: %s\n", tdm_error_msg(&err));
        return 2;
    }
    gguf_ctx_t *g = NULL;
    if (gguf_open(o.model, &g, &err) != TDM_OK) {
        fprintf(stderr, "tandem plan: %s\n", tdm_error_msg(&err));
        return 1;
    }
    topo_plan_t *pl = NULL;
    tdm_status_t st = topo_plan_build(g, &o.p, &pl, &err);
    if (st != TDM_OK) {
        fprintf(stderr, "tandem plan: %s: %s\n", o.model, tdm_error_msg(&err));
        gguf_close(g);
        return st == TDM_ERR_INVALID_PARAM || st == TDM_ERR_UNSUPPORTED ? 2 : 1;
    }
    const uint64_t node = d.budget;
    int worst = 0;
    for (int s = 1; s < pl->n_shards; s++) {
        if (pl->shards[s].total > pl->shards[worst].total) {
            worst = s;
        }
    }
    const bool fits = pl->shards[worst].total <= node;
    topo_layout_in_t lin;
    topo_layout_t lay;
    if (o.streams > 0) {
        layout_for(&o, pl, g, node, &lin, &lay);
    }
    int rc = 0;
    if (o.json) {
        json_t *root = to_json(&o, pl, &d, fits);
        if (o.streams > 0) {
            json_object_set_new(root, "layout", layout_json(&lin, &lay));
        }
        char *s = json_dumps(root, JSON_INDENT(1));
        if (s != NULL) {
            printf("%s\n", s);
            free(s);
        } else {
            fprintf(stderr, "tandem plan: out of memory\n");
            rc = 1;
        }
        json_decref(root);
    } else {
        print_text(&o, pl, &d);
        if (o.streams > 0) {
            print_layout(&lin, &lay);
        }
    }
    if (!fits && rc == 0) {
        const topo_shard_plan_t *w = &pl->shards[worst];
        const bool gpu = d.kind == TOPO_PLAN_CUDA;
        char b1[32], b2[32], b3[32], b4[32], b5[32], b6[32], b7[32], extra[128] = "";
        /* a smaller KV row where the cache can hold one */
        const char *kv_hint = pl->p.kv_type == TDM_TYPE_F32 ? ", --kv-type f16"
                              : pl->p.kv_type == TDM_TYPE_F16 && pl->hp.head_dim % 32 == 0
                                  ? ", --kv-type q8_0"
                                  : "";
        if (gpu) {
            snprintf(extra, sizeof(extra), ", of which GPU scratch %s and margin %s",
                     fmt_bytes(w->backend_scratch, b6, sizeof(b6)),
                     fmt_bytes(w->margin, b7, sizeof(b7)));
        }
        fprintf(stderr,
                "tandem plan: refused: shard %d needs %s (%" PRIu64 " bytes: weights %s + KV %s "
                "(%s) + buffers %s%s) but %s has %s (%" PRIu64 " bytes, %s); use more shards, a "
                "smaller --ctx-size / --kv-memory%s, or a smaller quantization\n",
                worst, fmt_bytes(w->total, b1, sizeof(b1)), w->total,
                fmt_bytes(w->weights_device, b2, sizeof(b2)), fmt_bytes(w->kv, b3, sizeof(b3)),
                topo_kv_type_name(pl->p.kv_type), fmt_bytes(w->buffers, b4, sizeof(b4)), extra,
                gpu ? "the GPU" : "a node", fmt_bytes(node, b5, sizeof(b5)), node, d.budget_src,
                kv_hint);
        rc = 3;
    }
    topo_plan_destroy(pl);
    gguf_close(g);
    return rc;
}
