/*
 * cmd_serve.c - `tandem serve`: options into srv_config_t, then srv_run (api/server).
 *
 *   tandem serve --model M.gguf [--host 127.0.0.1] [--port 8080] [--api-key KEY] ...
 */
#include "api/cli/cli.h"
#include "api/server/srv.h"
#include "coordinator/router.h"
#include "coordinator/spec.h"
#include "transport/exec_remote.h"

#include <ctype.h>
#include <jansson.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: tandem serve --model M.gguf [options]\n"
        "\n"
        "network:\n"
        "  --host ADDR              IPv4 address to bind (default 127.0.0.1; 0.0.0.0 for all)\n"
        "  --port N                 default 8080\n"
        "  --api-key KEY            require 'Authorization: Bearer KEY' on /v1 routes\n"
        "                           (repeatable; also TANDEM_API_KEY)\n"
        "  --api-key-file FILE      one key per line (blank lines and # comments ignored)\n"
        "  --max-body-bytes N       request body limit (default 8M; 413 beyond)\n"
        "  --max-connections N      concurrent connections; more get a JSON 503 and are\n"
        "                           closed (default 512)\n"
        "  --max-connections-per-client N  from one client address; more get 429\n"
        "                           (default 256)\n"
        "  --http-header-timeout S  a request head must arrive within S s (default 10; 408)\n"
        "  --http-body-timeout S    a request body silent for S s is dropped (default 30; 408)\n"
        "  --http-idle-timeout S    keep-alive connections idle, or clients not reading, for\n"
        "                           S s are closed (default 30)\n"
        "  --max-header-bytes N     request head limit (default 32K; 431 beyond; lines 8K,\n"
        "                           100 header lines)\n"
        "  --shutdown-timeout S     seconds in-flight requests get after SIGTERM (default 30)\n"
        "  --keepalive S            SSE comment interval while waiting (default 5)\n"
        "model:\n"
        "  --model FILE             GGUF file (first file of a split model)\n"
        "  --served-model-name NAME the id clients put in 'model' (default: file name\n"
        "                           without .gguf)\n"
        "  --ctx-size N             positions per sequence (default: the model's trained\n"
        "                           context when memory holds it, else the most that fits;\n"
        "                           distributed: the model's, at most 8192)\n"
        "  --tool-parser P          auto (from the chat template), hermes, qwen3_coder,\n"
        "                           minimax_m2, harmony (gpt-oss), mistral (Devstral),\n"
        "                           none\n"
        "  --cache-stable-prompts   keep agent clients' volatile bytes from breaking the\n"
        "                           prefix cache: drop Claude Code's billing line, move\n"
        "                           OpenCode's moving <system-reminder> to the end, sort\n"
        "                           tool-schema keys (docs/serving.md)\n"
        "engine:\n"
        "  --device D               auto (a usable GPU, else the CPU; default), cpu, cuda,\n"
        "                           cuda:N\n"
        "  --kv-type T              KV cache rows: f32, f16, q8_0 (default: f16 on a GPU,\n"
        "                           f32 on the CPU)\n"
        "  --threads N              kernel threads (default: all CPUs)\n"
        "  --batch N                token budget per step (default 512)\n"
        "  --max-running N          sequences per step (default 64)\n"
        "  --max-step-ms N|auto|off while requests decode, prompt chunks are cut so a\n"
        "                           step's predicted time stays within N ms (auto, the\n"
        "                           default: twice the decode rows' time, >= 50 ms)\n"
        "  --max-waiting N          queue limit; more requests get 429 (default 256)\n"
        "  --kv-memory SIZE         KV cache budget, e.g. 2G, 512M (default: 4 x context)\n"
        "  --state-cache N          Gated DeltaNet models (qwen3next, qwen35moe): recurrent\n"
        "                           states of cached prefixes kept for prefix hits, in the\n"
        "                           KV budget (default: --max-running; 0: no prefix hits)\n"
        "  --state-every N          ... stored also every N prompt tokens (default 0: at a\n"
        "                           prompt's last full block only), so prompts that share\n"
        "                           only a leading part resume inside it\n"
        "  --max-tokens N           default max_tokens when a request sets none (default:\n"
        "                           until the context is full)\n"
        "  --spec ngram|draft|mtp|off  speculative decoding: drafts from the request's own\n"
        "                           prompt and output (n-gram lookup), from a draft\n"
        "                           model, or from the model's own MTP block (qwen3next /\n"
        "                           qwen35moe files that carry one; one node), verified in\n"
        "                           one step; drafts only while a cost\n"
        "                           model measured at the first step says they pay\n"
        "                           (default off: requests may still ask for it;\n"
        "                           docs/serving.md)\n"
        "  --draft-model FILE       GGUF of a small model with the same vocabulary that\n"
        "                           drafts for --spec draft (and requests that ask)\n"
        "  --spec-max N             most drafted tokens per sequence and step (1..16,\n"
        "                           default 8)\n"
        "  --spec-always            draft every proposal, ignoring the cost model\n"
        "                           (benchmarks)\n"
        "distributed (the model split over `tandem shard` processes; see docs/distributed.md):\n"
        "  --shards H:P,H:P,...     shard control addresses; list index = world rank\n"
        "                           (ep_rank * tp + tp_rank). None: single-node (default)\n"
        "  --cluster FILE           JSON: {\"shards\": [\"H:P\", ...], \"tp\": N, \"ep\": N,\n"
        "                           \"collective\": \"am\"|\"rma\"|\"nccl\"}, or engine groups\n"
        "                           (replicas): {\"groups\": [{\"name\": \"a\", \"shards\": "
        "[...],\n"
        "                           \"tp\": N, \"ep\": N, \"role\": \"mixed\"}, {\"name\": "
        "\"b\"}],\n"
        "                           \"collective\": ...}; a group without shards is an engine\n"
        "                           in this process (docs/distributed.md)\n"
        "  --routing prefix|round-robin  which group serves a request: the one holding\n"
        "                           the longest cached prefix, weighed against its load\n"
        "                           (default), or each in turn\n"
        "  --tp N, --ep N           tensor / expert parallel sizes (tp x ep = shards; default:\n"
        "                           experts over EP for MoE models, else TP)\n"
        "  --collective am|rma|nccl data-plane collectives: UCX active messages (default),\n"
        "                           UCX RMA put + flag, or NCCL (shards on GPUs, one GPU\n"
        "                           each; builds with NCCL)\n"
        "  --collective-timeout-ms N  a collective waiting longer fails (default 15000)\n"
        "  --shard-timeout-ms N     a shard silent this long is missing (default 1500)\n"
        "  --shard-start-timeout S  seconds to wait for every shard at start (default 120)\n"
        "  --contiguous-experts     same expert range in every layer (default: per-layer\n"
        "                           ranges balancing bytes)\n"
        "  --cluster-secret S       shared secret the shards must prove at JOIN (also\n"
        "                           TANDEM_CLUSTER_SECRET; give each `tandem shard` the same)\n");
}

/* "512M", "2G", "1048576" -> bytes; 0 on a bad value. */
static size_t parse_size(const char *v)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno != 0 || end == v || x < 0) {
        return 0;
    }
    switch (toupper((unsigned char)*end)) {
    case 'K':
        x *= 1024.0;
        end++;
        break;
    case 'M':
        x *= 1024.0 * 1024.0;
        end++;
        break;
    case 'G':
        x *= 1024.0 * 1024.0 * 1024.0;
        end++;
        break;
    default:
        break;
    }
    if (*end == 'i' || *end == 'B' || *end == 'b') {
        end += *end == 'i' ? 1 : 0;
        end += (*end == 'B' || *end == 'b') ? 1 : 0;
    }
    return *end == '\0' && x < 1e18 ? (size_t)x : 0;
}

static int parse_int(const char *opt, const char *v, int lo, int hi, int *out)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end != '\0' || x < lo || x > hi) {
        fprintf(stderr, "tandem serve: %s must be an integer in [%d, %d]\n", opt, lo, hi);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int add_key(srv_config_t *c, const char *key)
{
    char **keys = realloc(c->api_keys, (size_t)(c->n_api_keys + 1) * sizeof(char *));
    if (keys == NULL) {
        return -1;
    }
    c->api_keys = keys;
    c->api_keys[c->n_api_keys] = strdup(key);
    if (c->api_keys[c->n_api_keys] == NULL) {
        return -1;
    }
    c->n_api_keys++;
    return 0;
}

static int read_key_file(srv_config_t *c, const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "tandem serve: --api-key-file %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        char *p = line, *e;
        while (isspace((unsigned char)*p)) {
            p++;
        }
        e = p + strlen(p);
        while (e > p && isspace((unsigned char)e[-1])) {
            *--e = '\0';
        }
        if (*p == '\0' || *p == '#') {
            continue;
        }
        if (add_key(c, p) != 0) {
            fclose(f);
            return -1;
        }
        n++;
    }
    fclose(f);
    if (n == 0) {
        fprintf(stderr, "tandem serve: --api-key-file %s holds no key\n", path);
        return -1;
    }
    return 0;
}

/* Appends "a,b,c" to c->shards (a list of strdup'ed strings). */
static int add_shards(srv_config_t *c, const char *list)
{
    const char *p = list;
    while (*p != '\0') {
        const char *e = strchr(p, ',');
        size_t n = e != NULL ? (size_t)(e - p) : strlen(p);
        if (n == 0 || n > 120 || memchr(p, ':', n) == NULL) {
            fprintf(stderr, "tandem serve: shard '%.*s': expected HOST:PORT\n", (int)n, p);
            return -1;
        }
        char **v = realloc(c->shards, (size_t)(c->n_shards + 1) * sizeof(char *));
        if (v == NULL) {
            return -1;
        }
        c->shards = v;
        c->shards[c->n_shards++] = strndup(p, n);
        p += n;
        if (*p == ',') {
            p++;
        }
    }
    return 0;
}

static int parse_collective(const char *v, int *out)
{
    tdm_error_t err = {0};
    if (xp_collective_parse(v, out, &err) != TDM_OK) {
        fprintf(stderr, "tandem serve: %s\n", tdm_error_msg(&err));
        return -1;
    }
    return 0;
}

/* Reads "shards" (an array of "HOST:PORT") into *shards / *n. */
static int read_shard_list(json_t *arr, const char *path, const char *where, char ***shards, int *n)
{
    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        fprintf(stderr,
                "tandem serve: --cluster %s: %s\"shards\" must be a non-empty array of "
                "\"HOST:PORT\" strings\n",
                path, where);
        return -1;
    }
    for (size_t i = 0; i < json_array_size(arr); i++) {
        const char *s = json_string_value(json_array_get(arr, i));
        srv_config_t tmp = {.shards = *shards, .n_shards = *n};
        int rc = s != NULL ? add_shards(&tmp, s) : -1;
        *shards = tmp.shards;
        *n = tmp.n_shards;
        if (rc != 0) {
            fprintf(stderr, "tandem serve: --cluster %s: %sshards[%zu] is not \"HOST:PORT\"\n",
                    path, where, i);
            return -1;
        }
    }
    return 0;
}

/* "tp" / "ep" of obj into *tp / *ep (left alone when absent). */
static int read_split(json_t *obj, const char *path, const char *where, int *tp, int *ep)
{
    const char *keys[] = {"tp", "ep"};
    int *dst[] = {tp, ep};
    for (int k = 0; k < 2; k++) {
        json_t *v = json_object_get(obj, keys[k]);
        if (v != NULL &&
            (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 4096)) {
            fprintf(stderr, "tandem serve: --cluster %s: %s\"%s\" must be an integer >= 1\n", path,
                    where, keys[k]);
            return -1;
        }
        if (v != NULL) {
            *dst[k] = (int)json_integer_value(v);
        }
    }
    return 0;
}

static int only_keys(json_t *obj, const char *const *known, size_t n, const char *path,
                     const char *where)
{
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val)
    {
        bool ok = false;
        for (size_t i = 0; i < n; i++) {
            ok |= strcmp(key, known[i]) == 0;
        }
        if (!ok) {
            fprintf(stderr, "tandem serve: --cluster %s: %sunknown key \"%s\"\n", path, where, key);
            return -1;
        }
    }
    return 0;
}

/* tp x ep against the shards named (either may be 0: chosen from the other). */
static int check_split(const char *where, int n_shards, int *tp_io, int *ep_io)
{
    if (n_shards == 0 || (*tp_io == 0 && *ep_io == 0)) {
        return 0;
    }
    int tp = *tp_io > 0 ? *tp_io : 1, ep = *ep_io > 0 ? *ep_io : 1;
    if (*tp_io == 0) {
        tp = n_shards / ep;
    }
    if (*ep_io == 0) {
        ep = n_shards / tp;
    }
    if (tp * ep != n_shards) {
        fprintf(stderr, "tandem serve: %stp %d x ep %d is not the %d shards named\n", where, tp, ep,
                n_shards);
        return -1;
    }
    *tp_io = tp;
    *ep_io = ep;
    return 0;
}

/* The "groups" form: one engine group per element (coordinator/router.h). */
static int read_groups(srv_config_t *c, json_t *groups, const char *path)
{
    const size_t n = json_array_size(groups);
    if (!json_is_array(groups) || n == 0 || n > 64) {
        fprintf(stderr,
                "tandem serve: --cluster %s: \"groups\" must be an array of 1 to 64 "
                "group objects\n",
                path);
        return -1;
    }
    c->groups = calloc(n, sizeof(*c->groups));
    if (c->groups == NULL) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *g = json_array_get(groups, i);
        srv_group_config_t *gc = &c->groups[i];
        c->n_groups = (int)i + 1;
        char where[96];
        snprintf(where, sizeof(where), "groups[%zu]: ", i);
        if (!json_is_object(g)) {
            fprintf(stderr, "tandem serve: --cluster %s: %snot an object\n", path, where);
            return -1;
        }
        static const char *const known[] = {"name", "shards", "tp", "ep", "role", "comment"};
        if (only_keys(g, known, sizeof(known) / sizeof(known[0]), path, where) != 0) {
            return -1;
        }
        json_t *name = json_object_get(g, "name");
        char def[32];
        snprintf(def, sizeof(def), "g%zu", i);
        const char *nm = name != NULL ? json_string_value(name) : def;
        bool ok = nm != NULL && nm[0] != '\0' && strlen(nm) <= 64;
        for (const char *p = nm; ok && *p; p++) {
            ok = isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.';
        }
        for (size_t j = 0; ok && j < i; j++) {
            ok = strcmp(c->groups[j].name, nm) != 0;
        }
        if (!ok) {
            fprintf(stderr,
                    "tandem serve: --cluster %s: %s\"name\" must be unique, 1-64 letters, "
                    "digits, '-', '_' or '.'\n",
                    path, where);
            return -1;
        }
        gc->name = strdup(nm);
        json_t *role = json_object_get(g, "role");
        if (role != NULL) {
            tdm_error_t rerr = {0};
            crd_group_role_t r;
            if (!json_is_string(role) ||
                crd_group_role_parse(json_string_value(role), &r, &rerr) != TDM_OK) {
                fprintf(stderr, "tandem serve: --cluster %s: %s\"role\": %s\n", path, where,
                        json_is_string(role) ? tdm_error_msg(&rerr)
                                             : "must be \"mixed\", \"prefill\" or \"decode\"");
                return -1;
            }
            gc->role = (int)r;
        }
        json_t *shards = json_object_get(g, "shards");
        if (shards != NULL &&
            read_shard_list(shards, path, where, &gc->shards, &gc->n_shards) != 0) {
            return -1;
        }
        if (read_split(g, path, where, &gc->tp, &gc->ep) != 0) {
            return -1;
        }
        if (gc->n_shards == 0 && (gc->tp > 0 || gc->ep > 0)) {
            fprintf(stderr, "tandem serve: --cluster %s: %s\"tp\"/\"ep\" need \"shards\"\n", path,
                    where);
            return -1;
        }
        char cwhere[128];
        snprintf(cwhere, sizeof(cwhere), "--cluster %s: %s", path, where);
        if (check_split(cwhere, gc->n_shards, &gc->tp, &gc->ep) != 0) {
            return -1;
        }
    }
    /* disaggregated prefill/decode: pairs of shard groups (api/server/disagg.c checks the
     * rest once the shards answered) */
    int n_role[3] = {0, 0, 0};
    for (int i = 0; i < c->n_groups; i++) {
        const srv_group_config_t *gc = &c->groups[i];
        n_role[gc->role]++;
        if (gc->role != CRD_ROLE_MIXED && gc->n_shards == 0) {
            fprintf(stderr,
                    "tandem serve: --cluster %s: groups[%d]: a \"%s\" group needs \"shards\" "
                    "(its KV storage must be reachable over UCX)\n",
                    path, i, crd_group_role_name((crd_group_role_t)gc->role));
            return -1;
        }
    }
    if ((n_role[CRD_ROLE_PREFILL] > 0 || n_role[CRD_ROLE_DECODE] > 0) &&
        (n_role[CRD_ROLE_PREFILL] != n_role[CRD_ROLE_DECODE] || n_role[CRD_ROLE_MIXED] > 0)) {
        fprintf(stderr,
                "tandem serve: --cluster %s: disaggregated prefill/decode needs as many "
                "\"prefill\" groups as \"decode\" groups and no \"mixed\" one (%d prefill, %d "
                "decode, %d mixed)\n",
                path, n_role[CRD_ROLE_PREFILL], n_role[CRD_ROLE_DECODE], n_role[CRD_ROLE_MIXED]);
        return -1;
    }
    return 0;
}

static int read_cluster(srv_config_t *c, const char *path)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL) {
        fprintf(stderr, "tandem serve: --cluster %s: line %d: %s\n", path, je.line, je.text);
        return -1;
    }
    int rc = -1;
    json_t *groups = json_object_get(root, "groups");
    if (groups != NULL) {
        /* engine groups; "shards"/"tp"/"ep" belong inside them */
        static const char *const known[] = {"groups", "collective", "comment"};
        if (only_keys(root, known, sizeof(known) / sizeof(known[0]), path, "") != 0 ||
            read_groups(c, groups, path) != 0) {
            goto out;
        }
    } else if (read_shard_list(json_object_get(root, "shards"), path, "", &c->shards,
                               &c->n_shards) != 0 ||
               read_split(root, path, "", &c->tp, &c->ep) != 0) {
        goto out;
    }
    json_t *coll = json_object_get(root, "collective");
    if (coll != NULL) {
        tdm_error_t cerr = {0};
        if (!json_is_string(coll) ||
            xp_collective_parse(json_string_value(coll), &c->collective, &cerr) != TDM_OK) {
            fprintf(stderr, "tandem serve: --cluster %s: \"collective\": %s\n", path,
                    json_is_string(coll) ? tdm_error_msg(&cerr)
                                         : "must be \"am\", \"rma\" or \"nccl\"");
            goto out;
        }
    }
    static const char *const known[] = {"shards", "tp", "ep", "collective", "comment"};
    if (groups == NULL && only_keys(root, known, sizeof(known) / sizeof(known[0]), path, "") != 0) {
        goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

static void free_shards(srv_config_t *c)
{
    for (int i = 0; i < c->n_shards; i++) {
        free(c->shards[i]);
    }
    free(c->shards);
    for (int g = 0; g < c->n_groups; g++) {
        for (int i = 0; i < c->groups[g].n_shards; i++) {
            free(c->groups[g].shards[i]);
        }
        free(c->groups[g].shards);
        free(c->groups[g].name);
    }
    free(c->groups);
}

static void free_keys(srv_config_t *c)
{
    for (int i = 0; i < c->n_api_keys; i++) {
        free(c->api_keys[i]);
    }
    free(c->api_keys);
}

int cmd_serve(int argc, char **argv)
{
    srv_config_t c = {.host = "127.0.0.1",
                      .port = 8080,
                      .batch = 512,
                      .max_running = 64,
                      .max_step_s = -1.0,
                      .state_cache = -1,
                      .spec_mode = CRD_SPEC_OFF,
                      .spec_max = 8,
                      .max_waiting = 256,
                      .max_body = 8u << 20,
                      .shutdown_timeout = 30.0,
                      .keepalive_s = 5.0,
                      .tool_parser = "auto",
                      .max_conns = 512,
                      .max_conns_per_client = 256,
                      .header_timeout_s = 10.0,
                      .body_timeout_s = 30.0,
                      .idle_timeout_s = 30.0,
                      .max_header_bytes = 32u << 10,
                      .max_header_line = 8u << 10,
                      .max_headers = 100};
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && v != NULL && (i++, 1))
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            free_keys(&c);
            return 0;
        } else if (ARG("--model") || ARG("-m")) {
            c.model_path = v;
        } else if (ARG("--host")) {
            c.host = v;
        } else if (ARG("--port")) {
            if (parse_int(a, v, 0, 65535, &c.port) != 0) {
                goto out;
            }
        } else if (ARG("--api-key")) {
            if (add_key(&c, v) != 0) {
                goto out;
            }
        } else if (ARG("--api-key-file")) {
            if (read_key_file(&c, v) != 0) {
                goto out;
            }
        } else if (ARG("--max-body-bytes")) {
            c.max_body = parse_size(v);
            if (c.max_body < 1024) {
                fprintf(stderr, "tandem serve: --max-body-bytes must be at least 1K\n");
                goto out;
            }
        } else if (ARG("--max-connections")) {
            if (parse_int(a, v, 1, 65536, &c.max_conns) != 0) {
                goto out;
            }
        } else if (ARG("--max-connections-per-client")) {
            if (parse_int(a, v, 1, 65536, &c.max_conns_per_client) != 0) {
                goto out;
            }
        } else if (ARG("--http-header-timeout") || ARG("--http-body-timeout") ||
                   ARG("--http-idle-timeout")) {
            double *dst = strcmp(a, "--http-header-timeout") == 0 ? &c.header_timeout_s
                          : strcmp(a, "--http-body-timeout") == 0 ? &c.body_timeout_s
                                                                  : &c.idle_timeout_s;
            char *end;
            *dst = strtod(v, &end);
            if (end == v || *end != '\0' || !(*dst >= 0.1 && *dst <= 86400.0)) {
                fprintf(stderr, "tandem serve: %s must be seconds in [0.1, 86400]\n", a);
                goto out;
            }
        } else if (ARG("--max-header-bytes")) {
            c.max_header_bytes = parse_size(v);
            if (c.max_header_bytes < 1024 || c.max_header_bytes > (16u << 20)) {
                fprintf(stderr, "tandem serve: --max-header-bytes must be in [1K, 16M]\n");
                goto out;
            }
        } else if (ARG("--shutdown-timeout")) {
            c.shutdown_timeout = strtod(v, NULL);
        } else if (ARG("--keepalive")) {
            c.keepalive_s = strtod(v, NULL);
            if (c.keepalive_s <= 0) {
                fprintf(stderr, "tandem serve: --keepalive must be positive\n");
                goto out;
            }
        } else if (ARG("--served-model-name")) {
            c.served_name = v;
            for (const char *p = v; *p; p++) {
                if ((unsigned char)*p < 0x20 || *p == '"' || *p == '\\') {
                    fprintf(stderr, "tandem serve: --served-model-name must not contain quotes, "
                                    "backslashes or control characters\n");
                    goto out;
                }
            }
        } else if (ARG("--ctx-size") || ARG("-c")) {
            if (parse_int(a, v, 0, 1 << 24, &c.ctx_size) != 0) {
                goto out;
            }
        } else if (ARG("--tool-parser")) {
            c.tool_parser = v;
        } else if (ARG("--threads") || ARG("-t")) {
            if (parse_int(a, v, 0, 4096, &c.threads) != 0) {
                goto out;
            }
        } else if (ARG("--device")) {
            c.device = v;
        } else if (ARG("--kv-type")) {
            c.kv_type = v;
        } else if (ARG("--batch")) {
            if (parse_int(a, v, 16, 1 << 16, &c.batch) != 0) {
                goto out;
            }
        } else if (ARG("--max-running")) {
            if (parse_int(a, v, 1, 4096, &c.max_running) != 0) {
                goto out;
            }
        } else if (ARG("--max-step-ms")) {
            int ms = 0;
            if (strcmp(v, "auto") == 0) {
                c.max_step_s = -1.0;
            } else if (strcmp(v, "off") == 0) {
                c.max_step_s = 0.0;
            } else if (parse_int(a, v, 1, 600000, &ms) == 0) {
                c.max_step_s = ms / 1000.0;
            } else {
                goto out;
            }
        } else if (ARG("--state-every")) {
            if (parse_int(a, v, 0, 1 << 24, &c.state_every) != 0) {
                goto out;
            }
        } else if (ARG("--state-cache")) {
            if (parse_int(a, v, 0, 1 << 16, &c.state_cache) != 0) {
                goto out;
            }
        } else if (ARG("--max-waiting")) {
            if (parse_int(a, v, 0, 1 << 20, &c.max_waiting) != 0) {
                goto out;
            }
        } else if (ARG("--kv-memory")) {
            c.kv_bytes = parse_size(v);
            if (c.kv_bytes == 0) {
                fprintf(stderr, "tandem serve: --kv-memory '%s' is not a size (e.g. 2G)\n", v);
                goto out;
            }
        } else if (ARG("--routing")) {
            tdm_error_t rerr = {0};
            crd_routing_t rt;
            if (crd_routing_parse(v, &rt, &rerr) != TDM_OK) {
                fprintf(stderr, "tandem serve: --routing: %s\n", tdm_error_msg(&rerr));
                goto out;
            }
            c.routing = (int)rt;
        } else if (ARG("--shards")) {
            if (c.n_shards > 0 || c.n_groups > 0) {
                fprintf(stderr, "tandem serve: give the shards with --shards or --cluster, "
                                "not both\n");
                goto out;
            }
            if (add_shards(&c, v) != 0) {
                goto out;
            }
        } else if (ARG("--cluster")) {
            if (c.n_shards > 0 || c.n_groups > 0) {
                fprintf(stderr, "tandem serve: give the shards with --shards or --cluster, "
                                "not both\n");
                goto out;
            }
            if (read_cluster(&c, v) != 0) {
                goto out;
            }
        } else if (ARG("--tp")) {
            if (parse_int(a, v, 1, 4096, &c.tp) != 0) {
                goto out;
            }
        } else if (ARG("--ep")) {
            if (parse_int(a, v, 1, 4096, &c.ep) != 0) {
                goto out;
            }
        } else if (ARG("--collective")) {
            if (parse_collective(v, &c.collective) != 0) {
                goto out;
            }
        } else if (ARG("--collective-timeout-ms")) {
            if (parse_int(a, v, 1, 3600000, &c.coll_timeout_ms) != 0) {
                goto out;
            }
        } else if (ARG("--shard-timeout-ms")) {
            if (parse_int(a, v, 100, 3600000, &c.shard_timeout_ms) != 0) {
                goto out;
            }
        } else if (ARG("--shard-start-timeout")) {
            if (parse_int(a, v, 1, 86400, &c.shard_start_timeout_s) != 0) {
                goto out;
            }
        } else if (ARG("--cluster-secret")) {
            c.cluster_secret = v;
        } else if (strcmp(a, "--contiguous-experts") == 0) {
            c.contiguous_experts = true;
        } else if (strcmp(a, "--cache-stable-prompts") == 0) {
            c.cache_stable = true;
        } else if (ARG("--spec")) {
            tdm_error_t serr = {0};
            crd_spec_mode_t m;
            if (crd_spec_mode_parse(v, &m, &serr) != TDM_OK) {
                fprintf(stderr, "tandem serve: --spec: %s\n", tdm_error_msg(&serr));
                goto out;
            }
            c.spec_mode = (int)m;
        } else if (ARG("--spec-max")) {
            if (parse_int(a, v, 1, CRD_SPEC_MAX_DRAFT, &c.spec_max) != 0) {
                goto out;
            }
        } else if (strcmp(a, "--spec-always") == 0) {
            c.spec_always = true;
        } else if (ARG("--draft-model")) {
            c.draft_model = v;
        } else if (ARG("--max-tokens")) {
            if (parse_int(a, v, 0, INT32_MAX, &c.max_tokens_default) != 0) {
                goto out;
            }
        } else {
            fprintf(stderr, "tandem serve: unknown or incomplete option '%s' (see --help)\n", a);
            goto out;
        }
#undef ARG
    }
    if (c.model_path == NULL) {
        fprintf(stderr, "tandem serve: --model is required (see --help)\n");
        goto out;
    }
    if (c.spec_mode == CRD_SPEC_DRAFT && c.draft_model == NULL) {
        fprintf(stderr, "tandem serve: --spec draft needs --draft-model FILE\n");
        goto out;
    }
    if (c.cluster_secret == NULL) {
        c.cluster_secret = getenv("TANDEM_CLUSTER_SECRET");
    }
    const char *env_key = getenv("TANDEM_API_KEY");
    if (env_key != NULL && env_key[0] != '\0' && add_key(&c, env_key) != 0) {
        goto out;
    }
    if (c.max_header_line > c.max_header_bytes) {
        c.max_header_line = c.max_header_bytes;
    }
    if (c.max_running > c.batch) {
        c.max_running = c.batch;
    }
    if ((c.tp > 0 || c.ep > 0) && c.n_groups > 0) {
        fprintf(stderr, "tandem serve: with \"groups\" in --cluster, give tp/ep per group\n");
        goto out;
    }
    if ((c.tp > 0 || c.ep > 0) && c.n_shards == 0) {
        fprintf(stderr, "tandem serve: --tp/--ep need --shards or --cluster\n");
        goto out;
    }
    if (check_split("", c.n_shards, &c.tp, &c.ep) != 0) {
        goto out;
    }
    rc = srv_run(&c);
out:
    free_shards(&c);
    free_keys(&c);
    return rc;
}
