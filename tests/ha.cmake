# High availability against real servers (docs/operations.md, "High
# availability"), each test run alone: it kills a Redis primary on purpose
# and measures how long the failover takes; each case is bounded by its
# own 55 s budget.
#   ha.sentinel_failover: redis-server as master and replicas,
#     redis-sentinel (scripts/packages/test-ha.list); three cases, ~25 s.
#   ha.cluster_failover: nine redis-server nodes in cluster mode (three
#     primaries, two replicas each) formed by redis-cli --cluster create;
#     two cases, ~10 s.
#   ha.lease: several reboundd on one Redis (docs/operations.md, "Several
#     reboundd on one Redis: the lease"): standby answers, kill -9 and
#     SIGSTOP of the owner, a fenced write, SIGTERM hand-over; ~40 s.
#   ha.shards: three reboundd sharing the schedule in six shards
#     (docs/operations.md, "Shards"): spread, the same replies through a
#     non-owner, events on any instance, kill -9 and SIGTERM; ~60 s.
foreach(t sentinel_failover cluster_failover lease shards)
  add_test(NAME ha.${t}
           COMMAND ${Python3_EXECUTABLE} test_${t}.py
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/ha)
  set_tests_properties(ha.${t} PROPERTIES
    ENVIRONMENT "REBOUND_BUILD_DIR=${PROJECT_BINARY_DIR};REBOUND_SOURCE_DIR=${PROJECT_SOURCE_DIR};PYTHONDONTWRITEBYTECODE=1"
    TIMEOUT 240 RUN_SERIAL TRUE SKIP_RETURN_CODE 77)
endforeach()
#   ha.domains_shared: three reboundd in six shards: a throttle decided by
#     one instance's shards holds the others' retries of the domain within
#     about a second, one domain_throttled, one sender_alert, a domain's
#     pace kept by the instances together; the merge script on a real
#     Redis; ~20 s.
#   ha.rolling: three reboundd in six shards under pipelined ingest through
#     the Python client, each restarted in turn (SIGTERM, start again):
#     only resendable unavailable, 0 acknowledged reports lost; ~10 s
#     (bounded at 80 s).
foreach(t domains_shared rolling)
  add_test(NAME ha.${t}
           COMMAND ${Python3_EXECUTABLE} test_${t}.py
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/ha)
  set_tests_properties(ha.${t} PROPERTIES
    ENVIRONMENT "REBOUND_BUILD_DIR=${PROJECT_BINARY_DIR};REBOUND_SOURCE_DIR=${PROJECT_SOURCE_DIR};PYTHONDONTWRITEBYTECODE=1"
    TIMEOUT 180 RUN_SERIAL TRUE SKIP_RETURN_CODE 77)
endforeach()
# ha.cluster_shards: shards on the three primaries of a Redis Cluster
#   (docs/operations.md, "Shards on a Redis Cluster"): the same replies
#   through a non-owner, every shard's events on one instance, pipelined
#   batches over every shard, kill -9 of a primary (the other primaries'
#   shards never unavailable); seven or nine redis-server nodes; ~20 s.
add_test(NAME ha.cluster_shards
         COMMAND ${Python3_EXECUTABLE} test_cluster_shards.py
         WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/ha)
set_tests_properties(ha.cluster_shards PROPERTIES
  ENVIRONMENT "REBOUND_BUILD_DIR=${PROJECT_BINARY_DIR};REBOUND_SOURCE_DIR=${PROJECT_SOURCE_DIR};PYTHONDONTWRITEBYTECODE=1"
  TIMEOUT 90 RUN_SERIAL TRUE SKIP_RETURN_CODE 77)
