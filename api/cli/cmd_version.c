/* cmd_version.c - `tandem version`: version, build, compiled-in capabilities, and what the
 * running machine offers (SIMD level detected now, CUDA devices visible now). */
#include "api/cli/cli.h"
#include "common/cpu_features.h"
#include "kernels/kern_isa.h"
#include "tdm_build_config.h"

#if TDM_HAVE_CUDA
#include "kernels/cuda/kern_cuda.h"
#endif

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
    int ndev = kern_cuda_device_count();
    for (int d = 0; d < ndev; d++) {
        char name[128];
        int major = 0, minor = 0;
        size_t mem = 0;
        if (kern_cuda_device_info(d, name, sizeof(name), &major, &minor, &mem, NULL) == TDM_OK) {
            fprintf(out, "cuda device %d: %s, sm_%d%d, %.1f GiB\n", d, name, major, minor,
                    (double)mem / (1024.0 * 1024.0 * 1024.0));
        }
    }
    if (ndev == 0) {
        fprintf(out, "cuda devices: none visible\n");
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
