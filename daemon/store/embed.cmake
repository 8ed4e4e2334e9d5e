# Turns the Lua scripts into a C source file, so the daemon carries them
# and no installed file can drift from the binary.
# Usage: cmake -DOUT=file.c -DINPUTS="a.lua|b.lua" -P embed.cmake
string(REPLACE "|" ";" INPUTS "${INPUTS}")
set(body "/* Generated from the Lua files in daemon/store/scripts by daemon/store/embed.cmake. */\n")
foreach(in ${INPUTS})
  get_filename_component(name ${in} NAME_WE)
  file(READ ${in} hex HEX)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(APPEND body "const char script_${name}[] = {${bytes}0x00};\n")
endforeach()
file(WRITE ${OUT} "${body}")
