/*
 * main.c - entry point of the `tandem` binary: global options, then a subcommand.
 *
 *   tandem [--log-level LEVEL] <command> [options]
 *   tandem --help | --version
 *
 * The log level (the process's one global setting) is set here, from --log-level or
 * TANDEM_LOG_LEVEL, before any subcommand starts threads.
 */
#include "api/cli/cli.h"
#include "common/log.h"

#include <stdlib.h>
#include <string.h>

static const cli_command_t commands[] = {
#define TDM_COMMAND(name, summary) {#name, summary, cmd_##name},
#include "api/cli/commands.def"
#undef TDM_COMMAND
};

static void print_help(FILE *out)
{
    fprintf(out, "usage: tandem [--log-level LEVEL] <command> [options]\n"
                 "       tandem --help | --version\n\n"
                 "Tandem serves large language models from GGUF files on one machine or split\n"
                 "across several (tensor and expert parallelism).\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    }
    fprintf(out, "\nglobal options:\n"
                 "  --log-level LEVEL  error, warn, info, debug or trace (env TANDEM_LOG_LEVEL)\n"
                 "  --help             this text; `tandem <command> --help` for a command\n"
                 "  --version          same as `tandem version`\n");
}

static int set_log_level(const char *name)
{
    tdm_log_level_t level;
    if (tdm_log_parse_level(name, &level) != 0) {
        fprintf(stderr, "tandem: unknown log level '%s' (use error, warn, info, debug, trace)\n",
                name);
        return -1;
    }
    tdm_log_set_level(level);
    return 0;
}

int main(int argc, char **argv)
{
    const char *env_level = getenv("TANDEM_LOG_LEVEL");
    if (env_level != NULL && env_level[0] != '\0' && set_log_level(env_level) != 0) {
        return 2;
    }

    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_help(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0) {
            cli_print_version(stdout);
            return 0;
        } else if (strcmp(argv[i], "--log-level") == 0 && i + 1 < argc) {
            if (set_log_level(argv[i + 1]) != 0) {
                return 2;
            }
            i += 2;
        } else {
            fprintf(stderr, "tandem: unknown option '%s'\n\n", argv[i]);
            print_help(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        print_help(stderr);
        return 2;
    }
    for (size_t c = 0; c < sizeof(commands) / sizeof(commands[0]); c++) {
        if (strcmp(argv[i], commands[c].name) == 0) {
            return commands[c].run(argc - i, argv + i);
        }
    }
    fprintf(stderr, "tandem: unknown command '%s' (see tandem --help)\n", argv[i]);
    return 2;
}
