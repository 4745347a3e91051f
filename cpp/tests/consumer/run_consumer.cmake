# ctest install_consumer: `cmake --install` the build into a fresh prefix,
# configure + build tests/consumer against it with find_package(deepid2),
# write fixture models (formats 1 and 2) and run both consumers on each.
# -D: BUILD_DIR, CONSUMER_SRC, FIXTURE_TOOL, CMAKE_GENERATOR
set(work ${BUILD_DIR}/consumer_test)
file(REMOVE_RECURSE ${work})
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message("${out}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${err}")
  endif()
endfunction()
run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${work}/prefix)
run(${CMAKE_COMMAND} -S ${CONSUMER_SRC} -B ${work}/build -G ${CMAKE_GENERATOR}
    -DCMAKE_PREFIX_PATH=${work}/prefix -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${work}/build -j 2)
run(${FIXTURE_TOOL} ${work}/model.safetensors)
run(${work}/build/consumer_cpp ${work}/model.safetensors)
run(${work}/build/consumer_c ${work}/model.safetensors)
# format 2: patch networks of different input shapes
run(${FIXTURE_TOOL} ${work}/mixed.safetensors --mixed)
run(${work}/build/consumer_cpp ${work}/mixed.safetensors)
run(${work}/build/consumer_c ${work}/mixed.safetensors)
