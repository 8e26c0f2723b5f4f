/*
 * cmd_shard.c - `tandem shard`: run one shard of a distributed model (transport/shard_server.h).
 *
 *   tandem shard --model M.gguf --listen HOST:PORT [--device D] [--kv-type T] [--threads N]
 *                [--ucx-tls LIST] [--ucx-devices LIST] [--node-memory SIZE] [--log-level L]
 *
 * The shard listens; `tandem serve --shards HOST:PORT,...` dials it. It serves until
 * SIGTERM/SIGINT; a coordinator that goes away leaves it waiting for the next one.
 */
#include "api/cli/cli.h"
#include "common/log.h"
#include "topology/topo_plan.h"
#include "transport/shard_server.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tandem shard --model M.gguf --listen HOST:PORT [options]\n"
            "\n"
            "  --model FILE         GGUF file (the same file the coordinator serves)\n"
            "  --listen HOST:PORT   control-plane address the coordinator dials (default\n"
            "                       127.0.0.1:7100; port 0 picks a free one and prints it)\n"
            "  --device D           auto (a usable GPU, else the CPU; default), cpu, cuda,\n"
            "                       cuda:N\n"
            "  --kv-type T          KV cache rows: f32, f16, q8_0 (default: f16 on a GPU,\n"
            "                       f32 on the CPU)\n"
            "  --threads N          kernel threads (default: all CPUs)\n"
            "  --ucx-tls LIST       UCX transports of the data plane (default: UCX_TLS or\n"
            "                       UCX's choice; e.g. tcp, sm, rc)\n"
            "  --ucx-devices LIST   UCX devices (default: UCX_NET_DEVICES; on a Spark both\n"
            "                       twins, see `tandem topo`)\n"
            "  --node-memory SIZE   memory this node offers the plan (default: the GPU's free\n"
            "                       memory, or MemAvailable on the CPU)\n"
            "  --cluster-secret S   only a coordinator that proves this shared secret may\n"
            "                       drive the shard (also TANDEM_CLUSTER_SECRET, which keeps\n"
            "                       it out of `ps`; give `tandem serve` the same)\n"
            "  --log-level L        error|warn|info|debug (default info)\n");
}

typedef struct sig_arg {
    sigset_t set;
    xp_shard_server_t *srv;
} sig_arg_t;

static void *sig_main(void *p)
{
    sig_arg_t *a = p;
    int sig = 0;
    sigwait(&a->set, &sig);
    fprintf(stderr, "tandem shard: %s: stopping\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    xp_shard_server_stop(a->srv);
    return NULL;
}

int cmd_shard(int argc, char **argv)
{
    xp_shard_params_t p = {.listen = "127.0.0.1:7100"};
    /* a shard is a daemon: its log is its interface. Info unless `tandem --log-level` or
     * TANDEM_LOG_LEVEL chose otherwise (they run before this). */
    if (tdm_log_get_level() == TDM_LOG_WARN && getenv("TANDEM_LOG_LEVEL") == NULL) {
        tdm_log_set_level(TDM_LOG_INFO);
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "tandem shard: %s needs a value (or is unknown)\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--model") == 0) {
            p.model_path = v;
        } else if (strcmp(a, "--listen") == 0) {
            p.listen = v;
        } else if (strcmp(a, "--threads") == 0) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end != '\0' || n < 1 || n > 4096) {
                fprintf(stderr, "tandem shard: --threads '%s': expected 1..4096\n", v);
                return 2;
            }
            p.threads = (int)n;
        } else if (strcmp(a, "--device") == 0) {
            p.device = v;
        } else if (strcmp(a, "--kv-type") == 0) {
            p.kv_type = v;
        } else if (strcmp(a, "--ucx-tls") == 0) {
            p.ucx_tls = v;
        } else if (strcmp(a, "--ucx-devices") == 0) {
            p.ucx_devices = v;
        } else if (strcmp(a, "--node-memory") == 0) {
            if (!topo_parse_size(v, &p.node_memory) || p.node_memory == 0) {
                fprintf(stderr, "tandem shard: --node-memory '%s': expected a size (64G)\n", v);
                return 2;
            }
        } else if (strcmp(a, "--cluster-secret") == 0) {
            p.cluster_secret = v;
        } else if (strcmp(a, "--log-level") == 0) {
            tdm_log_level_t lv;
            if (tdm_log_parse_level(v, &lv) != 0) {
                fprintf(stderr, "tandem shard: --log-level '%s' unknown\n", v);
                return 2;
            }
            tdm_log_set_level(lv);
        } else {
            fprintf(stderr, "tandem shard: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (p.cluster_secret == NULL) {
        p.cluster_secret = getenv("TANDEM_CLUSTER_SECRET");
    }
    if (p.model_path == NULL) {
        fprintf(stderr, "tandem shard: --model is required\n");
        usage(stderr);
        return 2;
    }
    sig_arg_t sa;
    sigemptyset(&sa.set);
    sigaddset(&sa.set, SIGTERM);
    sigaddset(&sa.set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sa.set, NULL);
    signal(SIGPIPE, SIG_IGN);

    tdm_error_t err = {0};
    if (xp_shard_server_create(&p, &sa.srv, &err) != TDM_OK) {
        fprintf(stderr, "tandem shard: %s\n", tdm_error_msg(&err));
        return 1;
    }
    fprintf(stderr, "tandem shard: listening on %s (model %s)\n", xp_shard_server_endpoint(sa.srv),
            p.model_path);
    pthread_t th;
    pthread_create(&th, NULL, sig_main, &sa);
    int rc = xp_shard_server_run(sa.srv, &err) == TDM_OK ? 0 : 1;
    if (rc != 0) {
        fprintf(stderr, "tandem shard: %s\n", tdm_error_msg(&err));
        pthread_kill(th, SIGTERM);
    }
    pthread_join(th, NULL);
    xp_shard_server_destroy(sa.srv);
    fprintf(stderr, "tandem shard: stopped\n");
    return rc;
}
