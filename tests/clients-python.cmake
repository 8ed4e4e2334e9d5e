# The Python client library (clients/python) and its examples
# (examples/python), tested against the real reboundd and a throwaway
# redis-server through tests/integration/harness.py.
#   clients.python.client        every call, errors, token, busy, resend, deadline, consumer acks
#   clients.python.kill9         kill -9 of reboundd amid a pipelined batch of 10,000 reports
#   clients.python.kill9_asyncio the same with the asyncio client and consumer
#   clients.python.instances     several reboundd under a lease: a list of addresses, the owner followed
#   clients.python.shards        three reboundd in six shards: each report straight to its owner, kill -9 of one
#   clients.python.examples      the reporter and consumer examples
#   clients.python.install       pip install into a fresh venv with no package index
set(pyclient_tests
    "client=test_client"
    "kill9=test_kill9.Kill9Test.test_blocking_client_and_consumer"
    "kill9_asyncio=test_kill9.Kill9Test.test_asyncio_client_and_consumer"
    "instances=test_instances"
    "shards=test_shards"
    "examples=test_examples"
    "install=test_install")
foreach(entry ${pyclient_tests})
  string(REPLACE "=" ";" parts ${entry})
  list(GET parts 0 name)
  list(GET parts 1 target)
  add_test(NAME clients.python.${name}
           COMMAND ${Python3_EXECUTABLE} -m unittest -v ${target}
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/clients/python)
  set_tests_properties(clients.python.${name} PROPERTIES
    ENVIRONMENT "REBOUND_BUILD_DIR=${PROJECT_BINARY_DIR};REBOUND_SOURCE_DIR=${PROJECT_SOURCE_DIR};PYTHONDONTWRITEBYTECODE=1"
    TIMEOUT 300)
endforeach()
# Three daemons under a load of thousands of reports, one of them killed:
# alone, so that it does not steal the time of the firing-precision tests.
set_tests_properties(clients.python.shards PROPERTIES RUN_SERIAL TRUE)
