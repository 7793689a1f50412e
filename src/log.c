/* log.c - leveled logging to stderr. */
#include "stoa/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static atomic_int current_level = STOA_LOG_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void stoa_log_set_level(stoa_log_level_t level)
{
    atomic_store(&current_level, (int)level);
}

int stoa_log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

void stoa_log(stoa_log_level_t level, const char *fmt, ...)
{
    char line[1024];
    char stamp[32];
    struct timespec ts;
    struct tm tm;
    va_list ap;

    if ((int)level > atomic_load(&current_level))
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* One fprintf per line so lines from different threads do not interleave. */
    fprintf(stderr, "%s.%03ldZ %-5s %s\n", stamp, ts.tv_nsec / 1000000, level_names[level], line);
}
