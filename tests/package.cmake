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
