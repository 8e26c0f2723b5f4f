/*
 * replay_main.c - runs LLVMFuzzerTestOneInput over files or directories given on the
 * command line, so the fuzz corpus is exercised (under ASan/UBSan in CI) without libFuzzer.
 * Corpus files named ok-* must parse and files named bad-* must be rejected; others only
 * must not crash. Exits non-zero when nothing was replayed or an expectation failed.
 */
#include "model/gguf.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path, const char *base, int *n_files)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return 1;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    size_t got;
    while (buf != NULL && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            uint8_t *nb = realloc(buf, cap);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
            } else {
                buf = nb;
            }
        }
    }
    fclose(f);
    if (buf == NULL) {
        fprintf(stderr, "replay: out of memory reading %s\n", path);
        return 1;
    }
    /* an exact-size heap copy so that ASan catches any read past the input */
    uint8_t *exact = malloc(n > 0 ? n : 1);
    if (exact == NULL) {
        free(buf);
        return 1;
    }
    memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);

    int rc = 0;
    gguf_ctx_t *g = NULL;
    tdm_error_t err;
    tdm_error_clear(&err);
    tdm_status_t st = gguf_open_memory(exact, n, base, &g, &err);
    if (strncmp(base, "ok-", 3) == 0 && st != TDM_OK) {
        fprintf(stderr, "replay: %s should parse but: %s\n", path, tdm_error_msg(&err));
        rc = 1;
    } else if (strncmp(base, "bad-", 4) == 0 && st == TDM_OK) {
        fprintf(stderr, "replay: %s should be rejected but parsed\n", path);
        rc = 1;
    } else if (st != TDM_OK) {
        printf("  %-40s rejected: %s\n", base, tdm_error_msg(&err));
    } else {
        printf("  %-40s ok (%llu keys, %llu tensors)\n", base, (unsigned long long)gguf_n_kv(g),
               (unsigned long long)gguf_n_tensors(g));
    }
    gguf_close(g);
    free(exact);
    (*n_files)++;
    return rc;
}

int main(int argc, char **argv)
{
    int n_files = 0, failures = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s does not exist\n", argv[i]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            const char *slash = strrchr(argv[i], '/');
            failures += replay_file(argv[i], slash ? slash + 1 : argv[i], &n_files);
            continue;
        }
        struct dirent **list = NULL;
        int n = scandir(argv[i], &list, NULL, alphasort);
        for (int k = 0; k < n; k++) {
            if (list[k]->d_name[0] != '.') {
                char path[4096];
                snprintf(path, sizeof(path), "%s/%s", argv[i], list[k]->d_name);
                failures += replay_file(path, list[k]->d_name, &n_files);
            }
            free(list[k]);
        }
        free(list);
    }
    printf("replayed %d inputs, %d failed expectations\n", n_files, failures);
    return n_files == 0 || failures > 0 ? 1 : 0;
}
