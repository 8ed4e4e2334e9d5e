/*
 * The policy search order (see policy_path.h). The choice is a pure
 * function of the facts so that its order is unit-tested; only
 * policy_path_default looks at the file system.
 *
 * The build-tree step exists so that a fresh clone works without an
 * install: build/reboundctl classify finds config/policy.json next to the
 * build directory. It applies only when the binary's own directory is the
 * build directory it was compiled for (REBOUND_BUILD_DIR, given by CMake
 * unless REBOUND_SOURCE_POLICY=OFF), so an installed binary never reads a
 * policy from a leftover source tree.
 */
#include "config/policy_path.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *policy_path_choose(const struct policy_search *s)
{
    if (s->flag && s->flag[0])
        return s->flag;
    if (s->config_key && s->config_key[0])
        return s->config_key;
    if (s->exe_dir && s->build_dir && s->source_policy && s->source_policy_exists &&
        strcmp(s->exe_dir, s->build_dir) == 0)
        return s->source_policy;
    return s->installed;
}

const char *policy_path_default(const char *installed)
{
    struct policy_search s = {.installed = installed};
#if defined(REBOUND_BUILD_DIR) && defined(REBOUND_SOURCE_DIR)
    static char exe_dir[PATH_MAX], build_dir[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe_dir, sizeof exe_dir - 1);
    if (n > 0) {
        exe_dir[n] = '\0';
        char *slash = strrchr(exe_dir, '/');
        if (slash && slash != exe_dir) {
            *slash = '\0';
            s.exe_dir = exe_dir;
        }
    }
    /* The build directory may have been reached through a symlink when
     * CMake ran; /proc/self/exe is always the real path. */
    if (realpath(REBOUND_BUILD_DIR, build_dir))
        s.build_dir = build_dir;
    s.source_policy = REBOUND_SOURCE_DIR "/config/policy.json";
    s.source_policy_exists = access(s.source_policy, R_OK) == 0;
#endif
    return policy_path_choose(&s);
}
