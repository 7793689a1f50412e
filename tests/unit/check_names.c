/* check_names.c - unit tests of names.c: anonymous names and colours. */
#include "stoa/names.h"

#include <check.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef size_t (*count_fn)(void);
typedef const char *(*item_fn)(size_t);

static bool in_list(const char *word, size_t len, count_fn count, item_fn item)
{
    for (size_t i = 0; i < count(); i++)
        if (strlen(item(i)) == len && strncmp(item(i), word, len) == 0)
            return true;
    return false;
}

static void check_no_duplicates(count_fn count, item_fn item)
{
    for (size_t i = 0; i < count(); i++)
        for (size_t j = i + 1; j < count(); j++)
            ck_assert_msg(strcmp(item(i), item(j)) != 0, "duplicate entry \"%s\" at %zu and %zu", item(i), i, j);
}

/* A word: a capital letter followed by lower-case letters. */
static void check_words(count_fn count, item_fn item)
{
    for (size_t i = 0; i < count(); i++) {
        const char *w = item(i);
        ck_assert_ptr_nonnull(w);
        ck_assert_msg(strlen(w) >= 2, "entry %zu is too short", i);
        ck_assert_msg(isupper((unsigned char)w[0]), "\"%s\" does not start with a capital", w);
        for (size_t j = 1; w[j]; j++)
            ck_assert_msg(islower((unsigned char)w[j]), "\"%s\" holds a character other than a-z", w);
    }
}

static bool valid_color(const char *c)
{
    if (!c || strlen(c) != 7 || c[0] != '#')
        return false;
    for (int i = 1; i < 7; i++)
        if (!strchr("0123456789abcdef", c[i]))
            return false;
    return true;
}

START_TEST(test_adjective_count)
{
    ck_assert_uint_ge(stoa_names_adjective_count(), 50);
}
END_TEST

START_TEST(test_animal_count)
{
    ck_assert_uint_ge(stoa_names_animal_count(), 50);
}
END_TEST

START_TEST(test_adjectives_unique)
{
    check_no_duplicates(stoa_names_adjective_count, stoa_names_adjective);
}
END_TEST

START_TEST(test_animals_unique)
{
    check_no_duplicates(stoa_names_animal_count, stoa_names_animal);
}
END_TEST

START_TEST(test_words_well_formed)
{
    check_words(stoa_names_adjective_count, stoa_names_adjective);
    check_words(stoa_names_animal_count, stoa_names_animal);
}
END_TEST

START_TEST(test_out_of_range_is_null)
{
    ck_assert_ptr_null(stoa_names_adjective(stoa_names_adjective_count()));
    ck_assert_ptr_null(stoa_names_animal(stoa_names_animal_count()));
    ck_assert_ptr_null(stoa_names_color(stoa_names_color_count()));
    ck_assert_ptr_null(stoa_names_adjective((size_t)-1));
}
END_TEST

START_TEST(test_palette)
{
    ck_assert_uint_ge(stoa_names_color_count(), 8);
    for (size_t i = 0; i < stoa_names_color_count(); i++)
        ck_assert_msg(valid_color(stoa_names_color(i)), "palette entry %zu \"%s\" is not #rrggbb", i,
                      stoa_names_color(i));
    check_no_duplicates(stoa_names_color_count, stoa_names_color);
}
END_TEST

START_TEST(test_generated_names)
{
    char first[STOA_NAME_MAX] = "";
    bool varied = false;
    for (int n = 0; n < 500; n++) {
        char name[STOA_NAME_MAX], color[STOA_COLOR_LEN];
        const char *space;
        memset(name, 'X', sizeof name);
        memset(color, 'X', sizeof color);
        stoa_names_anonymous(name, color);
        ck_assert_ptr_nonnull(memchr(name, '\0', sizeof name));
        space = strchr(name, ' ');
        ck_assert_msg(space != NULL, "\"%s\" is not two words", name);
        ck_assert_msg(strchr(space + 1, ' ') == NULL, "\"%s\" is more than two words", name);
        ck_assert_msg(in_list(name, (size_t)(space - name), stoa_names_adjective_count, stoa_names_adjective),
                      "\"%s\": first word is not an adjective of the list", name);
        ck_assert_msg(in_list(space + 1, strlen(space + 1), stoa_names_animal_count, stoa_names_animal),
                      "\"%s\": second word is not an animal of the list", name);
        ck_assert_msg(valid_color(color), "colour \"%.8s\" is not #rrggbb", color);
        ck_assert_msg(in_list(color, strlen(color), stoa_names_color_count, stoa_names_color),
                      "colour %s is not in the palette", color);
        if (n == 0)
            strcpy(first, name);
        else if (strcmp(first, name) != 0)
            varied = true;
    }
    /* With >= 2500 combinations, 500 identical draws mean no randomness. */
    ck_assert_msg(varied, "500 generated names were all \"%s\"", first);
}
END_TEST

START_TEST(test_generated_cover_lists)
{
    /* Every adjective can come up: with 5000 draws over ~60 words each is
     * expected ~80 times, so missing one means it is unreachable. */
    size_t na = stoa_names_adjective_count();
    bool *seen = calloc(na, sizeof *seen);
    size_t distinct = 0;
    ck_assert_ptr_nonnull(seen);
    for (int n = 0; n < 5000; n++) {
        char name[STOA_NAME_MAX], color[STOA_COLOR_LEN];
        stoa_names_anonymous(name, color);
        for (size_t i = 0; i < na; i++) {
            size_t len = strlen(stoa_names_adjective(i));
            if (strncmp(name, stoa_names_adjective(i), len) == 0 && name[len] == ' ' && !seen[i]) {
                seen[i] = true;
                distinct++;
            }
        }
    }
    free(seen);
    ck_assert_uint_eq(distinct, na);
}
END_TEST

static Suite *names_suite(void)
{
    Suite *s = suite_create("names");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_adjective_count);
    tcase_add_test(tc, test_animal_count);
    tcase_add_test(tc, test_adjectives_unique);
    tcase_add_test(tc, test_animals_unique);
    tcase_add_test(tc, test_words_well_formed);
    tcase_add_test(tc, test_out_of_range_is_null);
    tcase_add_test(tc, test_palette);
    tcase_add_test(tc, test_generated_names);
    tcase_add_test(tc, test_generated_cover_lists);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(names_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
