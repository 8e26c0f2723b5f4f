/*
 * check.h - the three kinds of check, kept apart.
 *
 *   TDM_ASSERT(x)        always on, release included: cheap invariants whose failure
 *                        means memory corruption or a bug (shapes and types in every
 *                        kernel entry). Prints file, line and the expression, aborts.
 *   TDM_DEBUG_ASSERT(x)  expensive checks, debug builds only.
 *   TDM_CHECK(call)      propagates a non-OK tdm_status_t to the caller.
 *   TDM_CHECK_GOTO(call, st, label)  stores the status in st and jumps to an unwind label.
 *
 * User input is never checked with an assert: it returns TDM_ERR_INVALID_PARAM.
 */
#ifndef TDM_CHECK_H
#define TDM_CHECK_H

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif
void tdm_assert_fail(const char *expr, const char *file, int line, const char *func)
    __attribute__((noreturn));
#ifdef __cplusplus
}
#endif

#define TDM_ASSERT(x)                                          \
    do {                                                       \
        if (__builtin_expect(!(x), 0)) {                       \
            tdm_assert_fail(#x, __FILE__, __LINE__, __func__); \
        }                                                      \
    } while (0)

#ifndef NDEBUG
#define TDM_DEBUG_ASSERT(x) TDM_ASSERT(x)
#else
#define TDM_DEBUG_ASSERT(x) ((void)0)
#endif

#define TDM_CHECK(call)                      \
    do {                                     \
        tdm_status_t tdm_check_st_ = (call); \
        if (tdm_check_st_ != TDM_OK) {       \
            return tdm_check_st_;            \
        }                                    \
    } while (0)

#define TDM_CHECK_GOTO(call, st, label) \
    do {                                \
        (st) = (call);                  \
        if ((st) != TDM_OK) {           \
            goto label;                 \
        }                               \
    } while (0)

#define TDM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
