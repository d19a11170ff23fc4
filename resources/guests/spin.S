/* Hostile guest: says so, then spins forever without exiting to the VMM.
 * Only a signal to the VMM ends it. */
    .code64
    .globl _start
_start:
    lea message(%rip), %rsi
    call puts
1:  jmp 1b

#include "serial64.inc"

message:
    .asciz "spinning\n"
