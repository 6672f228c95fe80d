; A volume boot record for testing MBR boot code (resources/p2v/mbr.asm):
; loaded at 0000:7C00 by an MBR, it reports on COM1 what it was handed and
; powers the machine off:
;   vbr-probe: tag=T dl=XX entry=XXXXXXXX
; T is the byte at offset 0x1F0 of this sector (the test writes a
; different tag into each partition's copy, so the line says which
; partition was loaded), dl the boot drive, entry the starting LBA read
; from the partition table entry at DS:SI (the MBR convention).
    bits 16
    org 0x7c00

    ; SI (and DS) from the MBR are kept until the entry's LBA is read.
    mov eax, [si + 8]
    xor bx, bx
    mov ds, bx
    mov es, bx
    mov [lba], eax
    mov [drive], dl
    mov si, msg_tag
    call puts
    mov al, [tag]
    call putc
    mov si, msg_dl
    call puts
    mov al, [drive]
    call hex8
    mov si, msg_entry
    call puts
    mov eax, [lba]
    mov cx, 4
.lba:
    rol eax, 8
    call hex8
    loop .lba
    mov si, msg_end
    call puts
    ; Power off through the PIIX4's PM1a_CNT (PM base from PCI 00:01.3 0x40).
    mov dx, 0xcf8
    mov eax, 0x80000b40
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    and ax, 0xffc0
    add ax, 4
    mov dx, ax
    mov ax, 0x2000
    out dx, ax
    cli
.stop:
    hlt
    jmp .stop

; hex8: prints AL as two hex digits.
hex8:
    push ax
    shr al, 4
    call .digit
    pop ax
    push ax
    and al, 0x0f
    call .digit
    pop ax
    ret
.digit:
    add al, '0'
    cmp al, '9'
    jbe putc
    add al, 'a' - '0' - 10
; putc: sends AL to COM1 once its transmitter is empty.
putc:
    push dx
    push ax
    mov dx, 0x3fd
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop ax
    mov dx, 0x3f8
    out dx, al
    pop dx
    ret

; puts: sends the NUL-terminated string at DS:SI to COM1.
puts:
    lodsb
    test al, al
    jz .done
    call putc
    jmp puts
.done:
    ret

msg_tag:   db 13, 10, "vbr-probe: tag=", 0
msg_dl:    db " dl=", 0
msg_entry: db " entry=", 0
msg_end:   db 13, 10, 0
lba:       dd 0
drive:     db 0

    times 0x1f0 - ($ - $$) db 0
tag:
    db '?'
    times 510 - ($ - $$) db 0
    dw 0xaa55
