# The Node client (clients/node) and its examples (examples/node), tested
# with node's built-in runner against the real reboundd and a throwaway
# redis-server (clients/node/test/harness.js starts both on free loopback
# ports). One ctest per test file, so a failure names its area.
find_program(NODE_EXECUTABLE NAMES node nodejs)
set(rebound_node_dir ${PROJECT_SOURCE_DIR}/clients/node)
file(GLOB rebound_node_tests ${rebound_node_dir}/test/*.test.js)
foreach(t ${rebound_node_tests})
  get_filename_component(tname ${t} NAME)
  string(REGEX REPLACE "\\.test\\.js$" "" tname ${tname})
  if(NODE_EXECUTABLE)
    add_test(NAME clients.node.${tname}
             COMMAND ${NODE_EXECUTABLE} --test ${t}
             WORKING_DIRECTORY ${rebound_node_dir})
  else()
    # Not skipped in silence: scripts/deps.sh test installs nodejs
    # (scripts/packages/test-node.list).
    add_test(NAME clients.node.${tname}
             COMMAND sh -c "echo 'node not found: install nodejs (scripts/deps.sh test)' >&2; exit 1")
  endif()
  set_tests_properties(clients.node.${tname} PROPERTIES
    ENVIRONMENT "REBOUND_BUILD_DIR=${PROJECT_BINARY_DIR};REBOUND_SOURCE_DIR=${PROJECT_SOURCE_DIR}"
    TIMEOUT 120)
endforeach()
# The kill test keeps both cores busy for seconds (10,000 reports through
# node, reboundd and Redis): alone, so that it does not steal the time of
# the tests that measure firing precision.
if(TEST clients.node.kill9)
  set_tests_properties(clients.node.kill9 PROPERTIES RUN_SERIAL TRUE)
endif()
# Three daemons under a load of thousands of reports, one of them killed:
# alone too.
if(TEST clients.node.shards)
  set_tests_properties(clients.node.shards PROPERTIES RUN_SERIAL TRUE)
endif()
