# The end-to-end test (tests/e2e/): real Haraka with the rebound plugin sends
# through reboundd's decisions to a real Postfix that greylists with Postgrey,
# all private instances on loopback. e2e.setup installs Haraka from npm (the
# committed package-lock.json) into the build directory; the Debian packages
# come from scripts/packages/test-e2e.list.
set(REBOUND_E2E_DIR ${PROJECT_BINARY_DIR}/e2e)

add_test(NAME e2e.setup
         COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/e2e/setup.sh ${REBOUND_E2E_DIR})
# RUN_SERIAL: npm ci and the four servers of a run load both cores; the
# timing tests of the suite must not share the machine with them.
set_tests_properties(e2e.setup PROPERTIES FIXTURES_SETUP e2e TIMEOUT 600 RUN_SERIAL TRUE)

foreach(t greylist_retry_and_suppression reboundd_killed_and_restarted reboundd_down_fallback
          give_up_bounces_to_sender)
  add_test(NAME e2e.${t}
           COMMAND ${Python3_EXECUTABLE} -m unittest -v test_e2e.EndToEnd.test_${t}
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/e2e)
  set_tests_properties(e2e.${t} PROPERTIES
    FIXTURES_REQUIRED e2e
    ENVIRONMENT "REBOUND_BUILD_DIR=${PROJECT_BINARY_DIR};REBOUND_SOURCE_DIR=${PROJECT_SOURCE_DIR};REBOUND_E2E_MODULES=${REBOUND_E2E_DIR}/node_modules;PYTHONDONTWRITEBYTECODE=1"
    TIMEOUT 120 RUN_SERIAL TRUE)
endforeach()

# The plugin's own tests (node's test runner; no Haraka needed).
find_program(REBOUND_NODE node)
if(REBOUND_NODE)
  add_test(NAME haraka.plugin
           COMMAND ${REBOUND_NODE} --test test/
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}/integrations/haraka)
  set_tests_properties(haraka.plugin PROPERTIES TIMEOUT 60)
else()
  message(WARNING "node not found: the Haraka plugin's tests are not registered (scripts/deps.sh test)")
endif()
