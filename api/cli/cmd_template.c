/* cmd_template.c - `tandem template`: render a chat template (a model's, from its GGUF, or
 * a .jinja file) with a JSON context; --jsonl renders many contexts in one process and
 * prints one JSON result per line (used by the test suite against Python jinja2). */
#include "api/cli/cli.h"
#include "common/status.h"
#include "coordinator/template.h"
#include "model/gguf.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: tandem template (--model M.gguf | --template FILE.jinja)\n"
        "                       [--context CTX.json] [--jsonl CASES.jsonl] [options]\n\n"
        "Renders a chat template with a JSON context (messages, tools,\n"
        "add_generation_prompt, and extra keys such as enable_thinking or\n"
        "reasoning_effort) and prints the prompt text.\n\n"
        "  --model M.gguf         use the model's tokenizer.chat_template and BOS/EOS texts\n"
        "  --name NAME            use tokenizer.chat_template.NAME instead\n"
        "  --template FILE        use a template file\n"
        "  --context FILE         the context (JSON object; '-' = stdin); default {}\n"
        "  --jsonl FILE           render each line (a JSON object, merged over --context);\n"
        "                         prints {\"output\": ...} or {\"error\": ..., \"status\": ...}\n"
        "                         per line\n"
        "  --bos TEXT, --eos TEXT override the bos_token / eos_token defaults\n"
        "  --now EPOCH            fixed time for strftime_now (seconds, may be fractional)\n"
        "  --no-reasoning-alias   do not copy reasoning_content to thinking\n"
        "  --max-output BYTES, --max-iterations N, --max-depth N, --max-memory BYTES\n"
        "                         resource limits of one render\n");
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        if (n == cap) {
            char *nb = realloc(buf, cap * 2);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (k == 0) {
            break;
        }
    }
    if (f != stdin) {
        fclose(f);
    }
    if (buf != NULL) {
        char *nb = realloc(buf, n + 1);
        if (nb != NULL) {
            buf = nb;
            buf[n] = '\0';
        }
    }
    *len = n;
    return buf;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-') {
        return false;
    }
    *out = v;
    return true;
}

/* merges line over base (both objects) into a new object */
static json_t *merged(const json_t *base, json_t *line)
{
    json_t *m = json_deep_copy(base);
    if (m == NULL) {
        return NULL;
    }
    if (json_object_update(m, line) != 0) {
        json_decref(m);
        return NULL;
    }
    return m;
}

static int render_one(const tpl_template_t *tpl, json_t *ctx, const tpl_render_opts_t *opts,
                      bool jsonl)
{
    tdm_error_t err;
    tdm_error_clear(&err);
    char *out = NULL;
    size_t len = 0;
    tdm_status_t st = tpl_render_ex(tpl, ctx, opts, &out, &len, &err);
    if (!jsonl) {
        if (st != TDM_OK) {
            fprintf(stderr, "tandem template: %s\n", tdm_error_msg(&err));
            return 1;
        }
        fwrite(out, 1, len, stdout);
        free(out);
        return 0;
    }
    json_t *res = json_object();
    if (st == TDM_OK) {
        json_t *s = json_stringn(out, len);
        if (s == NULL) {
            json_object_set_new(res, "error", json_string("rendered output is not valid UTF-8"));
            json_object_set_new(res, "status", json_string(tdm_status_str(TDM_ERR_FORMAT)));
        } else {
            json_object_set_new(res, "output", s);
        }
        free(out);
    } else {
        json_t *m = json_string(tdm_error_msg(&err));
        json_object_set_new(res, "error", m ? m : json_string("(message is not valid UTF-8)"));
        json_object_set_new(res, "status", json_string(tdm_status_str(st)));
    }
    char *line = json_dumps(res, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(res);
    if (line == NULL) {
        fprintf(stderr, "tandem template: out of memory\n");
        return 1;
    }
    fputs(line, stdout);
    fputc('\n', stdout);
    free(line);
    return 0;
}

int cmd_template(int argc, char **argv)
{
    const char *model = NULL, *tfile = NULL, *cfile = NULL, *jfile = NULL, *name = NULL;
    const char *bos = NULL, *eos = NULL;
    tpl_render_opts_t opts = tpl_default_opts();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t u;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--no-reasoning-alias") == 0) {
            opts.no_reasoning_alias = true;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "tandem template: '%s' needs a value (or is unknown)\n\n", a);
            usage(stderr);
            return 2;
        }
        i++;
        if (strcmp(a, "--model") == 0) {
            model = v;
        } else if (strcmp(a, "--template") == 0) {
            tfile = v;
        } else if (strcmp(a, "--name") == 0) {
            name = v;
        } else if (strcmp(a, "--context") == 0) {
            cfile = v;
        } else if (strcmp(a, "--jsonl") == 0) {
            jfile = v;
        } else if (strcmp(a, "--bos") == 0) {
            bos = v;
        } else if (strcmp(a, "--eos") == 0) {
            eos = v;
        } else if (strcmp(a, "--now") == 0) {
            char *end;
            double t = strtod(v, &end);
            if (end == v || *end != '\0' || !isfinite(t) || t < 0 || t > 1e12) {
                fprintf(stderr, "tandem template: bad --now '%s' (seconds since the epoch)\n", v);
                return 2;
            }
            opts.has_time = true;
            opts.time_sec = (int64_t)floor(t);
            opts.time_usec = (int32_t)llround((t - floor(t)) * 1e6);
            if (opts.time_usec >= 1000000) {
                opts.time_sec++;
                opts.time_usec -= 1000000;
            }
        } else if (strcmp(a, "--max-output") == 0 && parse_u64(v, &u)) {
            opts.limits.max_output = (size_t)u;
        } else if (strcmp(a, "--max-memory") == 0 && parse_u64(v, &u)) {
            opts.limits.max_memory = (size_t)u;
        } else if (strcmp(a, "--max-iterations") == 0 && parse_u64(v, &u)) {
            opts.limits.max_iterations = u;
        } else if (strcmp(a, "--max-depth") == 0 && parse_u64(v, &u) && u <= 100000) {
            opts.limits.max_depth = (uint32_t)u;
        } else {
            fprintf(stderr, "tandem template: unknown or bad option '%s %s'\n\n", a, v);
            usage(stderr);
            return 2;
        }
    }
    if ((model == NULL) == (tfile == NULL)) {
        fprintf(stderr, "tandem template: give exactly one of --model and --template\n\n");
        usage(stderr);
        return 2;
    }

    tdm_error_t err;
    tdm_error_clear(&err);
    tpl_template_t *tpl = NULL;
    if (model != NULL) {
        gguf_ctx_t *g = NULL;
        if (gguf_open(model, &g, &err) != TDM_OK) {
            fprintf(stderr, "tandem template: %s\n", tdm_error_msg(&err));
            return 1;
        }
        tdm_status_t st = tpl_from_gguf(g, name, &tpl, &err);
        gguf_close(g);
        if (st != TDM_OK) {
            fprintf(stderr, "tandem template: %s: %s\n", model, tdm_error_msg(&err));
            return 1;
        }
    } else {
        size_t len;
        char *src = read_all(tfile, &len);
        if (src == NULL) {
            fprintf(stderr, "tandem template: cannot read '%s': %s\n", tfile, strerror(errno));
            return 1;
        }
        tdm_status_t st = tpl_compile_n(src, len, &tpl, &err);
        free(src);
        if (st != TDM_OK) {
            fprintf(stderr, "tandem template: %s: %s\n", tfile, tdm_error_msg(&err));
            return 1;
        }
    }
    if (bos != NULL || eos != NULL) {
        tpl_set_special_tokens(tpl, bos ? bos : tpl_bos_token(tpl), eos ? eos : tpl_eos_token(tpl),
                               NULL);
    }

    json_t *base = NULL;
    if (cfile != NULL) {
        json_error_t je;
        size_t len;
        char *text = read_all(cfile, &len);
        if (text == NULL) {
            fprintf(stderr, "tandem template: cannot read '%s': %s\n", cfile, strerror(errno));
            tpl_destroy(tpl);
            return 1;
        }
        base = json_loadb(text, len, 0, &je);
        free(text);
        if (base == NULL || !json_is_object(base)) {
            fprintf(stderr, "tandem template: %s: %s\n", cfile,
                    base == NULL ? je.text : "the context must be a JSON object");
            json_decref(base);
            tpl_destroy(tpl);
            return 1;
        }
    } else {
        base = json_object();
    }

    int rc = 0;
    if (jfile == NULL) {
        rc = render_one(tpl, base, &opts, false);
    } else {
        FILE *f = strcmp(jfile, "-") == 0 ? stdin : fopen(jfile, "rb");
        if (f == NULL) {
            fprintf(stderr, "tandem template: cannot open '%s': %s\n", jfile, strerror(errno));
            json_decref(base);
            tpl_destroy(tpl);
            return 1;
        }
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        size_t lineno = 0;
        while ((n = getline(&line, &cap, f)) >= 0) {
            lineno++;
            while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
                line[--n] = '\0';
            }
            if (n == 0) {
                continue;
            }
            json_error_t je;
            json_t *lj = json_loadb(line, (size_t)n, 0, &je);
            json_t *ctx = (lj != NULL && json_is_object(lj)) ? merged(base, lj) : NULL;
            if (ctx == NULL) {
                json_t *res = json_object();
                char msg[256];
                snprintf(msg, sizeof(msg), "%s line %zu: %s", jfile, lineno,
                         lj == NULL ? je.text : "not a JSON object");
                json_object_set_new(res, "error", json_string(msg));
                json_object_set_new(res, "status",
                                    json_string(tdm_status_str(TDM_ERR_INVALID_PARAM)));
                char *s = json_dumps(res, JSON_COMPACT | JSON_ENSURE_ASCII);
                if (s != NULL) {
                    puts(s);
                    free(s);
                }
                json_decref(res);
                json_decref(lj);
                continue;
            }
            rc |= render_one(tpl, ctx, &opts, true);
            json_decref(ctx);
            json_decref(lj);
        }
        free(line);
        if (f != stdin) {
            fclose(f);
        }
    }
    fflush(stdout);
    json_decref(base);
    tpl_destroy(tpl);
    return rc;
}
