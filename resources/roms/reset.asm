; Test option ROM: prints a marker on COM1 during POST, then resets the
; machine through the PIIX3 reset control register (0xCF9).
%define ROM_BLOCKS 1

%include "common.inc"

rom_init:
    mov si, msg
    call puts
    mov dx, 0xcf9
    mov al, 0x02
    out dx, al
    mov al, 0x06
    out dx, al
    jmp stop

msg: db "rehost-test-rom: resetting the machine", 13, 10, 0

times ROM_BLOCKS*512-($-$$) db 0
