# ctest install_consumer: `cmake --install` the build into a fresh prefix,
# configure + build tests/consumer against it with find_package(deepid2),
# write fixture models (formats 1 and 2) and run both consumers on each.
# Then the README's photo_verdict on two LFW photographs (DATA_DIR/lfw) with
# the models `cmake --install` put beside the library: same, then different.
# -D: BUILD_DIR, CONSUMER_SRC, FIXTURE_TOOL, CMAKE_GENERATOR, DATA_DIR
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

# photo to verdict, no Python: the installed models found through find_package
set(lfw ${DATA_DIR}/lfw)
if(EXISTS ${work}/build/photo_verdict AND EXISTS ${lfw}/Aaron_Peirsol/Aaron_Peirsol_0001.jpg)
  foreach(pair "Aaron_Peirsol/Aaron_Peirsol_0002.jpg;same person" "Abdullah_Gul/Abdullah_Gul_0001.jpg;different people")
    list(GET pair 0 other)
    list(GET pair 1 want)
    execute_process(COMMAND ${CMAKE_COMMAND} -E env --unset=DEEPID2_MODELS ${work}/build/photo_verdict
      ${lfw}/Aaron_Peirsol/Aaron_Peirsol_0001.jpg ${lfw}/${other}
      RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    message("photo_verdict Aaron_Peirsol_0001 vs ${other}: ${out}${err}")
    if(NOT rc EQUAL 0 OR NOT out MATCHES "^${want}:")
      message(FATAL_ERROR "photo_verdict: expected '${want}', got (${rc}) ${out}${err}")
    endif()
  endforeach()
else()
  message("photo_verdict not run: no libjpeg/libpng, or no LFW at ${lfw}")
endif()
