/* cmd_version.c - `tandem version`: version, build, compiled-in capabilities, and what the
 * running machine offers (SIMD level detected now, CUDA devices visible now). */
#include "api/cli/cli.h"
#include "common/cpu_features.h"
#include "kernels/kern_backend.h"
#include "kernels/kern_isa.h"
#include "tdm_build_config.h"

#include <string.h>
#include <ucp/api/ucp.h>

void cli_print_version(FILE *out)
{
    tdm_cpu_features_t f;
    tdm_cpu_features_detect(&f);
    char feats[256];
    tdm_cpu_features_str(&f, feats, sizeof(feats));

    fprintf(out, "tandem %s (commit %s, %s build)\n", TDM_VERSION, TDM_GIT_COMMIT, TDM_BUILD_TYPE);
#if TDM_HAVE_CUDA
    fprintf(out, "cuda: yes (toolkit %s, archs %s)\n", TDM_CUDA_VERSION, TDM_CUDA_ARCHS);
    const int ndev = kern_gpu_count();
    for (int d = 0; d < ndev; d++) {
        kern_gpu_info_t gi;
        if (kern_gpu_info(d, &gi, NULL) == TDM_OK) {
            fprintf(out,
                    "cuda device %d: %s, compute capability %d.%d (sm_%d%d), %d SMs, %.1f GiB "
                    "(%.1f free), %s\n",
                    d, gi.name, gi.cc_major, gi.cc_minor, gi.cc_major, gi.cc_minor, gi.n_sm,
                    (double)gi.total_bytes / 1073741824.0, (double)gi.free_bytes / 1073741824.0,
                    gi.integrated ? "integrated (memory shared with the host)" : "discrete");
        }
    }
    if (ndev == 0) {
        fprintf(out, "cuda devices: none visible (--device auto runs on the CPU)\n");
    }
#else
    fprintf(out, "cuda: no\n");
#endif
    fprintf(out, "nccl: %s\n", TDM_HAVE_NCCL ? "yes" : "no");
    fprintf(out, "ucx: yes (%s, runtime %s)\n", TDM_UCX_VERSION, ucp_get_version_string());
    fprintf(out, "cpu: %d cpus, features: %s\n", f.n_cpus, feats);
    fprintf(out, "simd: %s (detected at run time)\n", kern_isa_name(kern_cpu_isa_best(&f)));
    if (strlen(TDM_SANITIZE) > 0) {
        fprintf(out, "sanitizers: %s\n", TDM_SANITIZE);
    }
}

int cmd_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    cli_print_version(stdout);
    return 0;
}
