# High availability against real servers (docs/operations.md, "High
# availability"): redis-server as master and replicas, redis-sentinel
# (scripts/packages/test-ha.list). Runs alone: it kills a master on purpose
# and measures how long the failover takes. Three tests, about 25 s in all;
# each is bounded by its own 55 s budget.
add_test(NAME ha.sentinel_failover
         COMMAND ${Python3_EXECUTABLE} test_sentinel_failover.py
         WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/ha)
set_tests_properties(ha.sentinel_failover PROPERTIES
  ENVIRONMENT "REBOUND_BUILD_DIR=${PROJECT_BINARY_DIR};REBOUND_SOURCE_DIR=${PROJECT_SOURCE_DIR};PYTHONDONTWRITEBYTECODE=1"
  TIMEOUT 180 RUN_SERIAL TRUE SKIP_RETURN_CODE 77)

# Several reboundd on one Redis (docs/operations.md, "Several reboundd on one
# Redis: the lease"): standby answers, kill -9 and SIGSTOP of the owner, a
# fenced write, SIGTERM hand-over. About 40 s; each case within 55 s.
add_test(NAME ha.lease
         COMMAND ${Python3_EXECUTABLE} test_lease.py
         WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/ha)
set_tests_properties(ha.lease PROPERTIES
  ENVIRONMENT "REBOUND_BUILD_DIR=${PROJECT_BINARY_DIR};REBOUND_SOURCE_DIR=${PROJECT_SOURCE_DIR};PYTHONDONTWRITEBYTECODE=1"
  TIMEOUT 240 RUN_SERIAL TRUE SKIP_RETURN_CODE 77)
