# Turns web/status.html into a C source file, so reboundd serves the page it
# was built with and no installed file can drift from the binary.
# Usage: cmake -DIN=status.html -DOUT=file.c -P embed.cmake
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" nhex)
math(EXPR n "${nhex} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE ${OUT} "/* Generated from web/status.html by web/embed.cmake. */\n#include <stddef.h>\n"
  "extern const char web_status_html[];\nextern const size_t web_status_html_len;\n"
  "const char web_status_html[] = {${bytes}0x00};\nconst size_t web_status_html_len = ${n};\n")
