/*
 * log.h - leveled logging to stderr.
 *
 * TDM_LOG(level, "subsys", fmt, ...) checks the level before evaluating its
 * arguments. Messages are lowercase, one line, and name the exact cause (syscall
 * failures include strerror). The level is the process's one piece of logging state:
 * main() sets it once from --log-level or TANDEM_LOG_LEVEL before any thread starts.
 */
#ifndef TDM_LOG_H
#define TDM_LOG_H

typedef enum tdm_log_level {
    TDM_LOG_ERROR = 0,
    TDM_LOG_WARN,
    TDM_LOG_INFO,
    TDM_LOG_DEBUG,
    TDM_LOG_TRACE,
} tdm_log_level_t;

/* Sets the threshold; call once from main before threads start. */
void tdm_log_set_level(tdm_log_level_t level);
tdm_log_level_t tdm_log_get_level(void);

/* Parses "error|warn|info|debug|trace"; returns 0 on success, -1 if unknown. */
int tdm_log_parse_level(const char *name, tdm_log_level_t *out);

void tdm_log_write(tdm_log_level_t level, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define TDM_LOG(level, subsys, ...)                        \
    do {                                                   \
        if ((level) <= tdm_log_get_level()) {              \
            tdm_log_write((level), (subsys), __VA_ARGS__); \
        }                                                  \
    } while (0)

#define TDM_ERROR(subsys, ...) TDM_LOG(TDM_LOG_ERROR, subsys, __VA_ARGS__)
#define TDM_WARN(subsys, ...)  TDM_LOG(TDM_LOG_WARN, subsys, __VA_ARGS__)
#define TDM_INFO(subsys, ...)  TDM_LOG(TDM_LOG_INFO, subsys, __VA_ARGS__)
#define TDM_DEBUG(subsys, ...) TDM_LOG(TDM_LOG_DEBUG, subsys, __VA_ARGS__)

#endif
