/* meminfo.c - MemAvailable / MemTotal from /proc/meminfo (see meminfo.h). */
#include "common/meminfo.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Parses "<key>: <n> kB"; returns 1 when the line is that key. */
static int parse_kb(const char *line, const char *key, uint64_t *out, const char *path,
                    tdm_status_t *st, tdm_error_t *err)
{
    const size_t kl = strlen(key);
    if (strncmp(line, key, kl) != 0 || line[kl] != ':') {
        return 0;
    }
    unsigned long long kb;
    char unit[8] = "";
    if (sscanf(line + kl + 1, " %llu %7s", &kb, unit) < 1) {
        *st = tdm_error_set(err, TDM_ERR_FORMAT, "%s: cannot read the %s line", path, key);
        return 1;
    }
    if (unit[0] != '\0' && strcmp(unit, "kB") != 0) {
        *st = tdm_error_set(err, TDM_ERR_FORMAT, "%s: %s in unit '%s'", path, key, unit);
        return 1;
    }
    *out = (uint64_t)kb * 1024u;
    return 1;
}

tdm_status_t tdm_meminfo_read(const char *path, uint64_t *available, uint64_t *total,
                              tdm_error_t *err)
{
    if (path == NULL) {
        path = "/proc/meminfo";
    }
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return tdm_error_set(err, TDM_ERR_IO, "%s: %s", path, strerror(errno));
    }
    char line[256];
    int have_avail = 0, have_total = 0;
    uint64_t tot = 0;
    tdm_status_t st = TDM_OK;
    while (st == TDM_OK && fgets(line, sizeof(line), f) != NULL) {
        have_avail |= parse_kb(line, "MemAvailable", available, path, &st, err);
        have_total |= parse_kb(line, "MemTotal", &tot, path, &st, err);
    }
    fclose(f);
    if (st != TDM_OK) {
        return st;
    }
    if (!have_avail) {
        return tdm_error_set(err, TDM_ERR_NOT_FOUND, "%s: no MemAvailable line", path);
    }
    if (total != NULL) {
        if (!have_total) {
            return tdm_error_set(err, TDM_ERR_NOT_FOUND, "%s: no MemTotal line", path);
        }
        *total = tot;
    }
    return TDM_OK;
}
