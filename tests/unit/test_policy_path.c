/*
 * config/policy_path.c: the search order, one step at a time, and that a
 * binary outside its build directory (this test) never takes the source
 * tree's policy.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "config/policy_path.h"

#define INSTALLED "/etc/rebound/policy.json"
#define SOURCE "/src/rebound/config/policy.json"

/* A clone that was just built, run from its build directory: every fact
 * that steps 1-3 look at is present. */
static struct policy_search all_present(void)
{
    return (struct policy_search){
        .flag = "/tmp/flag.json",
        .config_key = "/etc/rebound/from-config.json",
        .exe_dir = "/src/rebound/build",
        .build_dir = "/src/rebound/build",
        .source_policy = SOURCE,
        .source_policy_exists = true,
        .installed = INSTALLED,
    };
}

static void test_flag_wins_over_everything(void **state)
{
    struct policy_search s = all_present();
    assert_string_equal(policy_path_choose(&s), "/tmp/flag.json");
}

static void test_config_key_before_source_tree(void **state)
{
    struct policy_search s = all_present();
    s.flag = NULL;
    assert_string_equal(policy_path_choose(&s), "/etc/rebound/from-config.json");
    s.flag = ""; /* an empty flag names nothing */
    assert_string_equal(policy_path_choose(&s), "/etc/rebound/from-config.json");
}

static void test_source_tree_from_its_build_directory(void **state)
{
    struct policy_search s = all_present();
    s.flag = s.config_key = NULL;
    assert_string_equal(policy_path_choose(&s), SOURCE);
}

static void test_installed_otherwise(void **state)
{
    struct policy_search s = all_present();
    s.flag = s.config_key = NULL;

    s.exe_dir = "/usr/sbin"; /* installed binary, source tree still on disk */
    assert_string_equal(policy_path_choose(&s), INSTALLED);

    s = all_present();
    s.flag = s.config_key = NULL;
    s.exe_dir = "/src/rebound/build/tests"; /* a subdirectory is not the build directory */
    assert_string_equal(policy_path_choose(&s), INSTALLED);

    s = all_present();
    s.flag = s.config_key = NULL;
    s.source_policy_exists = false; /* the tree lost its policy */
    assert_string_equal(policy_path_choose(&s), INSTALLED);

    s = all_present();
    s.flag = s.config_key = NULL;
    s.build_dir = NULL; /* built with REBOUND_SOURCE_POLICY=OFF */
    assert_string_equal(policy_path_choose(&s), INSTALLED);

    s.exe_dir = NULL; /* /proc not mounted */
    assert_string_equal(policy_path_choose(&s), INSTALLED);
}

static void test_default_outside_the_build_directory(void **state)
{
    /* This binary lives in <build>/tests, not in <build>: the source
     * tree's policy must not be picked even though it exists. */
    const char *p = policy_path_default("/nonexistent/policy.json");
    assert_string_equal(p, "/nonexistent/policy.json");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flag_wins_over_everything),
        cmocka_unit_test(test_config_key_before_source_tree),
        cmocka_unit_test(test_source_tree_from_its_build_directory),
        cmocka_unit_test(test_installed_otherwise),
        cmocka_unit_test(test_default_outside_the_build_directory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
