/*
 * clock.h - the monotonic clock in seconds, for latencies and rates (never wall time).
 */
#ifndef TDM_CLOCK_H
#define TDM_CLOCK_H

#include <time.h>

static inline double tdm_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
