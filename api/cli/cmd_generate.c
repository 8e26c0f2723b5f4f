/*
 * cmd_generate.c - `tandem generate`: one prompt or chat through the model, streamed.
 *
 *   tandem generate --model M.gguf (--prompt TEXT | --chat TEXT [--system TEXT] |
 *                   --messages FILE.json) [sampling options] [--max-tokens N] ...
 *
 * It runs the same path as the server (chat template -> tokenizer -> scheduler ->
 * local executor -> shard forward pass -> sampler -> streaming detokenizer), with one
 * request. Text goes to stdout as it is produced; a summary with timings goes to stderr.
 */
#include "api/cli/cli.h"
#include "common/clock.h"
#include "common/check.h"
#include "common/log.h"
#include "common/mem.h"
#include "coordinator/scheduler.h"
#include "coordinator/template.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "model/gguf.h"
#include "transport/exec_local.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct gen_opts {
    const char *model, *prompt, *prompt_file, *chat, *system, *messages_file, *kwargs_json,
        *ids_out, *device, *kv_type;
    int max_tokens, threads, ctx_size, batch;
    bool parse_special, ignore_eos, show_prompt, quiet;
    crd_sampling_params_t sampling;
} gen_opts_t;

typedef struct gen_state {
    const tok_vocab_t *vocab;
    tok_decode_stream_t dec;
    int32_t *ids;
    int32_t n_ids, cap;
    crd_finish_t finish;
    double t_first, t_end;
    bool quiet;
    const char *error;
    char error_buf[256];
} gen_state_t;

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: tandem generate --model M.gguf (--prompt TEXT | --chat TEXT | --messages F)\n"
        "\n"
        "input:\n"
        "  --prompt TEXT          raw text, tokenized as is (BOS if the model wants one)\n"
        "  --prompt-file FILE     raw text from a file\n"
        "  --chat TEXT            one user message, formatted with the model's chat template\n"
        "  --system TEXT          a system message before --chat\n"
        "  --messages FILE        a JSON array of {role, content} messages (- for stdin)\n"
        "  --template-kwargs JSON extra template variables, e.g. '{\"enable_thinking\":false}'\n"
        "  --special              parse special-token text in --prompt\n"
        "sampling:\n"
        "  --max-tokens N         tokens to generate (default 256)\n"
        "  --greedy               always the most likely token (same as --temperature 0)\n"
        "  --temperature T        default 0.8\n"
        "  --top-k K  --top-p P  --min-p P\n"
        "  --repetition-penalty R  --presence-penalty P  --frequency-penalty F\n"
        "  --seed S               repeatable sampling\n"
        "  --ignore-eos           do not stop at end-of-generation tokens\n"
        "runtime:\n"
        "  --device D             auto (a usable GPU, else the CPU; default), cpu, cuda[:N]\n"
        "  --kv-type T            KV cache rows: f32, f16, q8_0 (default: f16 on a GPU, f32\n"
        "                         on the CPU)\n"
        "  --threads N            kernel threads (default: all CPUs)\n"
        "  --ctx-size N           context length (default: the model's, at most 8192)\n"
        "  --batch N              most tokens per step (default 512)\n"
        "  --show-prompt          print the formatted prompt to stderr\n"
        "  --ids-out FILE         write prompt and generated token ids as JSON\n"
        "  --quiet                no text on stdout (use with --ids-out)\n");
}

static int parse_opts(int argc, char **argv, gen_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->max_tokens = 256;
    o->batch = 512;
    crd_sampling_params_default(&o->sampling);
    o->sampling.temperature = 0.8f;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && v != NULL && (i++, 1))
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        } else if (ARG("--model") || ARG("-m")) {
            o->model = v;
        } else if (ARG("--prompt") || ARG("-p")) {
            o->prompt = v;
        } else if (ARG("--prompt-file")) {
            o->prompt_file = v;
        } else if (ARG("--chat")) {
            o->chat = v;
        } else if (ARG("--system")) {
            o->system = v;
        } else if (ARG("--messages")) {
            o->messages_file = v;
        } else if (ARG("--template-kwargs")) {
            o->kwargs_json = v;
        } else if (ARG("--ids-out")) {
            o->ids_out = v;
        } else if (ARG("--max-tokens") || ARG("-n")) {
            o->max_tokens = atoi(v);
        } else if (ARG("--threads") || ARG("-t")) {
            o->threads = atoi(v);
        } else if (ARG("--device")) {
            o->device = v;
        } else if (ARG("--kv-type")) {
            o->kv_type = v;
        } else if (ARG("--ctx-size") || ARG("-c")) {
            o->ctx_size = atoi(v);
        } else if (ARG("--batch")) {
            o->batch = atoi(v);
        } else if (ARG("--temperature") || ARG("--temp")) {
            o->sampling.temperature = strtof(v, NULL);
        } else if (ARG("--top-k")) {
            o->sampling.top_k = atoi(v);
        } else if (ARG("--top-p")) {
            o->sampling.top_p = strtof(v, NULL);
        } else if (ARG("--min-p")) {
            o->sampling.min_p = strtof(v, NULL);
        } else if (ARG("--repetition-penalty")) {
            o->sampling.repetition_penalty = strtof(v, NULL);
        } else if (ARG("--presence-penalty")) {
            o->sampling.presence_penalty = strtof(v, NULL);
        } else if (ARG("--frequency-penalty")) {
            o->sampling.frequency_penalty = strtof(v, NULL);
        } else if (ARG("--seed")) {
            o->sampling.seed = strtoull(v, NULL, 10);
            o->sampling.has_seed = true;
        } else if (strcmp(a, "--greedy") == 0) {
            o->sampling.temperature = 0.0f;
        } else if (strcmp(a, "--special") == 0) {
            o->parse_special = true;
        } else if (strcmp(a, "--ignore-eos") == 0) {
            o->ignore_eos = true;
        } else if (strcmp(a, "--show-prompt") == 0) {
            o->show_prompt = true;
        } else if (strcmp(a, "--quiet") == 0) {
            o->quiet = true;
        } else {
            fprintf(stderr, "tandem generate: unknown or incomplete option '%s'\n", a);
            return 2;
        }
#undef ARG
    }
    int inputs = (o->prompt != NULL) + (o->prompt_file != NULL) + (o->chat != NULL) +
                 (o->messages_file != NULL);
    if (o->model == NULL || inputs != 1) {
        fprintf(stderr, "tandem generate: need --model and exactly one of --prompt, --prompt-file, "
                        "--chat, --messages (see --help)\n");
        return 2;
    }
    if (o->system != NULL && o->chat == NULL) {
        fprintf(stderr, "tandem generate: --system goes with --chat\n");
        return 2;
    }
    if (o->max_tokens <= 0 || o->batch <= 0 || o->ctx_size < 0 || o->threads < 0) {
        fprintf(stderr, "tandem generate: --max-tokens, --batch, --ctx-size and --threads "
                        "must be positive\n");
        return 2;
    }
    tdm_error_t err = {0};
    if (crd_sampling_params_validate(&o->sampling, &err) != TDM_OK) {
        fprintf(stderr, "tandem generate: %s\n", tdm_error_msg(&err));
        return 2;
    }
    return 0;
}

/* Renders the model's chat template for the messages (template.h does what transformers'
 * apply_chat_template does around it: bos/eos tokens, defaults, reasoning aliases). */
static tdm_status_t render_chat(const gguf_ctx_t *g, json_t *messages, const char *kwargs_json,
                                char **out, size_t *out_len, tdm_error_t *err)
{
    tpl_template_t *tpl = NULL;
    tdm_status_t st = tpl_from_gguf(g, NULL, &tpl, err);
    if (st != TDM_OK) {
        return st;
    }
    json_t *ctx = json_object();
    json_object_set(ctx, "messages", messages);
    json_object_set_new(ctx, "add_generation_prompt", json_true());
    if (kwargs_json != NULL) {
        json_error_t jerr;
        json_t *kw = json_loads(kwargs_json, 0, &jerr);
        if (kw == NULL || !json_is_object(kw)) {
            json_decref(kw);
            json_decref(ctx);
            tpl_destroy(tpl);
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "--template-kwargs is not a JSON object: %s", jerr.text);
        }
        json_object_update(ctx, kw);
        json_decref(kw);
    }
    st = tpl_render(tpl, ctx, out, err);
    if (st == TDM_OK) {
        *out_len = strlen(*out);
    }
    json_decref(ctx);
    tpl_destroy(tpl);
    return st;
}

/* Reads a whole file (at most 64 MiB) into a malloc'ed NUL-terminated buffer. */
static tdm_status_t read_file(const char *path, char **out, size_t *len, tdm_error_t *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return tdm_error_set(err, TDM_ERR_IO, "%s: %s", path, strerror(errno));
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    size_t got;
    while (buf != NULL && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            if (cap >= (size_t)64 << 20) {
                fclose(f);
                free(buf);
                return tdm_error_set(err, TDM_ERR_OUT_OF_RANGE, "%s: larger than 64 MiB", path);
            }
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (nb == NULL) {
                free(buf);
            }
            buf = nb;
        }
    }
    fclose(f);
    if (buf == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "%s: out of memory", path);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return TDM_OK;
}

static json_t *load_messages(const gen_opts_t *o, tdm_error_t *err)
{
    if (o->chat != NULL) {
        json_t *msgs = json_array();
        if (o->system != NULL) {
            json_array_append_new(msgs,
                                  json_pack("{s:s, s:s}", "role", "system", "content", o->system));
        }
        json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "user", "content", o->chat));
        return msgs;
    }
    json_error_t jerr;
    json_t *msgs = strcmp(o->messages_file, "-") == 0 ? json_loadf(stdin, 0, &jerr)
                                                      : json_load_file(o->messages_file, 0, &jerr);
    if (msgs == NULL || !json_is_array(msgs)) {
        json_decref(msgs);
        tdm_error_set(err, TDM_ERR_INVALID_PARAM, "%s: not a JSON array of messages: %s (line %d)",
                      o->messages_file, jerr.text, jerr.line);
        return NULL;
    }
    return msgs;
}

static int on_event(void *user, const crd_event_t *ev)
{
    gen_state_t *g = user;
    if (ev->token >= 0) {
        if (g->n_ids == 0) {
            g->t_first = tdm_now_s();
        }
        if (g->n_ids == g->cap) {
            g->cap = g->cap ? g->cap * 2 : 256;
            g->ids = realloc(g->ids, (size_t)g->cap * sizeof(int32_t));
            if (g->ids == NULL) {
                fprintf(stderr, "tandem generate: out of memory\n");
                abort();
            }
        }
        g->ids[g->n_ids++] = ev->token;
        if (!ev->is_stop_token && !g->quiet) {
            const char *text;
            size_t len;
            if (tok_decode_stream_feed(&g->dec, ev->token, &text, &len, NULL) == TDM_OK &&
                len > 0) {
                fwrite(text, 1, len, stdout);
                fflush(stdout);
            }
        }
    }
    if (ev->finish != CRD_FINISH_NONE) {
        g->finish = ev->finish;
        g->t_end = tdm_now_s();
        if (ev->error != NULL) {
            snprintf(g->error_buf, sizeof(g->error_buf), "%s", ev->error);
            g->error = g->error_buf;
        }
    }
    return 0;
}

static void write_ids(const char *path, const tok_ids_t *prompt, const gen_state_t *g,
                      const char *finish)
{
    json_t *o = json_object(), *p = json_array(), *q = json_array();
    for (size_t i = 0; i < prompt->n; i++) {
        json_array_append_new(p, json_integer(prompt->ids[i]));
    }
    for (int32_t i = 0; i < g->n_ids; i++) {
        json_array_append_new(q, json_integer(g->ids[i]));
    }
    json_object_set_new(o, "prompt_ids", p);
    json_object_set_new(o, "ids", q);
    json_object_set_new(o, "finish_reason", json_string(finish));
    if (json_dump_file(o, path, JSON_COMPACT) != 0) {
        fprintf(stderr, "tandem generate: cannot write %s: %s\n", path, strerror(errno));
    }
    json_decref(o);
}

int cmd_generate(int argc, char **argv)
{
    gen_opts_t o;
    int rc = parse_opts(argc, argv, &o);
    if (rc != 0) {
        return rc == 1 ? 0 : rc;
    }
    tdm_error_t err = {0};
    gguf_ctx_t *g = NULL;
    tok_vocab_t *vocab = NULL;
    tok_workspace_t *ws = NULL;
    xp_local_exec_t *lx = NULL;
    crd_sched_t *sched = NULL;
    char *text = NULL;
    size_t text_len = 0;
    tok_ids_t prompt = {0};
    gen_state_t gs = {0};
    json_t *messages = NULL;
    tdm_status_t st;
    rc = 1;

    TDM_CHECK_GOTO(gguf_open(o.model, &g, &err), st, out);
    TDM_CHECK_GOTO(tok_vocab_from_gguf(g, &vocab, &err), st, out);
    TDM_CHECK_GOTO(tok_workspace_create(vocab, &ws, &err), st, out);

    if (o.prompt_file != NULL) {
        TDM_CHECK_GOTO(read_file(o.prompt_file, &text, &text_len, &err), st, out);
    } else if (o.prompt != NULL) {
        text = tdm_xstrdup(o.prompt);
        text_len = strlen(text);
    }
    if (text != NULL) {
        unsigned flags = TOK_ENC_ADD_SPECIAL | (o.parse_special ? TOK_ENC_PARSE_SPECIAL : 0);
        TDM_CHECK_GOTO(tok_encode(vocab, ws, text, text_len, flags, &prompt, &err), st, out);
    } else {
        messages = load_messages(&o, &err);
        if (messages == NULL) {
            goto out;
        }
        TDM_CHECK_GOTO(render_chat(g, messages, o.kwargs_json, &text, &text_len, &err), st, out);
        if (o.show_prompt) {
            fprintf(stderr, "---- prompt ----\n%s\n----------------\n", text);
        }
        /* the template writes any BOS itself: parse special tokens, add none */
        TDM_CHECK_GOTO(tok_encode(vocab, ws, text, text_len, TOK_ENC_PARSE_SPECIAL, &prompt, &err),
                       st, out);
    }

    xp_local_params_t lp = {.n_threads = o.threads,
                            .n_batch_max = o.batch,
                            .n_logits_max = 1,
                            .n_ctx = o.ctx_size,
                            .device = o.device,
                            .kv_type = o.kv_type};
    if (lp.n_ctx == 0) {
        lp.n_ctx = (int)prompt.n + o.max_tokens + 1;
        if (lp.n_ctx < 8192) {
            lp.n_ctx = lp.n_ctx < 512 ? 512 : lp.n_ctx;
        }
    }
    xp_executor_t ex;
    TDM_CHECK_GOTO(xp_local_exec_create(g, &lp, &lx, &ex, &err), st, out);
    crd_sched_params_t sp = {.token_budget = o.batch,
                             .max_running = 1,
                             .max_waiting = 1,
                             .n_ctx = ex.n_ctx_max,
                             .cache_seed = 0};
    TDM_CHECK_GOTO(crd_sched_create(&ex, &sp, &sched, &err), st, out);

    tok_decode_stream_init(&gs.dec, vocab, 0);
    gs.vocab = vocab;
    gs.quiet = o.quiet;
    size_t n_eog = 0;
    const tok_id_t *eog = tok_eog_ids(vocab, &n_eog);
    crd_request_params_t rp = {.prompt = prompt.ids,
                               .n_prompt = (int32_t)prompt.n,
                               .max_tokens = o.max_tokens,
                               .sampling = o.sampling,
                               .stop_ids = o.ignore_eos ? NULL : eog,
                               .n_stop_ids = o.ignore_eos ? 0 : (int32_t)n_eog,
                               .on_event = on_event,
                               .user = &gs};
    uint64_t id;
    double t0 = tdm_now_s();
    TDM_CHECK_GOTO(crd_sched_submit(sched, &rp, &id, &err), st, out);
    while (crd_sched_has_work(sched)) {
        TDM_CHECK_GOTO(crd_sched_step(sched, &err), st, out);
    }
    if (!o.quiet) {
        const char *tail;
        size_t len;
        if (tok_decode_stream_flush(&gs.dec, &tail, &len, NULL) == TDM_OK && len > 0) {
            fwrite(tail, 1, len, stdout);
        }
        fputc('\n', stdout);
        fflush(stdout);
    }
    if (gs.finish == CRD_FINISH_ERROR) {
        tdm_error_set(&err, TDM_ERR_INTERNAL, "%s", gs.error ? gs.error : "generation failed");
        goto out;
    }
    if (o.ids_out != NULL) {
        write_ids(o.ids_out, &prompt, &gs, crd_finish_name(gs.finish));
    }
    double prefill = gs.t_first - t0, decode = gs.t_end - gs.t_first;
    fprintf(stderr,
            "tandem generate: %zu prompt tokens in %.3f s (%.1f tok/s), %d generated in %.3f s "
            "(%.1f tok/s), finish: %s\n",
            prompt.n, prefill, prefill > 0 ? (double)prompt.n / prefill : 0.0, (int)gs.n_ids,
            decode, decode > 0 && gs.n_ids > 1 ? (double)(gs.n_ids - 1) / decode : 0.0,
            crd_finish_name(gs.finish));
    rc = 0;
out:
    if (rc != 0) {
        fprintf(stderr, "tandem generate: %s\n", tdm_error_msg(&err));
    }
    crd_sched_destroy(sched);
    xp_local_exec_destroy(lx);
    tok_decode_stream_free(&gs.dec);
    free(gs.ids);
    tok_ids_free(&prompt);
    free(text);
    json_decref(messages);
    tok_workspace_destroy(ws);
    tok_vocab_destroy(vocab);
    gguf_close(g);
    return rc;
}
