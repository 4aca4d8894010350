# mlkv_gtest(area): one GoogleTest binary from every *_test.cpp of the calling directory.
# The interop tests (transformers, lm-eval, TensorBoard) run Python: $MLKV_PYTHON at test time
# (scripts/test.sh sets it from scripts/python_env.sh), else this cache variable.
set(MLKV_PYTHON "" CACHE FILEPATH "Python with torch, transformers, lm-eval and tensorboard (scripts/python_env.sh)")
function(mlkv_gtest area)
  file(GLOB _srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*_test.cpp)
  if(NOT _srcs)
    return()
  endif()
  add_executable(test_${area} ${_srcs})
  target_link_libraries(test_${area} PRIVATE mlkv GTest::gtest GTest::gtest_main)
  target_compile_definitions(test_${area} PRIVATE
      MLKV_SOURCE_DIR="${CMAKE_SOURCE_DIR}" MLKV_BINARY_DIR="${CMAKE_BINARY_DIR}" MLKV_PYTHON_DEFAULT="${MLKV_PYTHON}")
  gtest_discover_tests(test_${area} DISCOVERY_TIMEOUT 60 PROPERTIES LABELS ${area})
endfunction()
