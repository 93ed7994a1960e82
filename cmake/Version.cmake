# Build identity for `parley version` and GET /version.
find_package(Git QUIET)
set(PARLEY_GIT_COMMIT "unknown")
if(GIT_FOUND AND EXISTS "${CMAKE_SOURCE_DIR}/.git")
  execute_process(COMMAND "${GIT_EXECUTABLE}" rev-parse --short=12 HEAD
    WORKING_DIRECTORY "${CMAKE_SOURCE_DIR}" OUTPUT_VARIABLE _commit
    OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _rc)
  if(_rc EQUAL 0 AND _commit)
    set(PARLEY_GIT_COMMIT "${_commit}")
  endif()
endif()
# Reconfigure (and so regenerate version.cpp, rebuilding one file) when HEAD moves: a commit
# rewrites the branch's ref file, a checkout rewrites .git/HEAD.
if(EXISTS "${CMAKE_SOURCE_DIR}/.git/HEAD")
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${CMAKE_SOURCE_DIR}/.git/HEAD")
  file(READ "${CMAKE_SOURCE_DIR}/.git/HEAD" _head)
  if(_head MATCHES "^ref: ([^\n]+)")
    set(_ref "${CMAKE_SOURCE_DIR}/.git/${CMAKE_MATCH_1}")
    if(EXISTS "${_ref}")
      set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${_ref}")
    endif()
  endif()
  if(EXISTS "${CMAKE_SOURCE_DIR}/.git/packed-refs")
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${CMAKE_SOURCE_DIR}/.git/packed-refs")
  endif()
endif()
