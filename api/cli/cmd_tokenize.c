/*
 * cmd_tokenize.c - `tandem tokenize`: the model's tokenizer from the command line.
 *
 *   tandem tokenize --model M.gguf --text STR          ids of one string (JSON)
 *   tandem tokenize --model M.gguf --jsonl FILE|-      batch: one JSON line in, one out
 *   tandem tokenize --model M.gguf --detokenize FILE|- batch: {"ids":[...]} in, text out
 *   tandem tokenize --model M.gguf --bench FILE        encode throughput (MB/s), one core
 *   tandem tokenize --model M.gguf --info              vocabulary summary (JSON)
 *
 * Batch input lines are a JSON string or an object {"text": ..., "parse_special": bool,
 * "add_special": bool}; the output line is {"ids": [...]} and, with --decode, also
 * "decoded" (tok_decode) and "stream" (the concatenated tok_decode_stream pieces) so a
 * test can check both decoders in the same run. One process handles a whole corpus.
 */
#include "api/cli/cli.h"
#include "common/clock.h"
#include "common/status.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "model/gguf.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tandem tokenize --model M.gguf (--text STR | --jsonl FILE | --detokenize FILE "
            "|\n"
            "                       --bench FILE | --info) [options]\n"
            "  --parse-special   match control-token texts (default for --text: off)\n"
            "  --add-special     add BOS/EOS as the model's add_bos/add_eos say\n"
            "  --decode          with --jsonl: also output \"decoded\" and \"stream\"\n"
            "  --render-special  decoding shows control tokens\n"
            "  --iters N         with --bench: timed passes after the first (default 3)\n");
}

static void print_ids(FILE *out, const tok_ids_t *ids)
{
    fputc('[', out);
    for (size_t i = 0; i < ids->n; i++) {
        fprintf(out, i ? ",%d" : "%d", ids->ids[i]);
    }
    fputc(']', out);
}

static void print_json_str(FILE *out, const char *s, size_t n)
{
    json_t *j = json_stringn_nocheck(s, n);
    char *d = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    fputs(d ? d : "null", out);
    free(d);
    json_decref(j);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (n < cap) {
            break;
        }
        char *nb = realloc(buf, cap * 2);
        if (nb == NULL) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    *len = n;
    return buf;
}

static int run_jsonl(const tok_vocab_t *v, tok_workspace_t *ws, const char *path,
                     unsigned enc_flags, unsigned dec_flags, bool decode)
{
    FILE *in = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (in == NULL) {
        fprintf(stderr, "tandem tokenize: cannot open %s\n", path);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0;
    int rc = 0;
    tok_ids_t ids = {0};
    tok_decode_stream_t st;
    char *sbuf = NULL;
    size_t scap = 0;
    while ((n = getline(&line, &cap, in)) >= 0) {
        lineno++;
        json_error_t jerr;
        json_t *j = json_loadb(line, (size_t)n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        const char *text = NULL;
        size_t len = 0;
        unsigned flags = enc_flags;
        if (json_is_string(j)) {
            text = json_string_value(j);
            len = json_string_length(j);
        } else if (json_is_object(j) && json_is_string(json_object_get(j, "text"))) {
            json_t *t = json_object_get(j, "text");
            text = json_string_value(t);
            len = json_string_length(t);
            json_t *ps = json_object_get(j, "parse_special");
            json_t *as = json_object_get(j, "add_special");
            if (json_is_boolean(ps)) {
                flags = json_is_true(ps) ? (flags | TOK_ENC_PARSE_SPECIAL)
                                         : (flags & ~(unsigned)TOK_ENC_PARSE_SPECIAL);
            }
            if (json_is_boolean(as)) {
                flags = json_is_true(as) ? (flags | TOK_ENC_ADD_SPECIAL)
                                         : (flags & ~(unsigned)TOK_ENC_ADD_SPECIAL);
            }
        } else {
            printf("{\"error\":\"line %ld: expected a JSON string or {\\\"text\\\": ...}\"}\n",
                   lineno);
            json_decref(j);
            rc = 1;
            continue;
        }
        tdm_error_t err;
        tdm_error_clear(&err);
        ids.n = 0;
        if (tok_encode(v, ws, text, len, flags, &ids, &err) != TDM_OK) {
            printf("{\"error\":");
            print_json_str(stdout, tdm_error_msg(&err), strlen(tdm_error_msg(&err)));
            printf("}\n");
            json_decref(j);
            rc = 1;
            continue;
        }
        printf("{\"ids\":");
        print_ids(stdout, &ids);
        if (decode) {
            char *dec = NULL;
            size_t dl = 0;
            if (tok_decode(v, ids.ids, ids.n, dec_flags, &dec, &dl, &err) == TDM_OK) {
                printf(",\"decoded\":");
                print_json_str(stdout, dec, dl);
                free(dec);
            }
            tok_decode_stream_init(&st, v, dec_flags);
            size_t sl = 0;
            bool ok = true;
            for (size_t i = 0; i <= ids.n && ok; i++) {
                const char *piece;
                size_t pl;
                tdm_status_t s = i < ids.n
                                     ? tok_decode_stream_feed(&st, ids.ids[i], &piece, &pl, &err)
                                     : tok_decode_stream_flush(&st, &piece, &pl, &err);
                if (s != TDM_OK) {
                    ok = false;
                    break;
                }
                if (sl + pl + 1 > scap) {
                    scap = (sl + pl + 1) * 2;
                    char *nb = realloc(sbuf, scap);
                    if (nb == NULL) {
                        ok = false;
                        break;
                    }
                    sbuf = nb;
                }
                memcpy(sbuf + sl, piece, pl);
                sl += pl;
            }
            tok_decode_stream_free(&st);
            if (ok) {
                printf(",\"stream\":");
                print_json_str(stdout, sbuf ? sbuf : "", sl);
            }
        }
        printf("}\n");
        json_decref(j);
    }
    free(sbuf);
    free(line);
    tok_ids_free(&ids);
    if (in != stdin) {
        fclose(in);
    }
    fflush(stdout);
    return rc;
}

static int run_detokenize(const tok_vocab_t *v, const char *path, unsigned dec_flags)
{
    FILE *in = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (in == NULL) {
        fprintf(stderr, "tandem tokenize: cannot open %s\n", path);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    tok_ids_t ids = {0};
    while ((n = getline(&line, &cap, in)) >= 0) {
        json_error_t jerr;
        json_t *j = json_loadb(line, (size_t)n, JSON_DECODE_ANY, &jerr);
        json_t *arr = json_is_object(j) ? json_object_get(j, "ids") : j;
        ids.n = 0;
        bool ok = json_is_array(arr);
        for (size_t i = 0; ok && i < json_array_size(arr); i++) {
            json_t *e = json_array_get(arr, i);
            if (!json_is_integer(e) || json_integer_value(e) < INT32_MIN ||
                json_integer_value(e) > INT32_MAX) {
                ok = false;
                break;
            }
            if (ids.n == ids.cap) {
                size_t nc = ids.cap ? ids.cap * 2 : 64;
                tok_id_t *p = realloc(ids.ids, nc * sizeof(tok_id_t));
                if (p == NULL) {
                    ok = false;
                    break;
                }
                ids.ids = p;
                ids.cap = nc;
            }
            ids.ids[ids.n++] = (tok_id_t)json_integer_value(e);
        }
        tdm_error_t err;
        tdm_error_clear(&err);
        char *dec = NULL;
        size_t dl = 0;
        if (!ok) {
            printf("{\"error\":\"expected {\\\"ids\\\": [integers]}\"}\n");
            rc = 1;
        } else if (tok_decode(v, ids.ids, ids.n, dec_flags, &dec, &dl, &err) != TDM_OK) {
            printf("{\"error\":");
            print_json_str(stdout, tdm_error_msg(&err), strlen(tdm_error_msg(&err)));
            printf("}\n");
            rc = 1;
        } else {
            printf("{\"text\":");
            print_json_str(stdout, dec, dl);
            printf("}\n");
        }
        free(dec);
        json_decref(j);
    }
    free(line);
    tok_ids_free(&ids);
    if (in != stdin) {
        fclose(in);
    }
    return rc;
}

/* Encodes every line of the file (newline included) as one document, like the HF side of
 * bench/bench_tokenizer.py; the first pass is timed alone (cold word cache), then `iters`
 * more; prints JSON with both rates. Load time is excluded. */
static int run_bench(const tok_vocab_t *v, tok_workspace_t *ws, const char *path, unsigned flags,
                     int iters)
{
    size_t len = 0;
    char *buf = read_file(path, &len);
    if (buf == NULL) {
        fprintf(stderr, "tandem tokenize: cannot read %s\n", path);
        return 1;
    }
    tok_ids_t ids = {0};
    double cold = 0, best = 0;
    size_t n_tokens = 0;
    for (int it = 0; it <= iters; it++) {
        size_t tokens = 0;
        double t0 = tdm_now_s();
        size_t pos = 0;
        while (pos < len) {
            const char *nl = memchr(buf + pos, '\n', len - pos);
            size_t end = nl ? (size_t)(nl - buf) + 1 : len;
            ids.n = 0;
            tdm_error_t err;
            tdm_error_clear(&err);
            if (tok_encode(v, ws, buf + pos, end - pos, flags, &ids, &err) != TDM_OK) {
                fprintf(stderr, "tandem tokenize: %s\n", tdm_error_msg(&err));
                free(buf);
                tok_ids_free(&ids);
                return 1;
            }
            tokens += ids.n;
            pos = end;
        }
        double dt = tdm_now_s() - t0;
        if (it == 0) {
            cold = dt;
            n_tokens = tokens;
        } else if (best == 0 || dt < best) {
            best = dt;
        }
    }
    if (iters == 0) {
        best = cold;
    }
    printf("{\"bytes\":%zu,\"tokens\":%zu,\"cold_s\":%.6f,\"best_s\":%.6f,"
           "\"cold_mb_per_s\":%.3f,\"mb_per_s\":%.3f}\n",
           len, n_tokens, cold, best, (double)len / 1e6 / cold, (double)len / 1e6 / best);
    free(buf);
    tok_ids_free(&ids);
    return 0;
}

static void print_info(const tok_vocab_t *v)
{
    size_t n_eog;
    const tok_id_t *eog = tok_eog_ids(v, &n_eog);
    printf("{\"n_tokens\":%u,\"n_merges\":%u,\"pre\":\"%s\",\"bos\":%d,\"eos\":%d,\"eot\":%d,"
           "\"pad\":%d,\"add_bos\":%s,\"add_eos\":%s,\"normalizer\":\"%s\",\"eog\":[",
           tok_vocab_n_tokens(v), tok_vocab_n_merges(v), tok_vocab_pre(v), tok_vocab_bos(v),
           tok_vocab_eos(v), tok_vocab_eot(v), tok_vocab_pad(v),
           tok_vocab_add_bos(v) ? "true" : "false", tok_vocab_add_eos(v) ? "true" : "false",
           tok_vocab_nfc(v) ? "nfc" : "none");
    for (size_t i = 0; i < n_eog; i++) {
        printf(i ? ",%d" : "%d", eog[i]);
    }
    printf("]}\n");
}

int cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *text = NULL, *jsonl = NULL, *detok = NULL, *bench = NULL;
    bool info = false, decode = false;
    unsigned enc = 0, dec = 0;
    int iters = 3;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--model") == 0 && has_val) {
            model = argv[++i];
        } else if (strcmp(a, "--text") == 0 && has_val) {
            text = argv[++i];
        } else if (strcmp(a, "--jsonl") == 0 && has_val) {
            jsonl = argv[++i];
        } else if (strcmp(a, "--detokenize") == 0 && has_val) {
            detok = argv[++i];
        } else if (strcmp(a, "--bench") == 0 && has_val) {
            bench = argv[++i];
        } else if (strcmp(a, "--iters") == 0 && has_val) {
            iters = atoi(argv[++i]);
        } else if (strcmp(a, "--info") == 0) {
            info = true;
        } else if (strcmp(a, "--decode") == 0) {
            decode = true;
        } else if (strcmp(a, "--parse-special") == 0) {
            enc |= TOK_ENC_PARSE_SPECIAL;
        } else if (strcmp(a, "--add-special") == 0) {
            enc |= TOK_ENC_ADD_SPECIAL;
        } else if (strcmp(a, "--render-special") == 0) {
            dec |= TOK_DEC_RENDER_SPECIAL;
        } else {
            fprintf(stderr, "tandem tokenize: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    int modes = (text != NULL) + (jsonl != NULL) + (detok != NULL) + (bench != NULL) + info;
    if (model == NULL || modes != 1 || iters < 0) {
        usage(stderr);
        return 2;
    }
    tdm_error_t err;
    tdm_error_clear(&err);
    gguf_ctx_t *g = NULL;
    tok_vocab_t *v = NULL;
    tok_workspace_t *ws = NULL;
    if (gguf_open(model, &g, &err) != TDM_OK || tok_vocab_from_gguf(g, &v, &err) != TDM_OK ||
        tok_workspace_create(v, &ws, &err) != TDM_OK) {
        fprintf(stderr, "tandem tokenize: %s: %s\n", model, tdm_error_msg(&err));
        tok_vocab_destroy(v);
        gguf_close(g);
        return 1;
    }
    gguf_close(g); /* the vocabulary keeps its own copy */
    int rc = 0;
    if (info) {
        print_info(v);
    } else if (text) {
        tok_ids_t ids = {0};
        if (tok_encode(v, ws, text, strlen(text), enc, &ids, &err) != TDM_OK) {
            fprintf(stderr, "tandem tokenize: %s\n", tdm_error_msg(&err));
            rc = 1;
        } else {
            printf("{\"ids\":");
            print_ids(stdout, &ids);
            printf("}\n");
        }
        tok_ids_free(&ids);
    } else if (jsonl) {
        rc = run_jsonl(v, ws, jsonl, enc, dec, decode);
    } else if (detok) {
        rc = run_detokenize(v, detok, dec);
    } else {
        rc = run_bench(v, ws, bench, enc, iters);
    }
    tok_workspace_destroy(ws);
    tok_vocab_destroy(v);
    return rc;
}
