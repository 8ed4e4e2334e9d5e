# First run and packaging: the policy search order, the man pages, the
# Debian package. Included at the end of tests/CMakeLists.txt.

rebound_unit_test(test_policy_path rebound_config)

# A binary in the build directory, told nothing, takes the source tree's
# policy (what the README's tour relies on).
if(REBOUND_SOURCE_POLICY)
  add_test(NAME policy.source_tree_default
           COMMAND ${PROJECT_BINARY_DIR}/reboundctl classify --check)
  set_tests_properties(policy.source_tree_default PROPERTIES
    PASS_REGULAR_EXPRESSION "\"policy\":\"${PROJECT_SOURCE_DIR}/config/policy.json\"")
endif()

# The man pages render without a warning (man -l, groff warnings on). They
# are built by the top-level install section, which CMake reads after this
# file: the names are repeated here.
find_program(SCDOC scdoc)
if(SCDOC AND NOT REBOUND_MAN STREQUAL "OFF")
  set(rebound_man_outputs)
  foreach(page reboundd.8 reboundctl.1 reboundd.json.5 rebound-policy.5)
    list(APPEND rebound_man_outputs ${PROJECT_BINARY_DIR}/man/${page})
  endforeach()
  add_test(NAME man.render COMMAND sh -c
    "for p in \"$@\"; do e=$(MANWIDTH=80 man --warnings=all -l \"$p\" 2>&1 >/dev/null) || exit 1; \
     [ -z \"$e\" ] || { echo \"$p: $e\"; exit 1; }; \
     MANWIDTH=80 man -l \"$p\" | grep -q '^NAME' || { echo \"$p: no NAME\"; exit 1; }; done"
    sh ${rebound_man_outputs})
endif()

# The Debian package: built, its contents checked, extracted, its reboundd
# run on its own config (tests/package_check.sh). Registered in the plain
# build only: the package is compiled by dpkg-buildpackage with the
# distribution's flags whatever this build's options are, so under ASan it
# would redo the same ~30 s of work and test nothing more.
if(NOT REBOUND_SANITIZE)
  add_test(NAME package.deb COMMAND ${PROJECT_SOURCE_DIR}/tests/package_check.sh
           ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}/package ${PROJECT_VERSION})
  set_tests_properties(package.deb PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600)
endif()
