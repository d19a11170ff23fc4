/* Real-mode raw image: prints a greeting through the 8250 and halts.
 * The VMM loads it at 0x1000 and starts it at CS=0x100, IP=0. */
    .code16
    .globl _start
_start:
    mov %cs, %ax
    mov %ax, %ds
    mov $message, %si
next:
    lodsb
    test %al, %al
    jz done
    mov %al, %bl
    mov $0x3fd, %dx          /* LSR */
wait_thre:
    in %dx, %al
    test $0x20, %al          /* THRE: transmitter holding register empty */
    jz wait_thre
    mov $0x3f8, %dx          /* THR */
    mov %bl, %al
    out %al, %dx
    jmp next
done:
    cli
    hlt
    jmp done

message:
    .asciz "Hello from real mode\n"
