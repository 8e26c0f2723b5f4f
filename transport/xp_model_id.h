/*
 * xp_model_id.h - the identity of a model file that JOIN carries, so a shard holding a
 * different model (or another quantization of it) is refused before anything is loaded.
 *
 * Hashing a 100+ GB file on every start would take minutes, so the identity is an XXH3
 * hash of what distinguishes models in practice: every file's header (metadata and tensor
 * table, i.e. names, shapes, types and offsets) and the first and last 64 bytes of every
 * tensor's data (a re-quantized or fine-tuned file with an identical header still differs
 * there), plus the total size and tensor count. Split files count as one model.
 */
#ifndef XP_MODEL_ID_H
#define XP_MODEL_ID_H

#include "model/gguf.h"
#include "transport/xp_msg.h"

tdm_status_t xp_model_id(const gguf_ctx_t *g, xp_msg_model_id_t *out, tdm_error_t *err);

/* Lowercase hex of the first 8 bytes of the hash (for messages). out holds >= 17 bytes. */
void xp_model_id_short(const xp_msg_model_id_t *id, char *out);

#endif
