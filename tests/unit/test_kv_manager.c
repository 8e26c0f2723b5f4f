/* test_kv_manager.c - KV block accounting, prefix sharing, LRU eviction and exhaustion;
 * the sliding-window pool (reserve, release, hits cut by evicted windows, both pools'
 * eviction), and a randomized run against an independent model of the rules. */
#include "coordinator/kv_manager.h"

#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define BS 16

static crd_kvm_t *make(int32_t n_blocks)
{
    crd_kvm_t *kvm = NULL;
    assert_int_equal(crd_kvm_create(n_blocks, BS, 42, &kvm, NULL), TDM_OK);
    return kvm;
}

static void fill(int32_t *t, int32_t n, int32_t base)
{
    for (int32_t i = 0; i < n; i++) {
        t[i] = base + i * 7 % 1000;
    }
}

/* Runs a prompt through: create, reserve, commit. */
static crd_kv_seq_t *run_prompt(crd_kvm_t *kvm, const int32_t *t, int32_t n, int32_t *cached)
{
    crd_kv_seq_t *s = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, n, &s, cached, NULL), TDM_OK);
    assert_int_equal(crd_kvm_seq_reserve(kvm, s, n), TDM_OK);
    crd_kvm_seq_commit(kvm, s, t, n);
    return s;
}

static void check_accounting(crd_kvm_t *kvm)
{
    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.n_free + st.n_cached_idle + st.n_used, st.n_blocks);
    assert_int_equal(crd_kvm_available(kvm), st.n_free + st.n_cached_idle);
    assert_int_equal(st.swa_free + st.swa_cached_idle + st.swa_used, st.swa_blocks);
    assert_int_equal(crd_kvm_swa_available(kvm), st.swa_free + st.swa_cached_idle);
    assert_true(st.n_used <= st.n_used_peak && st.swa_used <= st.swa_used_peak);
}

/* A manager with a sliding pool: blocks of bs tokens, window w. */
static crd_kvm_t *make_swa(int32_t n_blocks, int32_t bs, int32_t w, int32_t n_swa_blocks)
{
    crd_kvm_t *kvm = NULL;
    const crd_kvm_params_t p = {.n_blocks = n_blocks,
                                .block_size = bs,
                                .seed = 42,
                                .n_swa = w,
                                .n_swa_blocks = n_swa_blocks};
    assert_int_equal(crd_kvm_create_pools(&p, &kvm, NULL), TDM_OK);
    return kvm;
}

/* Which of seq's sliding table entries are blocks (1) or released (0), as a string. */
static void swa_pattern(const crd_kv_seq_t *seq, char *out)
{
    int32_t n;
    crd_kvm_seq_blocks(seq, &n);
    const int32_t *sw = crd_kvm_seq_swa_blocks(seq);
    for (int32_t j = 0; j < n; j++) {
        out[j] = sw[j] >= 0 ? '1' : '0';
    }
    out[n] = '\0';
}

static void test_shared_prefix_reuses_blocks(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make(16);
    int32_t t[40], cached;
    fill(t, 40, 1);
    crd_kv_seq_t *a = run_prompt(kvm, t, 40, &cached);
    assert_int_equal(cached, 0);
    int32_t na, nb;
    const int32_t *ba = crd_kvm_seq_blocks(a, &na);
    assert_int_equal(na, 3);

    crd_kv_seq_t *b = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 40, &b, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 32); /* two full blocks; the third is partial */
    const int32_t *bb = crd_kvm_seq_blocks(b, &nb);
    assert_int_equal(nb, 2);
    assert_int_equal(bb[0], ba[0]);
    assert_int_equal(bb[1], ba[1]);
    assert_int_equal(crd_kvm_seq_blocks_needed(kvm, b, 41), 1);
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 41), TDM_OK);
    bb = crd_kvm_seq_blocks(b, &nb);
    assert_int_not_equal(bb[2], ba[2]); /* never writes into a shared block */

    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.n_used, 4);
    assert_int_equal(st.prefix_queries, 80);
    assert_int_equal(st.prefix_hits, 32);
    check_accounting(kvm);
    crd_kvm_seq_free(kvm, a);
    crd_kvm_seq_free(kvm, b);
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.n_used, 0);
    assert_int_equal(st.n_cached_idle, 2);
    check_accounting(kvm);
    crd_kvm_destroy(kvm);
}

static void test_last_prompt_token_is_always_computed(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make(8);
    int32_t t[32], cached;
    fill(t, 32, 5);
    crd_kv_seq_t *a = run_prompt(kvm, t, 32, &cached);
    crd_kv_seq_t *b = NULL;
    /* exactly two full blocks cached, but the 32nd token must be computed: one block reused */
    assert_int_equal(crd_kvm_seq_create(kvm, t, 32, &b, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 16);
    crd_kvm_seq_free(kvm, b);
    /* a 33-token prompt with the same start reuses both */
    int32_t u[33];
    memcpy(u, t, sizeof(t));
    u[32] = 9;
    assert_int_equal(crd_kvm_seq_create(kvm, u, 33, &b, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 32);
    crd_kvm_seq_free(kvm, b);
    crd_kvm_seq_free(kvm, a);
    crd_kvm_destroy(kvm);
}

static void test_prefix_must_match_from_the_start(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make(16);
    int32_t t[50], u[50], cached;
    fill(t, 50, 1);
    crd_kv_seq_t *a = run_prompt(kvm, t, 50, &cached);
    memcpy(u, t, sizeof(u));
    u[20] = -1; /* differs in block 1 */
    crd_kv_seq_t *b = run_prompt(kvm, u, 50, &cached);
    assert_int_equal(cached, 16);
    memcpy(u, t, sizeof(u));
    u[0] = -1; /* differs in block 0: blocks 1, 2 have equal tokens but a different prefix */
    crd_kv_seq_t *c = run_prompt(kvm, u, 50, &cached);
    assert_int_equal(cached, 0);
    crd_kvm_seq_free(kvm, a);
    crd_kvm_seq_free(kvm, b);
    crd_kvm_seq_free(kvm, c);
    check_accounting(kvm);
    crd_kvm_destroy(kvm);
}

static void test_exhaustion_and_lru_eviction(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make(4);
    int32_t t[64], u[64], cached;
    fill(t, 64, 1);
    fill(u, 64, 5000);
    crd_kv_seq_t *a = run_prompt(kvm, t, 64, &cached); /* all 4 blocks, all cached */
    crd_kv_seq_t *b = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, u, 64, &b, &cached, NULL), TDM_OK);
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 1), TDM_ERR_BUSY); /* nothing free */
    int32_t nb;
    crd_kvm_seq_blocks(b, &nb);
    assert_int_equal(nb, 0); /* unchanged on failure */

    crd_kvm_seq_free(kvm, a); /* 4 idle cached blocks */
    assert_int_equal(crd_kvm_available(kvm), 4);
    /* one new block evicts the deepest block of a's prefix first */
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 1), TDM_OK);
    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.evictions, 1);
    crd_kv_seq_t *c = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 64, &c, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 48); /* blocks 0..2 survive (max reuse is 3 anyway: 63/16) */
    crd_kvm_seq_free(kvm, c);
    /* take everything: all cached blocks are evicted */
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 64), TDM_OK);
    assert_int_equal(crd_kvm_seq_create(kvm, t, 64, &c, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 0);
    crd_kvm_seq_free(kvm, c);
    crd_kvm_seq_free(kvm, b);
    check_accounting(kvm);
    crd_kvm_destroy(kvm);
}

static void test_concurrent_duplicate_prefix(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make(8);
    int32_t t[33], ca, cb;
    fill(t, 33, 3);
    crd_kv_seq_t *a = NULL, *b = NULL;
    /* both start before either has computed anything */
    assert_int_equal(crd_kvm_seq_create(kvm, t, 33, &a, &ca, NULL), TDM_OK);
    assert_int_equal(crd_kvm_seq_create(kvm, t, 33, &b, &cb, NULL), TDM_OK);
    assert_int_equal(ca + cb, 0);
    assert_int_equal(crd_kvm_seq_reserve(kvm, a, 33), TDM_OK);
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 33), TDM_OK);
    crd_kvm_seq_commit(kvm, a, t, 33);
    crd_kvm_seq_commit(kvm, b, t, 33);
    crd_kvm_seq_free(kvm, a);
    crd_kvm_seq_free(kvm, b);
    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.n_cached_idle, 2); /* one canonical copy of the 2 full blocks */
    assert_int_equal(st.n_free, 6);
    crd_kvm_destroy(kvm);
}

static void test_random_operations_keep_accounting(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make(24);
    crd_kv_seq_t *seqs[6] = {0};
    int32_t toks[6][200], len[6] = {0};
    uint32_t r = 7;
    for (int step = 0; step < 3000; step++) {
        r = r * 1103515245u + 12345u;
        int i = (int)((r >> 16) % 6);
        int32_t cached;
        if (seqs[i] == NULL) {
            /* prompts share one of three stems so that prefixes really repeat */
            len[i] = 10 + (int32_t)((r >> 8) % 60);
            fill(toks[i], len[i], 100 * (int32_t)((r >> 4) % 3));
            assert_int_equal(crd_kvm_seq_create(kvm, toks[i], len[i], &seqs[i], &cached, NULL),
                             TDM_OK);
            assert_true(cached < len[i] && cached % BS == 0);
        } else if ((r >> 20) % 4 == 0 || len[i] >= 190) {
            crd_kvm_seq_free(kvm, seqs[i]);
            seqs[i] = NULL;
        } else {
            tdm_status_t st = crd_kvm_seq_reserve(kvm, seqs[i], len[i] + 1);
            if (st == TDM_OK) {
                toks[i][len[i]] = (int32_t)(r % 50);
                len[i]++;
                crd_kvm_seq_commit(kvm, seqs[i], toks[i], len[i]);
            } else {
                assert_int_equal(st, TDM_ERR_BUSY);
            }
        }
        check_accounting(kvm);
    }
    for (int i = 0; i < 6; i++) {
        crd_kvm_seq_free(kvm, seqs[i]);
    }
    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.n_used, 0);
    crd_kvm_destroy(kvm);
}

/* Reserve covers [max(0, c - w + 1), n) in the sliding pool, release drops blocks wholly
 * below n - w + 1: cached ones stay (idle), others are freed. */
static void test_swa_reserve_and_release(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make_swa(32, 4, 6, 32); /* blocks of 4, window 6 */
    assert_int_equal(crd_kvm_swa_window(kvm), 6);
    int32_t t[64], cached;
    fill(t, 64, 11);
    crd_kv_seq_t *a = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 40, &a, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 0);
    /* a chunk of 10: positions 0..9, blocks 0..2 in both pools */
    assert_int_equal(crd_kvm_seq_blocks_needed(kvm, a, 10), 3);
    assert_int_equal(crd_kvm_seq_swa_blocks_needed(kvm, a, 10), 3);
    assert_int_equal(crd_kvm_seq_reserve(kvm, a, 10), TDM_OK);
    char pat[64];
    swa_pattern(a, pat);
    assert_string_equal(pat, "111");
    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.swa_used, 3);
    /* computed 10: the next token (10) reads keys 5..10, block 0 (0..3) is out; it is
     * full and hashed, so it stays as an idle cached sliding block */
    crd_kvm_seq_commit(kvm, a, t, 10);
    swa_pattern(a, pat);
    assert_string_equal(pat, "011");
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.swa_used, 2);
    assert_int_equal(st.swa_cached_idle, 1);
    check_accounting(kvm);
    /* the next chunk, positions 10..22: window from 5 (block 1) to block 5 */
    assert_int_equal(crd_kvm_seq_blocks_needed(kvm, a, 23), 3);
    assert_int_equal(crd_kvm_seq_swa_blocks_needed(kvm, a, 23), 3);
    assert_int_equal(crd_kvm_seq_reserve(kvm, a, 23), TDM_OK);
    swa_pattern(a, pat);
    assert_string_equal(pat, "011111");
    crd_kvm_seq_commit(kvm, a, t, 23); /* next token 23 reads from 18: blocks 0..3 go */
    swa_pattern(a, pat);
    assert_string_equal(pat, "000011");
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.swa_used, 2);
    assert_int_equal(st.swa_cached_idle, 4); /* blocks 0..3 are full and hashed */
    assert_int_equal(st.swa_used_peak, 5);   /* blocks 1..5 */
    /* decode, one token at a time: at most ceil((w - 1 + 1) / bs) + 1 = 3 sliding blocks */
    for (int32_t n = 24; n <= 40; n++) {
        assert_int_equal(crd_kvm_seq_reserve(kvm, a, n), TDM_OK);
        crd_kvm_seq_commit(kvm, a, t, n);
        crd_kvm_get_stats(kvm, &st);
        assert_true(st.swa_used <= 3);
        check_accounting(kvm);
    }
    crd_kvm_seq_free(kvm, a);
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.swa_used, 0);
    assert_int_equal(st.swa_cached_idle, 10); /* one per full logical block of the 40 */
    assert_int_equal(st.n_cached_idle, 10);

    /* without the prefix cache (tokens NULL) a released sliding block is freed at once */
    crd_kv_seq_t *b = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, NULL, 0, &b, &cached, NULL), TDM_OK);
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 12), TDM_OK);
    crd_kvm_seq_commit(kvm, b, NULL, 12); /* next reads from 7: block 0 goes */
    swa_pattern(b, pat);
    assert_string_equal(pat, "011");
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.swa_used, 2);
    assert_int_equal(st.swa_cached_idle, 10);
    assert_int_equal(st.swa_free, 32 - 12);
    crd_kvm_seq_free(kvm, b);
    check_accounting(kvm);
    crd_kvm_destroy(kvm);
}

/* A hit of P tokens stands only while the sliding blocks of [P - w + 1, P) are there;
 * an evicted window cuts it to the longest boundary whose window survived, and the full
 * blocks stay cached meanwhile. LRU order: blocks released at commit, in order, then the
 * rest in reverse at the end of the sequence. */
static void test_swa_hit_cut_by_evicted_window(void **state)
{
    (void)state;
    /* blocks of 4, window 6: a hit at P needs the sliding blocks of P-5..P-1, i.e. the
     * two logical blocks before P */
    crd_kvm_t *kvm = make_swa(64, 4, 6, 8);
    int32_t t[40], cached;
    fill(t, 40, 3);
    crd_kv_seq_t *a = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 33, &a, &cached, NULL), TDM_OK);
    assert_int_equal(crd_kvm_seq_reserve(kvm, a, 32), TDM_OK);
    crd_kvm_seq_commit(kvm, a, t, 32); /* releases logical 0..5 in order: LRU 0 1 2 3 4 5 */
    crd_kvm_seq_free(kvm, a);          /* then 7, 6: LRU 0 1 2 3 4 5 7 6 */
    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.swa_cached_idle, 8);

    /* the whole 32 hit (max hit of a 33-token prompt), window blocks 6, 7 revived */
    crd_kv_seq_t *b = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 33, &b, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 32);
    char pat[64];
    swa_pattern(b, pat);
    assert_string_equal(pat, "00000011");
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.swa_used, 2);
    crd_kvm_seq_free(kvm, b); /* LRU 0 1 2 3 4 5 7 6 */

    /* a 17-token prompt of the same start: hit 16, window blocks 2, 3 revived and then
     * released last (LRU 0 1 4 5 7 6 3 2) */
    crd_kv_seq_t *c = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 17, &c, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 16);
    swa_pattern(c, pat);
    assert_string_equal(pat, "0011");
    crd_kvm_seq_free(kvm, c);

    /* an unrelated sequence takes 6 sliding blocks: the 6 least recently used go */
    int32_t u[40];
    fill(u, 40, 7000);
    crd_kv_seq_t *d = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, u, 30, &d, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 0);
    assert_int_equal(crd_kvm_seq_reserve(kvm, d, 24), TDM_OK);
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.swa_evictions, 6);
    assert_int_equal(st.swa_cached_idle, 2);
    assert_int_equal(st.evictions, 0);
    assert_int_equal(st.n_cached_idle, 8); /* the full blocks stay cached */

    /* the 33-token prompt again: boundaries 32 .. 20 lost a window block; 16 kept 2, 3 */
    const uint64_t cut_before = st.swa_hits_cut;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 33, &b, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 16);
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.swa_hits_cut - cut_before, 16);
    swa_pattern(b, pat);
    assert_string_equal(pat, "0011");
    /* it recomputes 16..31 (the window from 11: blocks 2..7); 6 sliding blocks are in
     * use by d, 2 by b: no room for 4 more until d goes */
    assert_int_equal(crd_kvm_seq_swa_blocks_needed(kvm, b, 32), 4);
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 32), TDM_ERR_BUSY);
    swa_pattern(b, pat);
    assert_string_equal(pat, "0011"); /* unchanged */
    crd_kvm_seq_free(kvm, d);
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 32), TDM_OK);
    swa_pattern(b, pat);
    assert_string_equal(pat, "00111111");
    crd_kvm_seq_commit(kvm, b, t, 32);
    swa_pattern(b, pat);
    assert_string_equal(pat, "00000011");
    d = NULL;
    crd_kvm_seq_free(kvm, b);
    crd_kvm_seq_free(kvm, d);
    check_accounting(kvm);
    crd_kvm_destroy(kvm);
}

/* Evicting a cached full block frees its idle sliding block (free blocks are taken before
 * any idle one is evicted, so no sliding eviction is counted); the prefix then hits up to
 * the evicted block only. */
static void test_swa_full_eviction_frees_window(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make_swa(6, 4, 6, 6);
    int32_t t[32], u[8], cached;
    fill(t, 32, 5);
    fill(u, 8, 900);
    crd_kv_seq_t *a = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 25, &a, &cached, NULL), TDM_OK);
    assert_int_equal(crd_kvm_seq_reserve(kvm, a, 24), TDM_OK);
    crd_kvm_seq_commit(kvm, a, t, 24);
    crd_kvm_seq_free(kvm, a); /* full LRU: 5 4 3 2 1 0 (deepest first) */
    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.n_cached_idle, 6);
    assert_int_equal(st.swa_cached_idle, 6);
    crd_kv_seq_t *b = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, u, 8, &b, &cached, NULL), TDM_OK);
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 4), TDM_OK);
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.evictions, 1);     /* logical block 5's full block ...       */
    assert_int_equal(st.swa_evictions, 0); /* ... took its sliding block with it, and
                                              b got that one, now free             */
    assert_int_equal(st.swa_cached_idle, 5);
    assert_int_equal(st.swa_used, 1);
    crd_kv_seq_t *c = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 25, &c, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 20); /* blocks 0..4; the window of 20 (blocks 3, 4) is there */
    crd_kvm_seq_free(kvm, c);
    crd_kvm_seq_free(kvm, b);
    /* forgetting the cache frees every idle block of both pools */
    crd_kvm_forget_cached(kvm);
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.n_free, 6);
    assert_int_equal(st.swa_free, 6);
    assert_int_equal(crd_kvm_seq_create(kvm, t, 25, &c, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 0);
    crd_kvm_seq_free(kvm, c);
    check_accounting(kvm);
    crd_kvm_destroy(kvm);
}

/* ---- an independent model of the two-pool rules (kv_manager.h), for the random run:
 * plain arrays, prefixes compared as token strings, LRU by timestamps ---- */

#define M_BLOCKS 48
#define M_SEQS   5
#define M_TOK    120

typedef struct m_full {
    int ref;
    bool cached;
    int32_t key[M_TOK]; /* the whole prefix up to the block's end */
    int key_len;
    long idle_since; /* -1: not idle (in use or free) */
    int swa;         /* the sliding block of this cached logical block, -1 */
} m_full_t;

typedef struct m_swa {
    int ref;
    int owner; /* the cached full block it belongs to, -1 */
    long idle_since;
} m_swa_t;

typedef struct m_seq {
    bool live;
    int32_t tok[M_TOK];
    int n_tok, n_prompt;
    int nb, blocks[M_TOK], swa[M_TOK];
    int committed, computed;
    crd_kv_seq_t *real;
} m_seq_t;

typedef struct model {
    int bs, w, n_full, n_swa;
    m_full_t full[M_BLOCKS];
    m_swa_t swa[M_BLOCKS];
    m_seq_t seq[M_SEQS];
    long clock;
    uint64_t evict_full, evict_swa;
} model_t;

static int m_wlo(const model_t *m, int p)
{
    return p >= m->w ? p - m->w + 1 : 0;
}

static int m_find(const model_t *m, const int32_t *key, int len)
{
    for (int b = 0; b < m->n_full; b++) {
        if (m->full[b].cached && m->full[b].key_len == len &&
            memcmp(m->full[b].key, key, (size_t)len * sizeof(int32_t)) == 0) {
            return b;
        }
    }
    return -1;
}

static int m_oldest_idle_full(const model_t *m)
{
    int best = -1;
    for (int b = 0; b < m->n_full; b++) {
        if (m->full[b].ref == 0 && m->full[b].idle_since >= 0 &&
            (best < 0 || m->full[b].idle_since < m->full[best].idle_since)) {
            best = b;
        }
    }
    return best;
}

static int m_oldest_idle_swa(const model_t *m)
{
    int best = -1;
    for (int s = 0; s < m->n_swa; s++) {
        if (m->swa[s].ref == 0 && m->swa[s].idle_since >= 0 &&
            (best < 0 || m->swa[s].idle_since < m->swa[best].idle_since)) {
            best = s;
        }
    }
    return best;
}

static int m_take_full(model_t *m)
{
    for (int b = 0; b < m->n_full; b++) {
        if (m->full[b].ref == 0 && m->full[b].idle_since < 0) {
            m->full[b].ref = 1;
            return b;
        }
    }
    const int b = m_oldest_idle_full(m);
    assert_true(b >= 0);
    m->evict_full++;
    m->full[b].cached = false;
    const int s = m->full[b].swa;
    if (s >= 0) { /* its sliding block goes with it (freed when idle) */
        m->swa[s].owner = -1;
        if (m->swa[s].ref == 0) {
            m->swa[s].idle_since = -1;
        }
        m->full[b].swa = -1;
    }
    m->full[b].idle_since = -1;
    m->full[b].ref = 1;
    return b;
}

static int m_take_swa(model_t *m)
{
    for (int s = 0; s < m->n_swa; s++) {
        if (m->swa[s].ref == 0 && m->swa[s].idle_since < 0) {
            m->swa[s].ref = 1;
            return s;
        }
    }
    const int s = m_oldest_idle_swa(m);
    assert_true(s >= 0);
    m->evict_swa++;
    m->full[m->swa[s].owner].swa = -1;
    m->swa[s].owner = -1;
    m->swa[s].idle_since = -1;
    m->swa[s].ref = 1;
    return s;
}

static void m_ref_full(model_t *m, int b)
{
    if (m->full[b].ref++ == 0) {
        m->full[b].idle_since = -1;
    }
}

static void m_ref_swa(model_t *m, int s)
{
    if (m->swa[s].ref++ == 0) {
        m->swa[s].idle_since = -1;
    }
}

static void m_unref_full(model_t *m, int b)
{
    if (--m->full[b].ref == 0) {
        m->full[b].idle_since = m->full[b].cached ? m->clock++ : -1;
    }
}

static void m_unref_swa(model_t *m, int s)
{
    if (--m->swa[s].ref == 0) {
        m->swa[s].idle_since = m->swa[s].owner >= 0 ? m->clock++ : -1;
    }
}

static int m_create(model_t *m, m_seq_t *q)
{
    const int bs = m->bs, max_hit = q->n_prompt > 0 ? (q->n_prompt - 1) / bs : 0;
    int chain = 0, blk[M_TOK];
    while (chain < max_hit && (blk[chain] = m_find(m, q->tok, (chain + 1) * bs)) >= 0) {
        chain++;
    }
    int k = chain;
    for (; k > 0; k--) { /* the window before k * bs must be whole */
        bool ok = true;
        for (int j = m_wlo(m, k * bs) / bs; j < k; j++) {
            ok &= m->full[blk[j]].swa >= 0;
        }
        if (ok) {
            break;
        }
    }
    q->nb = q->committed = k;
    q->computed = k * bs;
    for (int j = 0; j < k; j++) {
        q->blocks[j] = blk[j];
        m_ref_full(m, blk[j]);
        q->swa[j] = j < m_wlo(m, k * bs) / bs ? -1 : m->full[blk[j]].swa;
        if (q->swa[j] >= 0) {
            m_ref_swa(m, q->swa[j]);
        }
    }
    return k * bs;
}

static int m_count_avail_full(const model_t *m)
{
    int n = 0;
    for (int b = 0; b < m->n_full; b++) {
        n += m->full[b].ref == 0;
    }
    return n;
}

static int m_count_avail_swa(const model_t *m)
{
    int n = 0;
    for (int s = 0; s < m->n_swa; s++) {
        n += m->swa[s].ref == 0;
    }
    return n;
}

static tdm_status_t m_reserve(model_t *m, m_seq_t *q, int n)
{
    const int bs = m->bs, want = (n + bs - 1) / bs, lo = m_wlo(m, q->computed) / bs;
    const int need = want > q->nb ? want - q->nb : 0;
    int need_swa = 0;
    for (int j = lo; j < want; j++) {
        need_swa += j >= q->nb || q->swa[j] < 0;
    }
    if (need > m_count_avail_full(m) || need_swa > m_count_avail_swa(m)) {
        return TDM_ERR_BUSY;
    }
    for (int i = 0; i < need; i++) {
        q->swa[q->nb] = -1;
        q->blocks[q->nb++] = m_take_full(m);
    }
    for (int j = lo; j < q->nb; j++) {
        if (q->swa[j] < 0) {
            q->swa[j] = m_take_swa(m);
        }
    }
    return TDM_OK;
}

static void m_commit(model_t *m, m_seq_t *q, int n)
{
    const int bs = m->bs, full = n / bs < q->nb ? n / bs : q->nb;
    for (int i = q->committed; i < full; i++) {
        const int b = q->blocks[i];
        int canon = m->full[b].cached ? b : m_find(m, q->tok, (i + 1) * bs);
        if (canon < 0) {
            m->full[b].cached = true;
            m->full[b].key_len = (i + 1) * bs;
            memcpy(m->full[b].key, q->tok, (size_t)(i + 1) * bs * sizeof(int32_t));
            canon = b;
        }
        const int s = q->swa[i];
        if (s >= 0 && m->full[canon].swa < 0 && m->swa[s].owner < 0) {
            m->full[canon].swa = s;
            m->swa[s].owner = canon;
        }
        q->committed = i + 1;
    }
    q->computed = n > q->computed ? n : q->computed;
    for (int j = 0; j < m_wlo(m, q->computed) / bs && j < q->nb; j++) {
        if (q->swa[j] >= 0) {
            m_unref_swa(m, q->swa[j]);
            q->swa[j] = -1;
        }
    }
}

static void m_free(model_t *m, m_seq_t *q)
{
    for (int i = q->nb - 1; i >= 0; i--) {
        if (q->swa[i] >= 0) {
            m_unref_swa(m, q->swa[i]);
        }
        m_unref_full(m, q->blocks[i]);
    }
    q->live = false;
}

/* The manager and the model agree on everything observable; shared real ids hold the
 * same prefix. */
static void m_compare(const model_t *m, crd_kvm_t *kvm)
{
    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    int free_f = 0, idle_f = 0, free_s = 0, idle_s = 0;
    for (int b = 0; b < m->n_full; b++) {
        free_f += m->full[b].ref == 0 && m->full[b].idle_since < 0;
        idle_f += m->full[b].ref == 0 && m->full[b].idle_since >= 0;
    }
    for (int s = 0; s < m->n_swa; s++) {
        free_s += m->swa[s].ref == 0 && m->swa[s].idle_since < 0;
        idle_s += m->swa[s].ref == 0 && m->swa[s].idle_since >= 0;
    }
    assert_int_equal(st.n_free, free_f);
    assert_int_equal(st.n_cached_idle, idle_f);
    assert_int_equal(st.swa_free, free_s);
    assert_int_equal(st.swa_cached_idle, idle_s);
    assert_true(st.evictions == m->evict_full);
    assert_true(st.swa_evictions == m->evict_swa);
    check_accounting(kvm);
    for (int a = 0; a < M_SEQS; a++) {
        const m_seq_t *q = &m->seq[a];
        if (!q->live) {
            continue;
        }
        int32_t nb;
        const int32_t *rb = crd_kvm_seq_blocks(q->real, &nb);
        const int32_t *rs = crd_kvm_seq_swa_blocks(q->real);
        assert_int_equal(nb, q->nb);
        for (int j = 0; j < nb; j++) {
            assert_int_equal(rs[j] >= 0, q->swa[j] >= 0);
            assert_true(rb[j] >= 0 && rb[j] < m->n_full && rs[j] < m->n_swa);
        }
        for (int b = 0; b <= a; b++) { /* a real id two tables share: the same prefix */
            const m_seq_t *r = &m->seq[b];
            if (!r->live) {
                continue;
            }
            int32_t nb2;
            const int32_t *rb2 = crd_kvm_seq_blocks(r->real, &nb2);
            const int32_t *rs2 = crd_kvm_seq_swa_blocks(r->real);
            for (int i = 0; i < nb; i++) {
                for (int j = 0; j < nb2; j++) {
                    if ((a == b && i == j) || (rb[i] != rb2[j] && (rs[i] < 0 || rs[i] != rs2[j]))) {
                        continue;
                    }
                    assert_int_equal(i, j);
                    assert_true(a != b);
                    assert_true(q->computed >= (i + 1) * m->bs && r->computed >= (i + 1) * m->bs);
                    assert_memory_equal(q->tok, r->tok, (size_t)(i + 1) * m->bs * sizeof(int32_t));
                }
            }
        }
    }
}

static void run_model(int bs, int w, int n_full, int n_swa, uint32_t seed)
{
    model_t *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    m->bs = bs;
    m->w = w;
    m->n_full = n_full;
    m->n_swa = n_swa;
    for (int b = 0; b < M_BLOCKS; b++) {
        m->full[b].idle_since = m->swa[b].idle_since = -1;
        m->full[b].swa = m->swa[b].owner = -1;
    }
    crd_kvm_t *kvm = make_swa(n_full, bs, w, n_swa);
    uint32_t r = seed;
    int hits = 0, busy = 0, cut = 0;
    for (int it = 0; it < 4000; it++) {
        r = r * 1103515245u + 12345u;
        const uint32_t x = r >> 8;
        m_seq_t *q = &m->seq[x % M_SEQS];
        if (!q->live) {
            /* prompts from three stems, so prefixes really repeat */
            const int stem = (int)((x >> 4) % 3);
            q->n_prompt = q->n_tok = 1 + (int)((x >> 7) % 60);
            for (int i = 0; i < q->n_tok; i++) {
                q->tok[i] = stem * 1000 + i;
            }
            if ((x >> 14) % 4 == 0) { /* a different tail */
                q->tok[q->n_tok - 1] = 7;
            }
            int32_t cached;
            assert_int_equal(crd_kvm_seq_create(kvm, q->tok, q->n_prompt, &q->real, &cached, NULL),
                             TDM_OK);
            assert_int_equal(cached, m_create(m, q));
            hits += cached > 0;
            q->live = true;
        } else if ((x >> 4) % 6 == 0) {
            crd_kvm_seq_free(kvm, q->real);
            m_free(m, q);
        } else {
            const int target = q->computed + 1 + (int)((x >> 9) % 7);
            if (target >= M_TOK) {
                crd_kvm_seq_free(kvm, q->real);
                m_free(m, q);
                continue;
            }
            for (; q->n_tok < target; q->n_tok++) {
                q->tok[q->n_tok] = (int32_t)((x >> 12) % 3); /* generated: few choices */
            }
            const tdm_status_t st = crd_kvm_seq_reserve(kvm, q->real, target);
            assert_int_equal(st, m_reserve(m, q, target));
            if (st == TDM_OK) {
                crd_kvm_seq_commit(kvm, q->real, q->tok, target);
                m_commit(m, q, target);
            } else {
                busy++;
            }
        }
        m_compare(m, kvm);
    }
    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    cut = (int)st.swa_hits_cut;
    print_message("bs %d window %d pools %d/%d: %d hits, %d busy, %d tokens cut, %llu + %llu "
                  "evictions\n",
                  bs, w, n_full, n_swa, hits, busy, cut, (unsigned long long)st.evictions,
                  (unsigned long long)st.swa_evictions);
    /* the run exercised what it is for */
    assert_true(hits > 0 && busy > 0 && st.evictions > 0);
    /* a sliding pool as large as the full one never evicts on its own (every sequence
     * needs fewer sliding blocks than full ones, and a full eviction frees its window) */
    assert_true((st.swa_evictions > 0) == (n_swa < n_full));
    assert_true(w == 1 || n_swa == n_full || cut > 0); /* a window of 1 is never cut */
    for (int a = 0; a < M_SEQS; a++) {
        if (m->seq[a].live) {
            crd_kvm_seq_free(kvm, m->seq[a].real);
            m_free(m, &m->seq[a]);
        }
    }
    m_compare(m, kvm);
    crd_kvm_destroy(kvm);
    free(m);
}

static void test_swa_random_against_model(void **state)
{
    (void)state;
    run_model(4, 6, 24, 10, 1);
    run_model(2, 5, 40, 9, 2);
    run_model(1, 3, 30, 6, 3);
    run_model(3, 9, 20, 12, 4);
    run_model(4, 1, 20, 5, 5);
    run_model(4, 16, 32, 32, 6); /* a window larger than most prompts */
}

/* Recurrent-state slots (Gated DeltaNet models): one per sequence, BUSY when all are
 * taken, given back at free and reused; no prefix hits while states of cached prefixes
 * are not stored, though full blocks still enter the cache. */
static void test_state_slots_and_no_prefix_hits(void **state)
{
    (void)state;
    crd_kvm_t *kvm = NULL;
    const crd_kvm_params_t p = {.n_blocks = 16, .block_size = 16, .n_state_slots = 2};
    assert_int_equal(crd_kvm_create_pools(&p, &kvm, NULL), TDM_OK);
    int32_t t[40], cached = -1;
    fill(t, 40, 1);
    crd_kv_seq_t *a = run_prompt(kvm, t, 40, &cached);
    assert_int_equal(cached, 0);
    crd_kv_seq_t *b = NULL, *c = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 40, &b, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 0); /* the same prompt: blocks cached, but no hit */
    assert_int_not_equal(crd_kvm_seq_state_slot(a), crd_kvm_seq_state_slot(b));
    assert_true(crd_kvm_seq_state_slot(a) >= 0 && crd_kvm_seq_state_slot(a) < 2);
    assert_true(crd_kvm_seq_state_slot(b) >= 0 && crd_kvm_seq_state_slot(b) < 2);
    assert_int_equal(crd_kvm_state_slots_free(kvm), 0);
    tdm_error_t err = {0};
    assert_int_equal(crd_kvm_seq_create(kvm, t, 40, &c, &cached, &err), TDM_ERR_BUSY);
    assert_null(c);
    const int32_t freed = crd_kvm_seq_state_slot(a);
    crd_kvm_seq_free(kvm, a);
    assert_int_equal(crd_kvm_state_slots_free(kvm), 1);
    assert_int_equal(crd_kvm_seq_create(kvm, t, 40, &c, &cached, NULL), TDM_OK);
    assert_int_equal(crd_kvm_seq_state_slot(c), freed);
    assert_int_equal(cached, 0);
    crd_kvm_stats_t st;
    crd_kvm_get_stats(kvm, &st);
    assert_int_equal(st.prefix_hits, 0);
    assert_int_equal(st.n_cached_idle + st.n_used >= 2, 1); /* a's full blocks were hashed */
    check_accounting(kvm);
    crd_kvm_seq_free(kvm, b);
    crd_kvm_seq_free(kvm, c);
    assert_int_equal(crd_kvm_state_slots_free(kvm), 2);
    crd_kvm_destroy(kvm);

    /* without slots a sequence has none */
    kvm = make(4);
    crd_kv_seq_t *d = run_prompt(kvm, t, 8, &cached);
    assert_int_equal(crd_kvm_seq_state_slot(d), -1);
    crd_kvm_seq_free(kvm, d);
    crd_kvm_destroy(kvm);
}

/* Speculative decoding's spare slots: a free running slot is taken and given back, or made
 * the sequence's own (its old one freed); a sequence cannot be created while the spare
 * holds the last free slot. */
static void test_spare_state_slots(void **state)
{
    (void)state;
    crd_kvm_t *kvm = NULL;
    const crd_kvm_params_t p = {.n_blocks = 8, .block_size = 16, .n_state_slots = 2};
    assert_int_equal(crd_kvm_create_pools(&p, &kvm, NULL), TDM_OK);
    int32_t t[8], cached = -1;
    fill(t, 8, 1);
    crd_kv_seq_t *a = NULL, *b = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 8, &a, &cached, NULL), TDM_OK);
    assert_int_equal(crd_kvm_seq_state_slot(a), 0);
    const int32_t spare = crd_kvm_state_slot_take(kvm);
    assert_int_equal(spare, 1);
    assert_int_equal(crd_kvm_state_slots_free(kvm), 0);
    assert_int_equal(crd_kvm_state_slot_take(kvm), -1);
    assert_int_equal(crd_kvm_seq_create(kvm, t, 8, &b, &cached, NULL), TDM_ERR_BUSY);
    crd_kvm_state_slot_put(kvm, spare); /* a rejected draft: the spare goes back */
    assert_int_equal(crd_kvm_state_slots_free(kvm), 1);
    assert_int_equal(crd_kvm_state_slot_take(kvm), 1);
    crd_kvm_seq_state_move(kvm, a, 1); /* every draft accepted: the spare is a's now */
    assert_int_equal(crd_kvm_seq_state_slot(a), 1);
    assert_int_equal(crd_kvm_state_slots_free(kvm), 1);
    assert_int_equal(crd_kvm_seq_create(kvm, t, 8, &b, &cached, NULL), TDM_OK);
    assert_int_equal(crd_kvm_seq_state_slot(b), 0);
    crd_kvm_seq_free(kvm, a);
    crd_kvm_seq_free(kvm, b);
    assert_int_equal(crd_kvm_state_slots_free(kvm), 2);
    crd_kvm_destroy(kvm);
}

/* Stored recurrent states: a state saved at a sequence's last full prompt block is tied
 * to that cached block; a later prompt sharing the prefix hits up to it (not further,
 * though more blocks are cached) and loads it; unused stored states are evicted LRU and go
 * with their block. */
static void test_stored_states_give_prefix_hits(void **state)
{
    (void)state;
    crd_kvm_t *kvm = NULL;
    const crd_kvm_params_t p = {
        .n_blocks = 16, .block_size = 16, .n_state_slots = 2, .n_state_store = 1};
    assert_int_equal(crd_kvm_create_pools(&p, &kvm, NULL), TDM_OK);
    int32_t t[60], u[60], cached = -1;
    fill(t, 60, 1);
    fill(u, 60, 500);
    /* a: 40 tokens; its prefill stops at 32 and stores the state there */
    crd_kv_seq_t *a = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 40, &a, &cached, NULL), TDM_OK);
    assert_int_equal(crd_kvm_seq_state_load(kvm, a), -1);
    assert_int_equal(crd_kvm_seq_save_point(kvm, a, 40), 32);
    assert_int_equal(crd_kvm_seq_reserve(kvm, a, 32), TDM_OK);
    assert_int_equal(crd_kvm_seq_state_save(kvm, a, 31), -1); /* not a boundary */
    assert_int_equal(crd_kvm_seq_state_save(kvm, a, 32), 2);  /* after the 2 running slots */
    crd_kvm_seq_commit(kvm, a, t, 32);
    assert_int_equal(crd_kvm_seq_save_point(kvm, a, 40), 0); /* done */
    assert_int_equal(crd_kvm_seq_reserve(kvm, a, 48), TDM_OK);
    crd_kvm_seq_commit(kvm, a, t, 48); /* generated tokens: block 2 cached too */
    crd_kvm_seq_free(kvm, a);

    /* b: the same 40 tokens and more: the hit ends at 32 (block 2 has no stored state) */
    crd_kv_seq_t *b = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 60, &b, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 32);
    assert_int_equal(crd_kvm_seq_state_load(kvm, b), 2);
    assert_int_equal(crd_kvm_seq_save_point(kvm, b, 60), 48);
    assert_int_equal(crd_kvm_seq_reserve(kvm, b, 48), TDM_OK);
    /* the one stored state is b's to load: none left to save into */
    assert_int_equal(crd_kvm_seq_state_save(kvm, b, 48), -1);
    crd_kvm_seq_commit(kvm, b, t, 48);
    assert_int_equal(crd_kvm_seq_state_load(kvm, b), -1); /* loaded by that step */
    crd_kvm_seq_free(kvm, b);

    /* c: another prompt stores its state, evicting a's (idle, least recently used) */
    crd_kv_seq_t *c = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, u, 40, &c, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 0);
    assert_int_equal(crd_kvm_seq_reserve(kvm, c, 32), TDM_OK);
    assert_int_equal(crd_kvm_seq_state_save(kvm, c, 32), 2);
    crd_kvm_seq_commit(kvm, c, u, 32);
    crd_kvm_seq_free(kvm, c);
    crd_kv_seq_t *d = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 40, &d, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 0); /* blocks still cached, their state gone */
    crd_kvm_seq_free(kvm, d);
    assert_int_equal(crd_kvm_seq_create(kvm, u, 40, &d, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 32);
    crd_kvm_seq_free(kvm, d); /* never stepped: its pin is released */

    /* forgetting the cache forgets the stored states */
    crd_kvm_forget_cached(kvm);
    assert_int_equal(crd_kvm_seq_create(kvm, u, 40, &d, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 0);
    crd_kvm_seq_free(kvm, d);
    check_accounting(kvm);
    crd_kvm_destroy(kvm);
}

/* A state given from elsewhere (disaggregated prefill): the hit is every cached block of the
 * prompt (up to its last full block before the last token), with or without stored states,
 * and nothing is loaded; with stored states the plain create is still cut to them. */
static void test_given_state_hits_every_cached_block(void **state)
{
    (void)state;
    for (int32_t store = 0; store <= 1; store++) {
        crd_kvm_t *kvm = NULL;
        const crd_kvm_params_t p = {
            .n_blocks = 16, .block_size = 16, .n_state_slots = 2, .n_state_store = store};
        assert_int_equal(crd_kvm_create_pools(&p, &kvm, NULL), TDM_OK);
        int32_t t[70], cached = -1;
        fill(t, 70, 1);
        crd_kv_seq_t *a = NULL, *b = NULL, *c = NULL;
        /* a: 60 tokens (3 full blocks) whose K/V and state came from a prefill group */
        assert_int_equal(crd_kvm_seq_create_given(kvm, t, 60, &a, &cached, NULL), TDM_OK);
        assert_int_equal(cached, 0);
        assert_int_equal(crd_kvm_seq_reserve(kvm, a, 60), TDM_OK);
        crd_kvm_seq_commit(kvm, a, t, 60);
        crd_kvm_seq_free(kvm, a);
        /* b: 70 tokens sharing a's 60: a's 3 cached blocks, no stored state to load */
        assert_int_equal(crd_kvm_seq_create_given(kvm, t, 70, &b, &cached, NULL), TDM_OK);
        assert_int_equal(cached, 48);
        assert_int_equal(crd_kvm_seq_state_load(kvm, b), -1);
        assert_true(crd_kvm_seq_state_slot(b) >= 0);
        /* c, created plainly: no stored state anywhere, so no hit */
        assert_int_equal(crd_kvm_seq_create(kvm, t, 70, &c, &cached, NULL), TDM_OK);
        assert_int_equal(cached, 0);
        crd_kvm_seq_free(kvm, b);
        crd_kvm_seq_free(kvm, c);
        check_accounting(kvm);
        crd_kvm_destroy(kvm);
    }
}

/* state_every: save points every K blocks inside a prompt, then its last full block; a
 * prompt sharing only the first 40 tokens resumes at 32 (the deepest K boundary inside). */
static void test_stored_states_every_k_blocks(void **state)
{
    (void)state;
    crd_kvm_t *kvm = NULL;
    const crd_kvm_params_t p = {
        .n_blocks = 32, .block_size = 16, .n_state_slots = 1, .n_state_store = 4, .state_every = 2};
    assert_int_equal(crd_kvm_create_pools(&p, &kvm, NULL), TDM_OK);
    int32_t t[100], u[100], cached = -1;
    fill(t, 100, 1);
    memcpy(u, t, 40 * sizeof(int32_t));
    fill(u + 40, 60, 700); /* u shares t's first 40 tokens */
    crd_kv_seq_t *a = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, t, 100, &a, &cached, NULL), TDM_OK);
    const int32_t want[] = {32, 64, 96};
    for (int i = 0; i < 3; i++) {
        const int32_t sp = crd_kvm_seq_save_point(kvm, a, 100);
        assert_int_equal(sp, want[i]);
        assert_int_equal(crd_kvm_seq_reserve(kvm, a, sp), TDM_OK);
        assert_true(crd_kvm_seq_state_save(kvm, a, sp) >= 1);
        crd_kvm_seq_commit(kvm, a, t, sp);
    }
    assert_int_equal(crd_kvm_seq_save_point(kvm, a, 100), 0);
    crd_kvm_seq_free(kvm, a);
    crd_kv_seq_t *b = NULL;
    assert_int_equal(crd_kvm_seq_create(kvm, u, 100, &b, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 32);
    assert_true(crd_kvm_seq_state_load(kvm, b) >= 1);
    assert_int_equal(crd_kvm_seq_save_point(kvm, b, 100), 64);
    crd_kvm_seq_free(kvm, b);
    check_accounting(kvm);
    crd_kvm_destroy(kvm);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    crd_kvm_t *kvm = NULL;
    tdm_error_t err = {0};
    assert_int_equal(crd_kvm_create(0, 16, 0, &kvm, &err), TDM_ERR_INVALID_PARAM);
    assert_int_equal(crd_kvm_create(4, 0, 0, &kvm, NULL), TDM_ERR_INVALID_PARAM);
    /* a window needs a sliding pool and the reverse */
    crd_kvm_params_t p = {.n_blocks = 4, .block_size = 4, .n_swa = 8, .n_swa_blocks = 0};
    assert_int_equal(crd_kvm_create_pools(&p, &kvm, NULL), TDM_ERR_INVALID_PARAM);
    p = (crd_kvm_params_t){.n_blocks = 4, .block_size = 4, .n_swa = 0, .n_swa_blocks = 3};
    assert_int_equal(crd_kvm_create_pools(&p, &kvm, NULL), TDM_ERR_INVALID_PARAM);
    kvm = make(2);
    crd_kv_seq_t *s = NULL;
    int32_t cached;
    assert_int_equal(crd_kvm_seq_create(kvm, NULL, 5, &s, &cached, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(crd_kvm_seq_create(kvm, NULL, 0, &s, &cached, NULL), TDM_OK);
    assert_int_equal(cached, 0);
    crd_kvm_seq_free(kvm, s);
    crd_kvm_seq_free(kvm, NULL);
    crd_kvm_destroy(kvm);
    crd_kvm_destroy(NULL);
}

/* The router's view (crd_kvm_cached_hashes + crd_kvm_prefix_hashes) predicts exactly the
 * hit the manager then gives: for prompts sharing 0..4 leading blocks with a cached one,
 * the leading hashes found in the cached set, times the block size, equal seq_create's
 * n_cached; the version moves on every change and forget_cached empties the set. */
static void test_router_view_predicts_hits(void **state)
{
    (void)state;
    crd_kvm_t *kvm = make(64);
    int32_t a[5 * BS + 3], cached;
    fill(a, 5 * BS + 3, 11);
    const uint64_t v0 = crd_kvm_cache_version(kvm);
    crd_kvm_seq_free(kvm, run_prompt(kvm, a, 5 * BS + 3, &cached));
    assert_true(crd_kvm_cache_version(kvm) != v0);
    uint64_t set[64], h[8];
    const int32_t n_set = crd_kvm_cached_hashes(kvm, set, 64);
    assert_int_equal(n_set, 5);
    for (int32_t shared = 0; shared <= 4; shared++) {
        int32_t b[5 * BS + 3];
        memcpy(b, a, sizeof(b));
        for (int32_t i = shared * BS; i < 5 * BS + 3; i++) {
            b[i] = a[i] + 1; /* differs from block `shared` on */
        }
        const int32_t nh = crd_kvm_prefix_hashes(42, BS, b, 5 * BS + 3, h, 8);
        assert_int_equal(nh, 5);
        int32_t lead = 0;
        for (bool found = true; lead < nh && found; lead += found) {
            found = false;
            for (int32_t k = 0; k < n_set; k++) {
                found |= set[k] == h[lead];
            }
        }
        crd_kv_seq_t *s = NULL;
        assert_int_equal(crd_kvm_seq_create(kvm, b, 5 * BS + 3, &s, &cached, NULL), TDM_OK);
        assert_int_equal(cached, lead * BS);
        assert_int_equal(lead, shared);
        crd_kvm_seq_free(kvm, s);
    }
    /* another seed namespaces the hashes: nothing matches */
    crd_kvm_prefix_hashes(43, BS, a, 5 * BS + 3, h, 8);
    for (int32_t k = 0; k < n_set; k++) {
        assert_true(set[k] != h[0]);
    }
    const uint64_t v1 = crd_kvm_cache_version(kvm);
    crd_kvm_forget_cached(kvm);
    assert_true(crd_kvm_cache_version(kvm) != v1);
    assert_int_equal(crd_kvm_cached_hashes(kvm, set, 64), 0);
    crd_kvm_destroy(kvm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_prefix_reuses_blocks),
        cmocka_unit_test(test_last_prompt_token_is_always_computed),
        cmocka_unit_test(test_prefix_must_match_from_the_start),
        cmocka_unit_test(test_exhaustion_and_lru_eviction),
        cmocka_unit_test(test_concurrent_duplicate_prefix),
        cmocka_unit_test(test_random_operations_keep_accounting),
        cmocka_unit_test(test_swa_reserve_and_release),
        cmocka_unit_test(test_swa_hit_cut_by_evicted_window),
        cmocka_unit_test(test_swa_full_eviction_frees_window),
        cmocka_unit_test(test_swa_random_against_model),
        cmocka_unit_test(test_state_slots_and_no_prefix_hits),
        cmocka_unit_test(test_stored_states_give_prefix_hits),
        cmocka_unit_test(test_spare_state_slots),
        cmocka_unit_test(test_stored_states_every_k_blocks),
        cmocka_unit_test(test_given_state_hits_every_cached_block),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_router_view_predicts_hits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
