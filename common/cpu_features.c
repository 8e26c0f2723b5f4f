/* cpu_features.c - run-time CPU feature detection (cpuid on x86-64, HWCAP on arm64). */
#include "common/cpu_features.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#ifndef HWCAP_ASIMDHP
#define HWCAP_ASIMDHP (1UL << 10)
#endif
#ifndef HWCAP_SVE
#define HWCAP_SVE (1UL << 22)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1UL << 13)
#endif
#endif

void tdm_cpu_features_detect(tdm_cpu_features_t *out)
{
    memset(out, 0, sizeof(*out));
#if defined(__x86_64__)
    __builtin_cpu_init();
    out->avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    out->avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    out->avx512_vnni = out->avx512 && __builtin_cpu_supports("avx512vnni");
#if defined(__GNUC__) && __GNUC__ >= 11
    out->avx_vnni = __builtin_cpu_supports("avxvnni");
#endif
    unsigned int a, b, c, d;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        out->amx_int8 = (d >> 24 & 1) && (d >> 25 & 1); /* EDX: AMX-TILE, AMX-INT8 */
    }
#elif defined(__aarch64__)
    unsigned long hw = getauxval(AT_HWCAP);
    unsigned long hw2 = getauxval(AT_HWCAP2);
    out->neon = true;
    out->dotprod = (hw & HWCAP_ASIMDDP) != 0;
    out->fp16 = (hw & HWCAP_ASIMDHP) != 0;
    out->sve = (hw & HWCAP_SVE) != 0;
    out->i8mm = (hw2 & HWCAP2_I8MM) != 0;
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    out->n_cpus = n > 0 ? (int)n : 1;
}

void tdm_cpu_features_str(const tdm_cpu_features_t *f, char *buf, unsigned long size)
{
    struct {
        bool on;
        const char *name;
    } names[] = {
        {f->avx2, "avx2"},         {f->avx512, "avx512"},     {f->avx512_vnni, "avx512_vnni"},
        {f->avx_vnni, "avx_vnni"}, {f->amx_int8, "amx_int8"}, {f->neon, "neon"},
        {f->dotprod, "dotprod"},   {f->i8mm, "i8mm"},         {f->fp16, "fp16"},
        {f->sve, "sve"},
    };
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!names[i].on) {
            continue;
        }
        int n = snprintf(buf + used, size - used, "%s%s", used ? " " : "", names[i].name);
        if (n < 0 || (size_t)n >= size - used) {
            break;
        }
        used += (size_t)n;
    }
    if (used == 0) {
        snprintf(buf, size, "none");
    }
}
