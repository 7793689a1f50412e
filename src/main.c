/* main.c - the stoa command: serve, migrate, token, version. */
#include "stoa/auth.h"
#include "stoa/config.h"
#include "stoa/db.h"
#include "stoa/log.h"
#include "stoa/names.h"
#include "stoa/server.h"
#include "stoa/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: stoa <command> [flags]\n\n"
            "commands:\n"
            "  serve     run the server (stoa serve --help lists every setting)\n"
            "  token     mint a signed token: stoa token --sub ID [--name NAME] [--color #rrggbb]\n"
            "            [--rooms JSON] [--groups ID,ID...] [--anon] [--ttl SECONDS] [settings...]\n"
            "  migrate   create or upgrade the PostgreSQL schema: stoa migrate --database URL\n"
            "  version   print the version\n");
}

static int load_config(stoa_config_t *cfg, int argc, char **argv)
{
    char err[512];
    int rc = stoa_config_load(cfg, argc, argv, environ, err, sizeof err);
    if (rc < 0)
        fprintf(stderr, "stoa: %s\n", err);
    return rc;
}

static int cmd_serve(int argc, char **argv)
{
    stoa_config_t *cfg = stoa_config_new();
    int rc = load_config(cfg, argc, argv);
    if (rc == 1) {
        printf("usage: stoa serve [flags]\n\n");
        stoa_config_print_help(stdout);
        rc = 0;
    } else if (rc == 0) {
        rc = stoa_server_run(cfg);
    } else {
        rc = 2;
    }
    stoa_config_free(cfg);
    return rc;
}

static int cmd_migrate(int argc, char **argv)
{
    stoa_config_t *cfg = stoa_config_new();
    stoa_db_t *db = NULL;
    char err[1024];
    int rc = load_config(cfg, argc, argv), n;

    if (rc == 1) {
        printf("usage: stoa migrate --database URL [settings...]\n\n"
               "Apply the schema migrations this stoa carries (%d, the newest) that the\n"
               "database lacks, in order, each in its own transaction. Running it again\n"
               "applies nothing. The URL may also come from STOA_DATABASE_URL or the\n"
               "config file (database_url).\n", stoa_db_latest_version());
        rc = 0;
        goto out;
    }
    if (rc < 0) {
        rc = 2;
        goto out;
    }
    if (!cfg->database_url[0]) {
        fprintf(stderr, "stoa migrate: no database: pass --database URL or set STOA_DATABASE_URL\n");
        rc = 2;
        goto out;
    }
    stoa_log_set_level((stoa_log_level_t)stoa_log_parse_level(cfg->log_level));
    if (!(db = stoa_db_connect(cfg->database_url, err, sizeof err))) {
        fprintf(stderr, "stoa migrate: %s\n", err);
        rc = 1;
        goto out;
    }
    n = stoa_db_migrate(db, stdout, err, sizeof err);
    if (n < 0)
        fprintf(stderr, "stoa migrate: %s\n", err);
    rc = n < 0 ? -n : 0;   /* 2: the database is newer than this stoa; 1: a failure */
out:
    stoa_db_close(db);
    stoa_config_free(cfg);
    return rc;
}

static int cmd_token(int argc, char **argv)
{
    const char *sub = NULL, *name = NULL, *color = NULL, *rooms = "{\"*\":\"rw\"}", *groups = NULL;
    bool anon = false;
    long ttl = -1;
    char **rest = stoa_xcalloc((size_t)argc + 1, sizeof *rest);
    int nrest = 0, rc = 2;
    stoa_config_t *cfg = stoa_config_new();
    stoa_auth_t *auth = NULL;
    stoa_identity_t id = {0};
    char err[512];
    char *token = NULL;

    for (int i = 0; i < argc; i++) {
        const char **slot = NULL;
        if (strcmp(argv[i], "--sub") == 0) slot = &sub;
        else if (strcmp(argv[i], "--name") == 0) slot = &name;
        else if (strcmp(argv[i], "--color") == 0) slot = &color;
        else if (strcmp(argv[i], "--rooms") == 0) slot = &rooms;
        else if (strcmp(argv[i], "--groups") == 0) slot = &groups;
        else if (strcmp(argv[i], "--anon") == 0) { anon = true; continue; }
        else if (strcmp(argv[i], "--ttl") == 0 && i + 1 < argc) {
            char *end;
            ttl = strtol(argv[++i], &end, 10);
            if (*end || ttl < 1 || ttl > 31536000) {
                fprintf(stderr, "stoa token: --ttl takes 1 to 31536000 seconds\n");
                goto out;
            }
            continue;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            rc = 0;
            goto out;
        } else {
            rest[nrest++] = argv[i];
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "stoa token: %s needs a value\n", argv[i]);
            goto out;
        }
        *slot = argv[++i];
    }
    if (!sub) {
        fprintf(stderr, "stoa token: --sub is required\n");
        goto out;
    }
    if (load_config(cfg, nrest, rest) != 0)
        goto out;
    stoa_log_set_level(STOA_LOG_WARN);
    if (!(auth = stoa_auth_new(cfg, err, sizeof err))) {
        fprintf(stderr, "stoa token: %s\n", err);
        goto out;
    }
    id.sub = (char *)sub;
    id.name = (char *)(name ? name : sub);
    id.color = (char *)color;   /* NULL: the server derives a palette colour from sub */
    id.anonymous = anon;
    id.perms = stoa_perms_parse(rooms, (size_t)cfg->max_room_name_bytes, err, sizeof err);
    if (!id.perms) {
        fprintf(stderr, "stoa token: --rooms: %s\n", err);
        goto out;
    }
    if (groups) {   /* comma-separated group ids; checked when verified below */
        const char *cursor = groups, *g;
        size_t len;
        id.groups = stoa_xcalloc(strlen(groups) + 1, sizeof *id.groups);
        while ((g = stoa_list_next(&cursor, &len)))
            if (len > 0)
                id.groups[id.ngroups++] = stoa_xstrndup(g, len);
    }
    token = stoa_auth_mint(auth, &id, ttl > 0 ? (int)ttl : cfg->token_ttl_s, err, sizeof err);
    stoa_perms_free(id.perms);
    for (size_t i = 0; i < id.ngroups; i++)
        free(id.groups[i]);
    free(id.groups);
    if (!token) {
        fprintf(stderr, "stoa token: %s\n", err);
        goto out;
    }
    /* Check what was minted the way the server will. */
    {
        stoa_identity_t *back = stoa_auth_verify(auth, token, err, sizeof err);
        if (!back) {
            fprintf(stderr, "stoa token: the minted token does not verify: %s\n", err);
            goto out;
        }
        stoa_identity_free(back);
    }
    printf("%s\n", token);
    rc = 0;
out:
    free(token);
    stoa_auth_free(auth);
    stoa_config_free(cfg);
    free(rest);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "serve") == 0)
        return cmd_serve(argc - 2, argv + 2);
    if (strcmp(argv[1], "migrate") == 0)
        return cmd_migrate(argc - 2, argv + 2);
    if (strcmp(argv[1], "token") == 0)
        return cmd_token(argc - 2, argv + 2);
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("stoa %s\n", STOA_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "stoa: unknown command \"%s\"\n", argv[1]);
    usage(stderr);
    return 2;
}
