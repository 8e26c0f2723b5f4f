/*
 * template.h - chat templates: a model's Jinja chat template compiled once at load and
 * rendered per request into the prompt text, as Hugging Face transformers'
 * apply_chat_template renders it.
 *
 * The render context is a JSON object: `messages` (OpenAI-style list of
 * {role, content, reasoning_content?, tool_calls?, tool_call_id?, name?}), `tools`,
 * `add_generation_prompt`, and any extra keyword arguments the template reads
 * (`enable_thinking`, `reasoning_effort`, `builtin_tools`, `model_identity`, ...).
 * Before rendering, tpl_render does what transformers does around the template:
 *   - `tools` and `documents` default to null and `add_generation_prompt` to false;
 *   - `bos_token` / `eos_token` default to the model's special tokens (when known);
 *   - a message carrying reasoning under `reasoning_content`, `thinking` or `reasoning`
 *     gets it under both `thinking` and `reasoning_content` (transformers 5 aliasing;
 *     gpt-oss templates read `thinking`).
 * Keys given in the context always win over those defaults.
 *
 * Errors: a template's raise_exception("...") and run-time errors caused by the request
 * (e.g. a role the template rejects) are TDM_ERR_INVALID_PARAM with the message, so the
 * API can answer 400. Exceeded resource limits are TDM_ERR_OUT_OF_RANGE.
 */
#ifndef TDM_TEMPLATE_H
#define TDM_TEMPLATE_H

#include "common/status.h"
#include "coordinator/jinja/jinja.h"
#include "model/gguf.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tpl_template tpl_template_t;

/* Compiles NUL-terminated template source. Syntax errors: TDM_ERR_FORMAT, message
 * "template line L, column C: ..." followed by the source line and a caret. */
tdm_status_t tpl_compile(const char *source, tpl_template_t **out, tdm_error_t *err);
/* Same, with an explicit length (the source need not be NUL-terminated). */
tdm_status_t tpl_compile_n(const char *source, size_t len, tpl_template_t **out, tdm_error_t *err);

/*
 * Loads a model's chat template from GGUF metadata: `tokenizer.chat_template` (or
 * `tokenizer.chat_template.<name>` when name is not NULL) plus the texts of the BOS and
 * EOS tokens (tokenizer.ggml.bos_token_id / eos_token_id looked up in
 * tokenizer.ggml.tokens). TDM_ERR_NOT_FOUND if the model has no such template.
 */
tdm_status_t tpl_from_gguf(const gguf_ctx_t *gguf, const char *name, tpl_template_t **out,
                           tdm_error_t *err);

void tpl_destroy(tpl_template_t *tpl); /* NULL is fine */

/* Sets (or with NULL clears) the default bos_token / eos_token texts. */
tdm_status_t tpl_set_special_tokens(tpl_template_t *tpl, const char *bos, const char *eos,
                                    tdm_error_t *err);
const char *tpl_bos_token(const tpl_template_t *tpl); /* NULL when unknown */
const char *tpl_eos_token(const tpl_template_t *tpl);
const char *tpl_source(const tpl_template_t *tpl); /* the template text */

typedef struct tpl_render_opts {
    jinja_limits_t limits;
    bool has_time; /* fixed clock for strftime_now (tests); else the current time */
    int64_t time_sec;
    int32_t time_usec;
    bool no_reasoning_alias; /* skip the reasoning_content/thinking aliasing */
} tpl_render_opts_t;

/* Default options: jinja_default_limits(), current time, aliasing on. */
tpl_render_opts_t tpl_default_opts(void);

/* Renders with default options. *out is malloc'd and NUL-terminated; free() it. */
tdm_status_t tpl_render(const tpl_template_t *tpl, const json_t *ctx, char **out, tdm_error_t *err);
tdm_status_t tpl_render_ex(const tpl_template_t *tpl, const json_t *ctx,
                           const tpl_render_opts_t *opts, char **out, size_t *out_len,
                           tdm_error_t *err);

#endif
