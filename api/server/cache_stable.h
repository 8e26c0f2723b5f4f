/*
 * cache_stable.h - `--cache-stable-prompts`: rewrite what agent clients inject into every
 * request so that the rendered prompt of one turn stays a prefix of the next turn's.
 *
 * The prefix cache hits only on identical leading tokens. Three habits of agent clients
 * break that without changing what the model is told:
 *
 *  1. Claude Code starts its system prompt with a billing line whose nonce changes on every
 *     request ("x-anthropic-billing-header: cc_version=...; cc_entrypoint=cli; cch=1a2b3;").
 *     It means nothing to the model: the line is dropped from system and developer messages.
 *  2. OpenCode adds <system-reminder> blocks to the last user message of each request only,
 *     so a reminder moves from the previous user message to the new one, and every token
 *     after the previous user message (its whole tool loop) is computed again. When the
 *     last user message is the only message holding reminders and it is not the first user
 *     message, its reminders are moved to the end of the conversation (appended to the last
 *     user or tool message), where they stay the tail of every request. Reminders that a
 *     client keeps in place in its history (Claude Code's context reminder in the first
 *     user message) are left where they are: moving them would break the prefix instead.
 *  3. Tool schemas are rendered by the template as JSON in the order the client sent the
 *     keys; a client (or gateway) that reorders them changes the prompt. Every object inside
 *     the tools is rendered with its keys sorted.
 *
 * Off by default: the rendered prompt differs from what the client sent (the same words, in
 * another place or order), and a test of byte-identical templating must not see it.
 */
#ifndef TDM_SRV_CACHE_STABLE_H
#define TDM_SRV_CACHE_STABLE_H

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A rewritten deep copy of the chat messages (parsed: every content a string), or NULL when
 * out of memory. */
json_t *srv_cache_stable_messages(const json_t *messages);

/* A deep copy of the tools array with every object's keys in sorted order (NULL in, NULL
 * out; NULL when out of memory). */
json_t *srv_cache_stable_tools(const json_t *tools);

#ifdef __cplusplus
}
#endif

#endif
