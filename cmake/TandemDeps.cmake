# Finds every third-party library with pkg-config (libunistring, which has none, by its
# header and library). A missing one stops the configure step with the Debian package that
# provides it (tools/setup.sh installs them all).
find_package(PkgConfig QUIET)
if(NOT PKG_CONFIG_FOUND)
    message(FATAL_ERROR "pkg-config not found: install the Debian package 'pkg-config' "
                        "(or run tools/setup.sh)")
endif()
find_package(Threads REQUIRED)

# tandem_require_pkg(<target-name> <pkg-config module> <debian package>)
function(tandem_require_pkg name module debpkg)
    pkg_check_modules(${name} QUIET IMPORTED_TARGET ${module})
    if(NOT ${name}_FOUND)
        message(FATAL_ERROR "missing dependency '${module}': install the Debian package "
                            "'${debpkg}' (apt-get install ${debpkg}) or run tools/setup.sh")
    endif()
    add_library(tdm::${name} ALIAS PkgConfig::${name})
    set(${name}_VERSION ${${name}_VERSION} PARENT_SCOPE)
    message(STATUS "Tandem: ${module} ${${name}_VERSION}")
endfunction()

tandem_require_pkg(ucx ucx libucx-dev)
tandem_require_pkg(ibverbs libibverbs libibverbs-dev)
tandem_require_pkg(zmq libzmq libzmq3-dev)
tandem_require_pkg(msgpack msgpack libmsgpack-dev)
tandem_require_pkg(microhttpd libmicrohttpd libmicrohttpd-dev)
tandem_require_pkg(jansson jansson libjansson-dev)
tandem_require_pkg(pcre2 libpcre2-8 libpcre2-dev)
tandem_require_pkg(xxhash libxxhash libxxhash-dev)
tandem_require_pkg(sodium libsodium libsodium-dev)

# libunistring (Unicode NFC for the tokenizer's normalizer) ships no pkg-config file on
# Debian: find its header and library directly.
find_path(UNISTRING_INCLUDE_DIR uninorm.h)
find_library(UNISTRING_LIBRARY unistring)
if(NOT UNISTRING_INCLUDE_DIR OR NOT UNISTRING_LIBRARY)
    message(FATAL_ERROR "missing dependency 'libunistring': install the Debian package "
                        "'libunistring-dev' (apt-get install libunistring-dev) or run "
                        "tools/setup.sh")
endif()
add_library(tdm_unistring INTERFACE IMPORTED GLOBAL)
set_target_properties(tdm_unistring PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${UNISTRING_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${UNISTRING_LIBRARY}")
add_library(tdm::unistring ALIAS tdm_unistring)
message(STATUS "Tandem: libunistring ${UNISTRING_LIBRARY}")

if(TANDEM_TESTS)
    tandem_require_pkg(cmocka cmocka libcmocka-dev)
endif()

set(TANDEM_UCX_VERSION ${ucx_VERSION})
