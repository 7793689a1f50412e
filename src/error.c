/* error.c - names and HTTP statuses of the stable error codes. */
#include "stoa/error.h"

static const struct {
    const char *name;
    unsigned status;
} table[STOA_ERR_COUNT_] = {
    [STOA_OK] = {"OK", 200},
    [STOA_ERR_BAD_JSON] = {"BAD_JSON", 400},
    [STOA_ERR_BAD_MESSAGE] = {"BAD_MESSAGE", 400},
    [STOA_ERR_UNKNOWN_TYPE] = {"UNKNOWN_TYPE", 400},
    [STOA_ERR_BAD_ROOM] = {"BAD_ROOM", 400},
    [STOA_ERR_NOT_IN_ROOM] = {"NOT_IN_ROOM", 409},
    [STOA_ERR_ALREADY_JOINED] = {"ALREADY_JOINED", 409},
    [STOA_ERR_PERMISSION_DENIED] = {"PERMISSION_DENIED", 403},
    [STOA_ERR_AUTH_FAILED] = {"AUTH_FAILED", 401},
    [STOA_ERR_RATE_LIMITED] = {"RATE_LIMITED", 429},
    [STOA_ERR_MESSAGE_TOO_LARGE] = {"MESSAGE_TOO_LARGE", 413},
    [STOA_ERR_STATE_TOO_LARGE] = {"STATE_TOO_LARGE", 413},
    [STOA_ERR_ROOM_FULL] = {"ROOM_FULL", 409},
    [STOA_ERR_TOO_MANY_ROOMS] = {"TOO_MANY_ROOMS", 409},
    [STOA_ERR_SERVER_FULL] = {"SERVER_FULL", 503},
    [STOA_ERR_NOT_FOUND] = {"NOT_FOUND", 404},
    [STOA_ERR_METHOD_NOT_ALLOWED] = {"METHOD_NOT_ALLOWED", 405},
    [STOA_ERR_UPGRADE_REQUIRED] = {"UPGRADE_REQUIRED", 426},
    [STOA_ERR_ORIGIN_DENIED] = {"ORIGIN_DENIED", 403},
    [STOA_ERR_SESSION_NOT_FOUND] = {"SESSION_NOT_FOUND", 404},
    [STOA_ERR_SUPERSEDED] = {"SUPERSEDED", 409},
    [STOA_ERR_ANONYMOUS_DISABLED] = {"ANONYMOUS_DISABLED", 403},
    [STOA_ERR_NOT_SUPPORTED] = {"NOT_SUPPORTED", 501},
    [STOA_ERR_PRECONDITION_FAILED] = {"PRECONDITION_FAILED", 412},
    [STOA_ERR_PRECONDITION_REQUIRED] = {"PRECONDITION_REQUIRED", 428},
    [STOA_ERR_INTERNAL] = {"INTERNAL", 500},
    [STOA_ERR_UNAVAILABLE] = {"UNAVAILABLE", 503},
};

const char *stoa_err_name(stoa_err_t err)
{
    return (unsigned)err < STOA_ERR_COUNT_ ? table[err].name : "INTERNAL";
}

unsigned stoa_err_http_status(stoa_err_t err)
{
    return (unsigned)err < STOA_ERR_COUNT_ ? table[err].status : 500;
}
