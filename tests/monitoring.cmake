# The monitoring assets (monitoring/, web/) and reboundctl's rendering for a
# person, tested against the real tools: promtool, a real Prometheus scraping
# a real reboundd, headless Chromium. Included from tests/CMakeLists.txt.

# The alerting rules: valid, and their unit tests pass. promtool comes from
# the Debian package prometheus (scripts/packages/test.list); without it the
# test fails rather than vanish.
add_test(NAME monitoring.rules
         COMMAND sh -c "promtool check rules rebound.rules.yml && promtool test rules rebound.rules.test.yml"
         WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}/monitoring/prometheus)

# Python tests under tests/monitoring/: the dashboard, the status page,
# reboundctl's tables. Each says itself what it needs and fails (not skips)
# under ctest when a tool is missing.
function(rebound_monitoring_test name module)
  add_test(NAME ${name}
           COMMAND ${Python3_EXECUTABLE} -m unittest -v ${module}
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/monitoring)
  set_tests_properties(${name} PROPERTIES
    ENVIRONMENT "REBOUND_BUILD_DIR=${PROJECT_BINARY_DIR};REBOUND_SOURCE_DIR=${PROJECT_SOURCE_DIR};PYTHONDONTWRITEBYTECODE=1;PYTHONPATH=${CMAKE_CURRENT_SOURCE_DIR}/integration"
    TIMEOUT 180)
endfunction()

# The dashboard's test checks the Grafana JSON's queries against a real
# Prometheus: the daemon only serves its metrics there, as monitoring.status_page
# has it do under the sanitizers too, so it runs in the plain build only.
set(monitoring_tests dashboard status_page ctl_render journal_log)
if(REBOUND_SANITIZE)
  list(REMOVE_ITEM monitoring_tests dashboard)
endif()
foreach(t ${monitoring_tests})
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/monitoring/test_${t}.py)
    if(t STREQUAL "ctl_render")
      rebound_monitoring_test(ctl.render test_${t})
    else()
      rebound_monitoring_test(monitoring.${t} test_${t})
    endif()
  endif()
endforeach()
