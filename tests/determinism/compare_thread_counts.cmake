# Runs the determinism probe with 1, 2 and 3 CPU threads and fails unless
# all three print the same hash.
set(hashes)
foreach(threads 1 2 3)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env LOWBIT_NUM_THREADS=${threads} ${PROBE}
                  OUTPUT_VARIABLE out RESULT_VARIABLE rc OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(rc)
    message(FATAL_ERROR "probe failed with ${threads} thread(s): ${rc}")
  endif()
  message(STATUS "LOWBIT_NUM_THREADS=${threads}: ${out}")
  list(APPEND hashes "${out}")
endforeach()
list(REMOVE_DUPLICATES hashes)
list(LENGTH hashes distinct)
if(NOT distinct EQUAL 1)
  message(FATAL_ERROR "results depend on the thread count: ${hashes}")
endif()
