/* PIO exit loop in real mode (raw image, loaded at 0x1000, CS = 0x100):
 * ITERATIONS writes to an unclaimed port, then the debug exit. */
#include "exits.inc"
    .code16
    .globl _start
_start:
    mov $LOOP_PORT, %dx
    mov $ITERATIONS, %ecx
1:  out %al, %dx
    dec %ecx
    jnz 1b
    mov $EXIT_PIO, %al
    out %al, $EXIT_PORT
2:  cli
    hlt
    jmp 2b
