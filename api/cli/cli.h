/*
 * cli.h - the `tandem` command line: one binary, one table of subcommands.
 *
 * Each subcommand is `int cmd_<name>(int argc, char **argv)` in its own cmd_<name>.c,
 * returning the process exit status (0 success, 1 runtime failure, 2 usage error).
 * Subcommands parse their own options; main() only picks the entry.
 */
#ifndef TDM_CLI_H
#define TDM_CLI_H

#include <stdio.h>

typedef struct cli_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} cli_command_t;

#define TDM_COMMAND(name, summary) int cmd_##name(int argc, char **argv);
#include "api/cli/commands.def"
#undef TDM_COMMAND

/* Prints version and compiled-in / detected capabilities to out. */
void cli_print_version(FILE *out);

#endif
