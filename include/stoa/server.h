/* server.h - `stoa serve`: wires the modules together and runs until
 * SIGINT or SIGTERM. */
#ifndef STOA_SERVER_H
#define STOA_SERVER_H

#include "stoa/config.h"

/* Run the daemon with cfg (borrowed). Returns the process exit code. */
int stoa_server_run(const stoa_config_t *cfg);

#endif
