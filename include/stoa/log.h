/* log.h - leveled logging to stderr, safe from any thread.
 *
 * Never log a token or a key: callers pass identities (sub, peer ids),
 * never credentials.
 */
#ifndef STOA_LOG_H
#define STOA_LOG_H

typedef enum { STOA_LOG_ERROR = 0, STOA_LOG_WARN, STOA_LOG_INFO, STOA_LOG_DEBUG } stoa_log_level_t;

void stoa_log_set_level(stoa_log_level_t level);
/* Parse "error", "warn", "info" or "debug"; returns -1 on anything else. */
int stoa_log_parse_level(const char *s);
void stoa_log(stoa_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define STOA_ERROR(...) stoa_log(STOA_LOG_ERROR, __VA_ARGS__)
#define STOA_WARN(...) stoa_log(STOA_LOG_WARN, __VA_ARGS__)
#define STOA_INFO(...) stoa_log(STOA_LOG_INFO, __VA_ARGS__)
#define STOA_DEBUG(...) stoa_log(STOA_LOG_DEBUG, __VA_ARGS__)

#endif
