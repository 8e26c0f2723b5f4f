/* log.c - stderr logger with a process-wide level (see log.h for why it is global). */
#include "common/log.h"
#include "common/check.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Written once by main before threads start, read everywhere after: not shared
 * mutable state in practice, which is why a plain static is acceptable here. */
static tdm_log_level_t log_level = TDM_LOG_WARN;

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};

void tdm_log_set_level(tdm_log_level_t level)
{
    log_level = level;
}

tdm_log_level_t tdm_log_get_level(void)
{
    return log_level;
}

int tdm_log_parse_level(const char *name, tdm_log_level_t *out)
{
    for (size_t i = 0; i < TDM_ARRAY_SIZE(level_names); i++) {
        if (name != NULL && strcmp(name, level_names[i]) == 0) {
            *out = (tdm_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

void tdm_log_write(tdm_log_level_t level, const char *subsys, const char *fmt, ...)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);

    char line[2048];
    int n = snprintf(line, sizeof(line), "%02d:%02d:%02d.%03ld %-5s %-6s ", tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], subsys);
    if (n < 0 || (size_t)n >= sizeof(line)) {
        n = 0;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    /* One fputs per line keeps lines from different threads whole. */
    size_t len = strlen(line);
    if (len + 1 < sizeof(line)) {
        line[len] = '\n';
        line[len + 1] = '\0';
    }
    fputs(line, stderr);
}

void tdm_assert_fail(const char *expr, const char *file, int line, const char *func)
{
    fprintf(stderr, "tandem: assertion failed: %s (%s:%d in %s)\n", expr, file, line, func);
    fflush(stderr);
    abort();
}
