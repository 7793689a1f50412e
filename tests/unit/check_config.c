/* check_config.c - unit tests of config.c: defaults, file, environment,
 * flags, precedence and validation. */
#include "stoa/config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[64];

static void setup(void)
{
    strcpy(tmpdir, "/tmp/stoa-config-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", tmpdir);
}

/* Write text to <tmpdir>/name; the path goes into out (static storage). */
static const char *write_file(const char *name, const char *text)
{
    static char path[2][256];
    static int turn;
    char *out = path[turn++ % 2];
    FILE *f;
    snprintf(out, sizeof path[0], "%s/%s", tmpdir, name);
    f = fopen(out, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return out;
}

/* Load with argv/envp (both NULL-terminated arrays built by the test). */
static int load(stoa_config_t *cfg, char **argv, char **envp, char *err, size_t errlen)
{
    int argc = 0;
    while (argv && argv[argc])
        argc++;
    err[0] = '\0';
    return stoa_config_load(cfg, argc, argv, envp, err, errlen);
}

static void load_ok(stoa_config_t *cfg, char **argv, char **envp)
{
    char err[512];
    int rc = load(cfg, argv, envp, err, sizeof err);
    ck_assert_msg(rc == 0, "load failed (%d): %s", rc, err);
}

/* Loading must fail, and the message must mention `needle`. */
static void load_bad(char **argv, char **envp, const char *needle)
{
    stoa_config_t *cfg = stoa_config_new();
    char err[512];
    int rc = load(cfg, argv, envp, err, sizeof err);
    ck_assert_msg(rc == -1, "load should fail, returned %d", rc);
    ck_assert_msg(err[0] != '\0', "no error message");
    ck_assert_msg(strstr(err, needle) != NULL, "message \"%s\" does not mention \"%s\"", err, needle);
    stoa_config_free(cfg);
}

/* load_bad with the one command-line argument arg. */
static void arg_bad(const char *arg, const char *needle)
{
    char *argv[] = {(char *)arg, NULL};
    load_bad(argv, NULL, needle);
}

START_TEST(test_defaults)
{
    stoa_config_t *cfg = stoa_config_new();
    ck_assert_str_eq(cfg->listen, "127.0.0.1:8080");
    ck_assert_str_eq(cfg->data_dir, "./stoa-data");
    ck_assert_str_eq(cfg->log_level, "info");
    ck_assert_str_eq(cfg->config_file, "");
    ck_assert_str_eq(cfg->jwt_alg, "HS256");
    ck_assert_str_eq(cfg->jwt_secret, "");
    ck_assert_str_eq(cfg->jwt_issuer, "stoa");
    ck_assert_str_eq(cfg->jwt_audience, "stoa");
    ck_assert_str_eq(cfg->anonymous_rights, "{\"*\":\"r\"}");
    ck_assert_str_eq(cfg->token_cookie, "stoa_token");
    ck_assert_int_eq(cfg->jwt_leeway_s, 30);
    ck_assert_int_eq(cfg->token_ttl_s, 86400);
    ck_assert(cfg->allow_anonymous);
    ck_assert_int_eq(cfg->heartbeat_interval_s, 30);
    ck_assert_int_eq(cfg->heartbeat_timeout_s, 75);
    ck_assert_int_eq(cfg->max_message_bytes, 65536);
    ck_assert_int_eq(cfg->max_state_bytes, 2048);
    ck_assert_int_eq(cfg->max_room_name_bytes, 128);
    ck_assert_int_eq(cfg->max_rooms_per_conn, 32);
    ck_assert_int_eq(cfg->max_peers_per_room, 256);
    ck_assert_int_eq(cfg->max_connections, 10000);
    ck_assert_int_eq(cfg->session_buffer_msgs, 1024);
    ck_assert_int_eq(cfg->session_buffer_bytes, 4194304);
    ck_assert_int_eq(cfg->session_buffer_age_s, 1800);
    ck_assert_int_eq(cfg->session_grace_ms, 10000);
    ck_assert_double_eq(cfg->presence_rate, 60.0);
    ck_assert_int_eq(cfg->presence_burst, 30);
    ck_assert_int_eq(cfg->presence_tick_ms, 50);
    ck_assert_double_eq(cfg->ephemeral_per_min, 600.0);
    ck_assert_int_eq(cfg->ephemeral_burst, 30);
    ck_assert_double_eq(cfg->join_rate, 10.0);
    ck_assert_int_eq(cfg->join_burst, 40);
    ck_assert_int_eq(cfg->ws_ping_interval_s, 20);
    ck_assert_int_eq(cfg->ws_idle_timeout_s, 60);

    /* Loading nothing keeps the defaults and passes validation. */
    load_ok(cfg, NULL, NULL);
    ck_assert_int_eq(cfg->max_state_bytes, 2048);
    ck_assert_str_eq(cfg->listen, "127.0.0.1:8080");
    stoa_config_free(cfg);
}
END_TEST

START_TEST(test_precedence)
{
    const char *file = write_file("stoa.ini", "; comment\n"
                                              "max_state_bytes = 100\n"
                                              "presence_burst = 7\n"
                                              "jwt_issuer = from-file\n"
                                              "[limits]\n"
                                              "max_rooms_per_conn = 5\n"
                                              "listen = 0.0.0.0:1111\n");
    char file_env[300];
    char *envp[] = {file_env, "STOA_MAX_STATE_BYTES=200", "STOA_JWT_ISSUER=from-env",
                    "STOA_LISTEN=0.0.0.0:2222", "PATH=/usr/bin", NULL};
    char *argv[] = {"--max-state-bytes", "300", "--listen=0.0.0.0:3333", NULL};
    stoa_config_t *cfg = stoa_config_new();
    snprintf(file_env, sizeof file_env, "STOA_CONFIG_FILE=%s", file);

    load_ok(cfg, argv, envp);
    ck_assert_str_eq(cfg->config_file, file);
    ck_assert_int_eq(cfg->max_state_bytes, 300);       /* flag > env > file */
    ck_assert_str_eq(cfg->listen, "0.0.0.0:3333");     /* flag > env > file */
    ck_assert_str_eq(cfg->jwt_issuer, "from-env");     /* env > file */
    ck_assert_int_eq(cfg->presence_burst, 7);          /* file > default */
    ck_assert_int_eq(cfg->max_rooms_per_conn, 5);      /* any section */
    ck_assert_int_eq(cfg->max_peers_per_room, 256);    /* default */
    stoa_config_free(cfg);
}
END_TEST

START_TEST(test_file_only_and_env_only)
{
    const char *file = write_file("a.ini", "max_state_bytes = 100\n");
    char *argv[] = {"--config-file", (char *)file, NULL};
    char *envp[] = {"STOA_MAX_STATE_BYTES=200", NULL};
    stoa_config_t *cfg = stoa_config_new();
    load_ok(cfg, argv, NULL);
    ck_assert_int_eq(cfg->max_state_bytes, 100);
    stoa_config_free(cfg);

    cfg = stoa_config_new();
    load_ok(cfg, NULL, envp);
    ck_assert_int_eq(cfg->max_state_bytes, 200);
    stoa_config_free(cfg);

    cfg = stoa_config_new();
    load_ok(cfg, argv, envp);   /* env beats the file named by a flag */
    ck_assert_int_eq(cfg->max_state_bytes, 200);
    stoa_config_free(cfg);
}
END_TEST

START_TEST(test_config_file_flag_beats_env)
{
    const char *good = write_file("good.ini", "presence_burst = 9\n");
    char bad_env[300], flag[300];
    char *envp[] = {bad_env, NULL};
    char *argv[] = {flag, NULL};
    stoa_config_t *cfg = stoa_config_new();
    snprintf(bad_env, sizeof bad_env, "STOA_CONFIG_FILE=%s/missing.ini", tmpdir);
    snprintf(flag, sizeof flag, "--config-file=%s", good);
    load_ok(cfg, argv, envp);
    ck_assert_int_eq(cfg->presence_burst, 9);
    ck_assert_str_eq(cfg->config_file, good);
    stoa_config_free(cfg);
}
END_TEST

START_TEST(test_bool_flags)
{
    char *neg[] = {"--no-allow-anonymous", NULL};
    char *pos[] = {"--allow-anonymous", NULL};
    char *eq[] = {"--allow-anonymous=off", NULL};
    char *env_off[] = {"STOA_ALLOW_ANONYMOUS=0", NULL};
    const char *file = write_file("b.ini", "allow_anonymous = no\n");
    char file_env[300];
    char *env_file[] = {file_env, NULL};
    stoa_config_t *cfg = stoa_config_new();

    load_ok(cfg, neg, NULL);
    ck_assert(!cfg->allow_anonymous);
    stoa_config_free(cfg);

    cfg = stoa_config_new();
    load_ok(cfg, eq, NULL);
    ck_assert(!cfg->allow_anonymous);
    stoa_config_free(cfg);

    cfg = stoa_config_new();
    load_ok(cfg, NULL, env_off);
    ck_assert(!cfg->allow_anonymous);
    stoa_config_free(cfg);

    /* The file says no, the flag says yes: the flag wins. */
    snprintf(file_env, sizeof file_env, "STOA_CONFIG_FILE=%s", file);
    cfg = stoa_config_new();
    load_ok(cfg, NULL, env_file);
    ck_assert(!cfg->allow_anonymous);
    load_ok(cfg, pos, env_file);
    ck_assert(cfg->allow_anonymous);
    stoa_config_free(cfg);
}
END_TEST

START_TEST(test_flag_forms)
{
    char *argv[] = {"--listen=0.0.0.0:9000", "--data-dir", "/tmp/x", "--presence-rate=2.5",
                    "--jwt_audience", "aud-1", "--token-ttl-s=120", "--jwt-secret=", NULL};
    stoa_config_t *cfg = stoa_config_new();
    load_ok(cfg, argv, NULL);
    ck_assert_str_eq(cfg->listen, "0.0.0.0:9000");
    ck_assert_str_eq(cfg->data_dir, "/tmp/x");
    ck_assert_double_eq(cfg->presence_rate, 2.5);
    ck_assert_str_eq(cfg->jwt_audience, "aud-1");
    ck_assert_int_eq(cfg->token_ttl_s, 120);
    ck_assert_str_eq(cfg->jwt_secret, "");
    stoa_config_free(cfg);
}
END_TEST

START_TEST(test_unknown_flag)
{
    char *a2[] = {"--max-state-byte", "100", NULL};
    arg_bad("--no-such-flag=1", "--no-such-flag");
    load_bad(a2, NULL, "--max-state-byte");
    arg_bad("--no-max-state-bytes", "no-max-state-bytes");   /* --no- only for booleans */
    arg_bad("positional", "positional");
    arg_bad("-x", "-x");
}
END_TEST

START_TEST(test_flag_needs_value)
{
    char *argv[] = {"--listen", NULL};
    load_bad(argv, NULL, "listen");
}
END_TEST

START_TEST(test_unknown_file_key)
{
    const char *file = write_file("bad.ini", "max_state_bytes = 100\nbogus_key = 1\n");
    char *argv[] = {"--config-file", (char *)file, NULL};
    load_bad(argv, NULL, "bogus_key");
    load_bad(argv, NULL, file);   /* the message names the file */
}
END_TEST

START_TEST(test_file_errors)
{
    char missing[300];
    char *argv[] = {"--config-file", missing, NULL};
    const char *file = write_file("syntax.ini", "max_state_bytes = 100\nthis line has no equals sign\n");
    char *argv2[] = {"--config-file", (char *)file, NULL};
    snprintf(missing, sizeof missing, "%s/nope.ini", tmpdir);
    load_bad(argv, NULL, "nope.ini");
    load_bad(argv2, NULL, "syntax.ini");
}
END_TEST

START_TEST(test_bad_values)
{
    char *bad_env[] = {"STOA_MAX_STATE_BYTES=lots", NULL};
    const char *file = write_file("range.ini", "max_peers_per_room = 0\n");
    char *bad_file[] = {"--config-file", (char *)file, NULL};

    arg_bad("--max-state-bytes=abc", "max_state_bytes");
    arg_bad("--max-state-bytes=abc", "abc");
    arg_bad("--max-state-bytes=100x", "100x");
    arg_bad("--max-state-bytes=", "max_state_bytes");
    arg_bad("--max-state-bytes=10", "max_state_bytes");
    arg_bad("--max-room-name-bytes=100000", "max_room_name_bytes");
    arg_bad("--max-connections=99999999999999999999999", "max_connections");
    arg_bad("--presence-rate=fast", "presence_rate");
    arg_bad("--presence-rate=nan", "presence_rate");
    arg_bad("--presence-rate=inf", "presence_rate");
    arg_bad("--presence-rate=0", "presence_rate");
    arg_bad("--allow-anonymous=maybe", "allow_anonymous");
    load_bad(NULL, bad_env, "STOA_MAX_STATE_BYTES");
    load_bad(bad_file, NULL, "max_peers_per_room");
}
END_TEST

START_TEST(test_range_bounds_inclusive)
{
    char *lo[] = {"--max-state-bytes=64", "--max-room-name-bytes=8", NULL};
    char *hi[] = {"--max-state-bytes=1048576", "--max-message-bytes=16777216", NULL};
    stoa_config_t *cfg = stoa_config_new();
    load_ok(cfg, lo, NULL);
    ck_assert_int_eq(cfg->max_state_bytes, 64);
    ck_assert_int_eq(cfg->max_room_name_bytes, 8);
    load_ok(cfg, hi, NULL);
    ck_assert_int_eq(cfg->max_state_bytes, 1048576);
    stoa_config_free(cfg);
}
END_TEST

START_TEST(test_other_env_ignored)
{
    char *envp[] = {"STOA_TEST_HARNESS=1", "STOA_=x", "STOA_NOEQUALS", "HOME=/root", "MAX_STATE_BYTES=1",
                    NULL};
    stoa_config_t *cfg = stoa_config_new();
    load_ok(cfg, NULL, envp);
    ck_assert_int_eq(cfg->max_state_bytes, 2048);
    stoa_config_free(cfg);
}
END_TEST

START_TEST(test_help)
{
    char *h1[] = {"--help", NULL};
    char *h2[] = {"-h", NULL};
    char *h3[] = {"--no-such-flag", "--help", NULL};
    char *h4[] = {"--max-state-bytes=100", "--help", NULL};
    char err[256];
    stoa_config_t *cfg = stoa_config_new();
    ck_assert_int_eq(load(cfg, h1, NULL, err, sizeof err), 1);
    ck_assert_int_eq(load(cfg, h2, NULL, err, sizeof err), 1);
    ck_assert_int_eq(load(cfg, h3, NULL, err, sizeof err), 1);
    ck_assert_int_eq(load(cfg, h4, NULL, err, sizeof err), 1);
    ck_assert_int_eq(cfg->max_state_bytes, 2048);   /* nothing else done */
    stoa_config_free(cfg);
}
END_TEST

START_TEST(test_print_help)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    stoa_config_print_help(f);
    fclose(f);
    ck_assert_ptr_nonnull(strstr(buf, "--max-state-bytes"));
    ck_assert_ptr_nonnull(strstr(buf, "STOA_MAX_STATE_BYTES"));
    ck_assert_ptr_nonnull(strstr(buf, "--heartbeat-timeout-s"));
    ck_assert_ptr_nonnull(strstr(buf, "--allow-anonymous"));
    free(buf);
}
END_TEST

START_TEST(test_heartbeat_relation)
{
    char *equal[] = {"--heartbeat-interval-s=30", "--heartbeat-timeout-s=30", NULL};
    char *less[] = {"--heartbeat-interval-s=80", NULL};   /* default timeout 75 */
    char *fine[] = {"--heartbeat-interval-s=5", "--heartbeat-timeout-s=6", NULL};
    char *msg_state[] = {"--max-message-bytes=1000", "--max-state-bytes=2000", NULL};
    stoa_config_t *cfg = stoa_config_new();
    load_bad(equal, NULL, "heartbeat_timeout_s");
    load_bad(less, NULL, "heartbeat_timeout_s");
    load_bad(msg_state, NULL, "max_message_bytes");
    load_ok(cfg, fine, NULL);
    ck_assert_int_eq(cfg->heartbeat_interval_s, 5);
    ck_assert_int_eq(cfg->heartbeat_timeout_s, 6);
    stoa_config_free(cfg);
}
END_TEST

START_TEST(test_set)
{
    stoa_config_t *cfg = stoa_config_new();
    char err[256] = "";
    ck_assert_int_eq(stoa_config_set(cfg, "max_rooms_per_conn", "3", err, sizeof err), 0);
    ck_assert_int_eq(cfg->max_rooms_per_conn, 3);
    /* Flag spelling and upper case name the same setting. */
    ck_assert_int_eq(stoa_config_set(cfg, "max-peers-per-room", "4", err, sizeof err), 0);
    ck_assert_int_eq(cfg->max_peers_per_room, 4);
    ck_assert_int_eq(stoa_config_set(cfg, "SESSION_BUFFER_MSGS", "9", err, sizeof err), 0);
    ck_assert_int_eq(cfg->session_buffer_msgs, 9);
    ck_assert_int_eq(stoa_config_set(cfg, "jwt_secret", "abc", err, sizeof err), 0);
    ck_assert_int_eq(stoa_config_set(cfg, "jwt_secret", "def", err, sizeof err), 0);   /* no leak */
    ck_assert_str_eq(cfg->jwt_secret, "def");
    ck_assert_int_eq(stoa_config_set(cfg, "allow_anonymous", "FALSE", err, sizeof err), 0);
    ck_assert(!cfg->allow_anonymous);
    ck_assert_int_eq(stoa_config_set(cfg, "allow_anonymous", "Yes", err, sizeof err), 0);
    ck_assert(cfg->allow_anonymous);

    ck_assert_int_eq(stoa_config_set(cfg, "no_such_setting", "1", err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "no_such_setting"));
    err[0] = '\0';
    ck_assert_int_eq(stoa_config_set(cfg, "max_rooms_per_conn", "0", err, sizeof err), -1);
    ck_assert_str_ne(err, "");
    ck_assert_int_eq(cfg->max_rooms_per_conn, 3);   /* unchanged on error */
    ck_assert_int_eq(stoa_config_set(cfg, "max_rooms", "3", err, sizeof err), -1);   /* no prefixes */
    stoa_config_free(cfg);
    stoa_config_free(NULL);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_precedence);
    tcase_add_test(tc, test_file_only_and_env_only);
    tcase_add_test(tc, test_config_file_flag_beats_env);
    tcase_add_test(tc, test_bool_flags);
    tcase_add_test(tc, test_flag_forms);
    tcase_add_test(tc, test_unknown_flag);
    tcase_add_test(tc, test_flag_needs_value);
    tcase_add_test(tc, test_unknown_file_key);
    tcase_add_test(tc, test_file_errors);
    tcase_add_test(tc, test_bad_values);
    tcase_add_test(tc, test_range_bounds_inclusive);
    tcase_add_test(tc, test_other_env_ignored);
    tcase_add_test(tc, test_help);
    tcase_add_test(tc, test_print_help);
    tcase_add_test(tc, test_heartbeat_relation);
    tcase_add_test(tc, test_set);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
