; Reconnect test ROM: programs COM1 at 115200 8N1 and prints numbered lines,
; "line 00000000", "line 00000001", ..., as fast as the UART takes them,
; forever. tests/tests/serial_reconnect.rs checks their order across a
; reconnection and that the count kept growing while nobody listened.
%define ROM_BLOCKS 1

%include "common.inc"
%include "serial.inc"

rom_init:
    ; No interrupts: SeaBIOS's serial console (sercon) would otherwise
    ; poll COM1 from its timer interrupt and take our input.
    cli
    mov dx, 0x3f8
    mov bx, 1
    mov cl, 0x03
    call uart_init
    xor ebp, ebp
.line:
    mov si, prefix
    call puts_at
    ; Eight decimal digits of EBP, most significant first.
    mov eax, ebp
    mov ebx, 10
    mov cx, 8
.digit:
    xor edx, edx
    div ebx
    push dx
    loop .digit
    mov dx, 0x3f8
    mov cx, 8
.print:
    pop ax
    add al, '0'
    call putc_at
    loop .print
    mov al, 13
    call putc_at
    mov al, 10
    call putc_at
    inc ebp
    jmp .line

prefix: db "line ", 0

times ROM_BLOCKS*512-($-$$) db 0
