; Serial throughput benchmark ROM: programs COM1 at 115200 8N1 with FIFOs,
; prints a start marker, then sends FLOOD_BYTES bytes (0, 1, ..., 255, 0,
; ...) as fast as the UART takes them, 16 per THR-empty as a FIFO driver
; does, then an end marker, and powers off. tests/src/bin/bench-serial.rs
; times the bytes between the markers.
%define ROM_BLOCKS 2
%define FLOOD_BYTES (512 * 1024)

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
    mov si, start_msg
    call puts_at
    mov ecx, FLOOD_BYTES / 16
    xor bl, bl
.burst:
    mov dx, 0x3fd
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    mov dx, 0x3f8
%rep 16
    mov al, bl
    out dx, al
    inc bl
%endrep
    dec ecx
    jnz .burst
    mov si, end_msg
    call puts_at
    call acpi_poweroff
    jmp stop

start_msg: db "rehost-flood: start", 13, 10, 0
end_msg: db 13, 10, "rehost-flood: end", 13, 10, 0

times ROM_BLOCKS*512-($-$$) db 0
