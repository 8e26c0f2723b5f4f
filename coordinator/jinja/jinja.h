/*
 * jinja.h - a Jinja2 engine for the subset of the language that chat templates use.
 *
 * Semantics follow Python jinja2 3.1 as Hugging Face transformers configures it for
 * apply_chat_template: an ImmutableSandboxedEnvironment with trim_blocks and
 * lstrip_blocks on, the loopcontrols extension, `tojson` replaced by json.dumps
 * (ensure_ascii=False by default) and the globals raise_exception, strftime_now,
 * namespace and dict. Output is meant to be byte-identical to that configuration; the
 * README in this folder lists what is not supported.
 *
 * A compiled template is immutable and may be rendered by several threads at once.
 * Rendering never crashes or hangs on hostile input: output size, memory, loop
 * iterations and nesting depth are bounded (jinja_limits_t) and exceeding a bound is a
 * clean error.
 */
#ifndef TDM_JINJA_H
#define TDM_JINJA_H

#include "common/status.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct jinja_tpl jinja_tpl_t;

typedef struct jinja_limits {
    size_t max_output;       /* bytes of rendered text (and of any one string)         */
    size_t max_memory;       /* bytes the render may allocate in all                   */
    uint64_t max_iterations; /* for-loop iterations in all, summed over the render      */
    uint32_t max_depth;      /* nesting of macro calls and expression evaluation        */
} jinja_limits_t;

/* Generous defaults for real templates: 64 MiB output, 1 GiB memory, 10M iterations,
 * depth 400. */
jinja_limits_t jinja_default_limits(void);

typedef struct jinja_render_opts {
    jinja_limits_t limits;
    /* The clock strftime_now() reads; when has_time is false the current time is used.
     * Times are formatted in the process's local time zone (as Python does). */
    bool has_time;
    int64_t time_sec;
    int32_t time_usec;
} jinja_render_opts_t;

/*
 * Compiles template source (UTF-8, need not be NUL-terminated). A syntax error returns
 * TDM_ERR_FORMAT with "line L, column C: message" and the offending line with a caret;
 * a filter or test this engine does not provide returns TDM_ERR_UNSUPPORTED.
 */
tdm_status_t jinja_compile(const char *src, size_t len, jinja_tpl_t **out, tdm_error_t *err);
void jinja_free(jinja_tpl_t *tpl); /* NULL is fine */

/*
 * Renders with the keys of `vars` (a JSON object) as template variables. On success
 * *out is a malloc'd NUL-terminated string of *out_len bytes (free() it). Errors:
 * raise_exception(msg) and run-time errors (undefined values misused, type errors)
 * return TDM_ERR_INVALID_PARAM with the message; exceeded limits TDM_ERR_OUT_OF_RANGE.
 */
tdm_status_t jinja_render(const jinja_tpl_t *tpl, const json_t *vars,
                          const jinja_render_opts_t *opts, char **out, size_t *out_len,
                          tdm_error_t *err);

#endif
