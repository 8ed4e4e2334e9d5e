# The Python client library (clients/python) and its examples
# (examples/python), tested against the real reboundd and a throwaway
# redis-server through tests/integration/harness.py.
#   clients.python.client    every call, errors, token, resend, deadline, consumer acks
#   clients.python.kill9     kill -9 of reboundd amid a pipelined batch of 10,000 reports
#   clients.python.examples  the reporter and consumer examples
#   clients.python.install   pip install into a fresh venv with no package index
foreach(t client kill9 examples install)
  add_test(NAME clients.python.${t}
           COMMAND ${Python3_EXECUTABLE} -m unittest -v test_${t}
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/clients/python)
  set_tests_properties(clients.python.${t} PROPERTIES
    ENVIRONMENT "REBOUND_BUILD_DIR=${PROJECT_BINARY_DIR};REBOUND_SOURCE_DIR=${PROJECT_SOURCE_DIR};PYTHONDONTWRITEBYTECODE=1"
    TIMEOUT 300)
endforeach()
