/* names.h - "Adjective Animal" names and colours for anonymous peers. */
#ifndef STOA_NAMES_H
#define STOA_NAMES_H

#include <stddef.h>

#define STOA_NAME_MAX 64
#define STOA_COLOR_LEN 8   /* "#rrggbb" plus NUL */

/* Write a random name such as "Neon Narwhal" into name (STOA_NAME_MAX
 * bytes) and a random palette colour "#rrggbb" into color. */
void stoa_names_anonymous(char name[STOA_NAME_MAX], char color[STOA_COLOR_LEN]);

/* The word lists and palette, for tests. */
size_t stoa_names_adjective_count(void);
size_t stoa_names_animal_count(void);
const char *stoa_names_adjective(size_t i);
const char *stoa_names_animal(size_t i);
size_t stoa_names_color_count(void);
const char *stoa_names_color(size_t i);

#endif
