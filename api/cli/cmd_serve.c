/*
 * cmd_serve.c - `tandem serve`: options into srv_config_t, then srv_run (api/server).
 *
 *   tandem serve --model M.gguf [--host 127.0.0.1] [--port 8080] [--api-key KEY] ...
 */
#include "api/cli/cli.h"
#include "api/server/srv.h"

#include <ctype.h>
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
        "  --max-connections N      concurrent connections (default 512)\n"
        "  --shutdown-timeout S     seconds in-flight requests get after SIGTERM (default 30)\n"
        "  --keepalive S            SSE comment interval while waiting (default 5)\n"
        "model:\n"
        "  --model FILE             GGUF file (first file of a split model)\n"
        "  --served-model-name NAME the id clients put in 'model' (default: file name\n"
        "                           without .gguf)\n"
        "  --ctx-size N             positions per sequence (default: the model's, at most 8192)\n"
        "  --tool-parser P          auto (from the chat template), hermes, qwen3_coder, none\n"
        "engine:\n"
        "  --threads N              kernel threads (default: all CPUs)\n"
        "  --batch N                token budget per step (default 512)\n"
        "  --max-running N          sequences per step (default 64)\n"
        "  --max-waiting N          queue limit; more requests get 429 (default 256)\n"
        "  --kv-memory SIZE         KV cache budget, e.g. 2G, 512M (default: 4 x context)\n"
        "  --max-tokens N           default max_tokens when a request sets none (default:\n"
        "                           until the context is full)\n");
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
                      .max_waiting = 256,
                      .max_body = 8u << 20,
                      .shutdown_timeout = 30.0,
                      .keepalive_s = 5.0,
                      .tool_parser = "auto",
                      .max_conns = 512};
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
        } else if (ARG("--batch")) {
            if (parse_int(a, v, 16, 1 << 16, &c.batch) != 0) {
                goto out;
            }
        } else if (ARG("--max-running")) {
            if (parse_int(a, v, 1, 4096, &c.max_running) != 0) {
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
    const char *env_key = getenv("TANDEM_API_KEY");
    if (env_key != NULL && env_key[0] != '\0' && add_key(&c, env_key) != 0) {
        goto out;
    }
    if (c.max_running > c.batch) {
        c.max_running = c.batch;
    }
    rc = srv_run(&c);
out:
    free_keys(&c);
    return rc;
}
