/* check_db.c - unit tests of db.c that need no PostgreSQL server: the
 * embedded migrations, the schema version comparison, the password-free
 * URL description, and connecting failing on time (refused port, a
 * listener that never answers, an unparsable URL). */
#include "stoa/db.h"
#include "stoa/util.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

START_TEST(test_migrations_embedded)
{
    size_t n = 0;
    const stoa_db_migration_t *m = stoa_db_migrations(&n);
    ck_assert_uint_ge(n, 1);
    ck_assert_int_eq(m[0].version, 1);
    ck_assert_str_eq(m[0].name, "init");
    for (size_t i = 0; i < n; i++) {
        ck_assert_ptr_nonnull(m[i].sql);
        ck_assert_uint_gt(strlen(m[i].sql), 0);
        ck_assert_uint_gt(strlen(m[i].name), 0);
        ck_assert_uint_eq(strspn(m[i].name, "abcdefghijklmnopqrstuvwxyz0123456789_"), strlen(m[i].name));
        if (i)
            ck_assert_int_gt(m[i].version, m[i - 1].version);
    }
    ck_assert_int_eq(stoa_db_latest_version(), m[n - 1].version);
    /* The first schema, as the file says (embedded verbatim, to its end). */
    ck_assert_ptr_nonnull(strstr(m[0].sql, "CREATE TABLE stoa_instances"));
    ck_assert_ptr_nonnull(strstr(m[0].sql, "CREATE TABLE stoa_bus_payloads"));
    ck_assert_ptr_nonnull(strstr(m[0].sql, "CREATE TABLE stoa_snapshots"));
    ck_assert_ptr_nonnull(strstr(m[0].sql, "CREATE TABLE stoa_outbox"));
    ck_assert_ptr_nonnull(strstr(m[0].sql, "CREATE FUNCTION stoa_publish(room text, data jsonb)"));
    ck_assert_ptr_nonnull(strstr(m[0].sql, "visible to Stoa only after COMMIT.';\n"));
}
END_TEST

START_TEST(test_migrations_have_no_transaction_control)
{
    /* stoa migrate wraps each file in its own transaction. */
    size_t n = 0;
    const stoa_db_migration_t *m = stoa_db_migrations(&n);
    for (size_t i = 0; i < n; i++) {
        const char *p = m[i].sql;
        while (p) {
            ck_assert_msg(strncmp(p, "BEGIN", 5) != 0 && strncmp(p, "COMMIT", 6) != 0 &&
                          strncmp(p, "ROLLBACK", 8) != 0,
                          "migration %d has transaction control: %.20s", m[i].version, p);
            p = strchr(p, '\n');
            if (p)
                p++;
        }
    }
}
END_TEST

static int compare(const int *known, size_t nk, const int *applied, size_t na, char *msg, size_t len)
{
    memset(msg, 'x', len);
    return stoa_db_schema_compare(known, nk, applied, na, msg, len);
}

START_TEST(test_schema_equal)
{
    int known[] = {1, 2, 3}, applied[] = {3, 1, 2};
    char msg[256];
    ck_assert_int_eq(compare(known, 3, applied, 3, msg, sizeof msg), STOA_DB_OK);
    ck_assert_str_eq(msg, "");
}
END_TEST

START_TEST(test_schema_empty_database)
{
    int known[] = {1, 2};
    char msg[256];
    ck_assert_int_eq(compare(known, 2, NULL, 0, msg, sizeof msg), STOA_DB_SCHEMA);
    ck_assert_ptr_nonnull(strstr(msg, "no Stoa schema (version 0; this stoa needs version 2)"));
    ck_assert_ptr_nonnull(strstr(msg, "stoa migrate"));
}
END_TEST

START_TEST(test_schema_older)
{
    int known[] = {1, 2, 3}, applied[] = {1};
    char msg[256];
    ck_assert_int_eq(compare(known, 3, applied, 1, msg, sizeof msg), STOA_DB_SCHEMA);
    ck_assert_ptr_nonnull(strstr(msg, "at version 1, older than this stoa needs (version 3; missing: 2, 3)"));
    ck_assert_ptr_nonnull(strstr(msg, "stoa migrate"));
}
END_TEST

START_TEST(test_schema_newer)
{
    int known[] = {1}, applied[] = {2, 1};
    char msg[256];
    ck_assert_int_eq(compare(known, 1, applied, 2, msg, sizeof msg), STOA_DB_SCHEMA);
    ck_assert_ptr_nonnull(strstr(msg, "at version 2, newer than this stoa knows (its newest migration is 1; unknown: 2)"));
    ck_assert_ptr_null(strstr(msg, "stoa migrate"));
}
END_TEST

START_TEST(test_schema_unknown_in_between)
{
    /* A version this binary never had counts as newer, even below its newest. */
    int known[] = {1, 3}, applied[] = {1, 2, 3};
    char msg[256];
    ck_assert_int_eq(compare(known, 2, applied, 3, msg, sizeof msg), STOA_DB_SCHEMA);
    ck_assert_ptr_nonnull(strstr(msg, "unknown: 2)"));
}
END_TEST

START_TEST(test_schema_gap)
{
    int known[] = {1, 2, 3}, applied[] = {1, 3};
    char msg[256];
    ck_assert_int_eq(compare(known, 3, applied, 2, msg, sizeof msg), STOA_DB_SCHEMA);
    ck_assert_ptr_nonnull(strstr(msg, "missing: 2)"));
}
END_TEST

START_TEST(test_schema_long_lists_and_small_buffer)
{
    int known[40], applied[] = {1};
    char msg[512], tiny[16];
    for (int i = 0; i < 40; i++)
        known[i] = i + 1;
    ck_assert_int_eq(compare(known, 40, applied, 1, msg, sizeof msg), STOA_DB_SCHEMA);
    ck_assert_ptr_nonnull(strstr(msg, "missing: 2, 3, 4, 5, 6, 7, 8, 9, ...)"));
    ck_assert_int_eq(compare(known, 40, applied, 1, tiny, sizeof tiny), STOA_DB_SCHEMA);
    ck_assert_uint_eq(strlen(tiny), sizeof tiny - 1);
}
END_TEST

START_TEST(test_describe_url)
{
    char out[256];
    ck_assert_int_eq(stoa_db_describe_url("postgresql://ada:s3cret-pw@db.example:6543/rooms?sslmode=require",
                                          out, sizeof out), 0);
    ck_assert_str_eq(out, "host=db.example port=6543 dbname=rooms user=ada");
    ck_assert_ptr_null(strstr(out, "s3cret"));
    ck_assert_int_eq(stoa_db_describe_url("host=/run/pg dbname=x password=s3cret-pw", out, sizeof out), 0);
    ck_assert_str_eq(out, "host=/run/pg dbname=x");
    ck_assert_int_eq(stoa_db_describe_url("", out, sizeof out), 0);
    ck_assert_str_eq(out, "(libpq defaults)");
    ck_assert_int_eq(stoa_db_describe_url("postgresql://h/db?bogus=1", out, sizeof out), -1);
    ck_assert_str_eq(out, "(unparsable database URL)");
    /* Truncated, never overflowing. */
    ck_assert_int_eq(stoa_db_describe_url("postgresql://ada@db.example:6543/rooms", out, 12), 0);
    ck_assert_uint_eq(strlen(out), 11);
}
END_TEST

/* A listening socket on 127.0.0.1 that never accepts: the kernel completes
 * the TCP handshake, nothing ever answers. */
static int mute_listener(int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(fd, 8), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

START_TEST(test_connect_refused)
{
    char url[128], err[512];
    int port, fd = mute_listener(&port);
    int64_t t0;
    close(fd);   /* nothing listens there now */
    snprintf(url, sizeof url, "postgresql://stoa:pw-x9@127.0.0.1:%d/stoa", port);
    t0 = stoa_now_ms();
    ck_assert_ptr_null(stoa_db_connect(url, err, sizeof err));
    ck_assert_int_lt(stoa_now_ms() - t0, 3000);
    ck_assert_ptr_nonnull(strstr(err, "cannot connect to the database (host=127.0.0.1 port="));
    ck_assert_ptr_nonnull(strstr(err, "Connection refused"));
    ck_assert_ptr_null(strstr(err, "pw-x9"));
    ck_assert_ptr_null(strchr(err, '\n'));
}
END_TEST

START_TEST(test_connect_deadline)
{
    char url[160], err[512];
    int port, fd = mute_listener(&port);
    int64_t t0, took;
    snprintf(url, sizeof url, "postgresql://stoa:pw-x9@127.0.0.1:%d/stoa?connect_timeout=1&sslmode=disable", port);
    t0 = stoa_now_ms();
    ck_assert_ptr_null(stoa_db_connect(url, err, sizeof err));
    took = stoa_now_ms() - t0;
    close(fd);
    ck_assert_msg(took >= 900 && took < 3000, "took %lld ms", (long long)took);
    ck_assert_ptr_nonnull(strstr(err, "no answer within 1 s"));
    ck_assert_ptr_null(strstr(err, "pw-x9"));
}
END_TEST

START_TEST(test_connect_bad_url)
{
    char err[512];
    ck_assert_ptr_null(stoa_db_connect("postgresql://h/db?bogus=1", err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "cannot be parsed"));
    ck_assert_ptr_nonnull(strstr(err, "bogus"));
    ck_assert_ptr_null(stoa_db_connect("", err, sizeof err));
    ck_assert_str_eq(err, "no database URL");
    stoa_db_close(NULL);
}
END_TEST

static Suite *db_suite(void)
{
    Suite *s = suite_create("db");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_migrations_embedded);
    tcase_add_test(tc, test_migrations_have_no_transaction_control);
    tcase_add_test(tc, test_schema_equal);
    tcase_add_test(tc, test_schema_empty_database);
    tcase_add_test(tc, test_schema_older);
    tcase_add_test(tc, test_schema_newer);
    tcase_add_test(tc, test_schema_unknown_in_between);
    tcase_add_test(tc, test_schema_gap);
    tcase_add_test(tc, test_schema_long_lists_and_small_buffer);
    tcase_add_test(tc, test_describe_url);
    tcase_add_test(tc, test_connect_refused);
    tcase_add_test(tc, test_connect_deadline);
    tcase_add_test(tc, test_connect_bad_url);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(db_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
