/* Peak RSS: touches one page of guest RAM at 64 MiB (the VMMs give it
 * 128 MiB), then the debug exit. */
#include "exits.inc"
    .code64
    .text
    .globl _start
_start:
    movb $1, 0x4000000
    mov $EXIT_MEMORY, %al
    out %al, $EXIT_PORT
1:  jmp 1b

#include "pvh64.inc"
