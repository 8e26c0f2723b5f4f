/*
 * reasoning.h - streaming separation of a model's reasoning ("<think>...</think>") from
 * its answer, for the OpenAI "reasoning_content" field.
 *
 * Text is fed as the model produces it, in chunks that may split a tag (or a UTF-8
 * character) anywhere. Everything fed ends up, in order, in one of two output buffers:
 * "reasoning" or "content". The only bytes dropped are the tags themselves, whitespace in
 * front of an opening tag, and whitespace right after the closing tag. For any split of
 * an output into chunks, the concatenated buffers equal those of feeding it at once: the
 * parser holds back only what may still turn out to be the start of a tag (plus, before
 * the first visible character, the leading whitespace).
 *
 * Rules (the DeepSeek-R1 reading, where reasoning can only open the output):
 *   - An opening tag is recognised only at the start of the output, after at most
 *     PRS_REASONING_MAX_LEADING_WS whitespace bytes (dropped). Text before it that is not
 *     whitespace, or more whitespace than that, makes the whole output content, and later
 *     tags in it are plain text.
 *   - start_inside = true (the prompt already ended with the opening tag, as templates
 *     that put "<think>\n" into the generation prompt do) starts in reasoning.
 *   - Inside reasoning the first closing tag ends it. Whitespace right after the closing
 *     tag (the usual "\n\n") is dropped; everything after that is content, tags included.
 *   - The text of the reasoning is kept exactly: the newline that usually follows
 *     "<think>" is not stripped (clients show reasoning as is; stripping belongs to them).
 *   - At finish, held-back text goes to the channel it was in: a partial tag at the end is
 *     plain text, and reasoning left open stays reasoning (as vLLM does).
 *
 * If chunks are whole UTF-8 characters the outputs are too: the parser cuts text only at
 * tag boundaries, never inside a character of the text. Not thread-safe; one per sequence.
 */
#ifndef PRS_REASONING_H
#define PRS_REASONING_H

#include "api/parse/prs_buf.h"
#include "common/status.h"

#include <stdbool.h>
#include <stddef.h>

#define PRS_REASONING_MAX_TAG           64  /* longest opening or closing tag          */
#define PRS_REASONING_MAX_LEADING_WS    256 /* whitespace allowed before opening tag   */
#define PRS_REASONING_DEFAULT_OPEN_TAG  "<think>"
#define PRS_REASONING_DEFAULT_CLOSE_TAG "</think>"

typedef struct prs_reasoning prs_reasoning_t;

/* Tags NULL mean the defaults. A tag must be 1..PRS_REASONING_MAX_TAG bytes and must not
 * start with whitespace (TDM_ERR_INVALID_PARAM otherwise). */
tdm_status_t prs_reasoning_create(const char *open_tag, const char *close_tag, bool start_inside,
                                  prs_reasoning_t **out, tdm_error_t *err);
void prs_reasoning_destroy(prs_reasoning_t *p);

/* Parses text[0..len) and appends what is decided to the output buffers. Fails only with
 * TDM_ERR_NO_MEMORY (the parser must then be destroyed) or TDM_ERR_INVALID_PARAM after
 * prs_reasoning_finish. */
tdm_status_t prs_reasoning_feed(prs_reasoning_t *p, const char *text, size_t len, tdm_error_t *err);

/* End of output: flushes held-back text to its channel. Later feeds are refused. */
tdm_status_t prs_reasoning_finish(prs_reasoning_t *p, tdm_error_t *err);

/* The output buffers. They belong to the parser; the caller reads them and empties them
 * with prs_buf_clear whenever it likes (e.g. after forwarding each chunk). */
prs_buf_t *prs_reasoning_content(prs_reasoning_t *p);
prs_buf_t *prs_reasoning_reasoning(prs_reasoning_t *p);

/* True while the parser is inside reasoning (after an opening tag, before the closing one). */
bool prs_reasoning_inside(const prs_reasoning_t *p);

#endif
