/* Start-up: prints one line through the 8250, then the debug exit. */
#include "exits.inc"
    .code64
    .text
    .globl _start
_start:
    lea message(%rip), %rsi
    call puts
    mov $EXIT_HELLO, %al
    out %al, $EXIT_PORT
1:  jmp 1b

#include "../../guests/serial64.inc"
#include "pvh64.inc"

message:
    .asciz "Hello from the bench guest\n"
