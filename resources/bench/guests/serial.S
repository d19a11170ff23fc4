/* Serial throughput: BYTES bytes through the 8250 at 0x3f8, polling
 * LSR.THRE before each byte like a driver, as 64-byte lines (63 letters and
 * a newline); then the debug exit. */
#include "exits.inc"
    .code64
    .text
    .globl _start
_start:
    mov $(BYTES / 64), %ebx
1:  mov $63, %edi
    mov $'a', %al
2:  call putc
    inc %al
    cmp $'z', %al
    jbe 3f
    mov $'a', %al
3:  dec %edi
    jnz 2b
    mov $10, %al
    call putc
    dec %ebx
    jnz 1b
    mov $EXIT_SERIAL, %al
    out %al, $EXIT_PORT
4:  jmp 4b

#include "../../guests/serial64.inc"
#include "pvh64.inc"
