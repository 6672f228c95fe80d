; COM port test ROM: finds the UARTs at the four COM addresses (scratch
; register test), programs each at 115200 8N1 with FIFOs (COM2 at 57600
; 8N2, so a tty behind it shows distinctive settings), prints
; "rehost-echo: COMn ready" on each, then echoes what each port receives
; back on that port, letters in upper case. A '!' on any port prints
; "rehost-echo: bye" there and powers the machine off.
%define ROM_BLOCKS 2

%include "common.inc"
%include "serial.inc"

; BP bit n set: COMn+1 is present.
rom_init:
    ; No interrupts: SeaBIOS's serial console (sercon) would otherwise
    ; poll COM1 from its timer interrupt and take our input.
    cli
    xor bp, bp
    xor di, di                  ; port index * 2
.setup:
    mov dx, [cs:ports + di]
    call uart_present
    jnz .next_setup
    mov bx, 1
    mov cl, 0x03
    cmp di, 2
    jne .program
    mov bx, 2                   ; COM2: 57600 8N2
    mov cl, 0x07
.program:
    call uart_init
    mov ax, di
    shr ax, 1
    mov cx, ax
    mov ax, 1
    shl ax, cl
    or bp, ax
    mov si, ready1
    call puts_at
    mov al, cl
    add al, '1'
    call putc_at
    mov si, ready2
    call puts_at
.next_setup:
    add di, 2
    cmp di, 8
    jb .setup

.poll:
    xor di, di
.port:
    mov cx, di
    shr cx, 1
    mov ax, 1
    shl ax, cl
    test bp, ax
    jz .next_port
    mov dx, [cs:ports + di]
    add dx, 5
    in al, dx                   ; LSR
    sub dx, 5
    test al, 0x01
    jz .next_port
    in al, dx                   ; RBR
    cmp al, '!'
    je .bye
    cmp al, 'a'
    jb .echo
    cmp al, 'z'
    ja .echo
    sub al, 0x20
.echo:
    call putc_at
.next_port:
    add di, 2
    cmp di, 8
    jb .port
    jmp .poll

.bye:
    mov si, bye
    call puts_at
    call acpi_poweroff
    jmp stop

ports: dw 0x3f8, 0x2f8, 0x3e8, 0x2e8
ready1: db "rehost-echo: COM", 0
ready2: db " ready", 13, 10, 0
bye: db 13, 10, "rehost-echo: bye", 13, 10, 0

times ROM_BLOCKS*512-($-$$) db 0
