; rehost's own MBR boot code, written by `rehost p2v fix --mbr`.
;
; What any PC MBR does, and nothing else: the BIOS loads sector 0 at
; 0000:7C00 and jumps to it with the boot drive in DL. This code moves
; itself to 0000:0600, finds the one partition marked active (0x80) in the
; table at offset 0x1BE, reads that partition's first sector to 0000:7C00
; (INT 13h extensions by its LBA when the BIOS has them, else INT 13h
; function 02h by the entry's CHS address), checks the 0x55AA signature,
; and jumps to it with DL = the boot drive and DS:SI (and DS:BP) pointing
; at the active partition's table entry, the convention volume boot
; records rely on. Failures print a line through INT 10h and stop.
;
; Only bytes 0-439 are used: the disk signature, the partition table and
; the boot signature of the disk being fixed are kept. The code carries
; the marker "rehost-mbr", by which `rehost p2v check` recognises it.
;
; Assembled by nasm; boot/src/p2v/mbr_code.rs holds the bytes and a test
; checks that they equal what this source assembles to.

bits 16
org 0x0600

RELOC       equ 0x0600
LOAD        equ 0x7c00
TABLE       equ RELOC + 0x1be

start:
    cli
    xor ax, ax
    mov ss, ax
    mov sp, LOAD
    mov ds, ax
    mov es, ax
    sti
    cld
    mov si, LOAD
    mov di, RELOC
    mov cx, 256
    rep movsw
    jmp 0:relocated

relocated:
    mov [drive], dl
    ; The active partition: exactly the first entry with bit 7 set.
    mov si, TABLE
    mov cx, 4
.find:
    test byte [si], 0x80
    jnz found
    add si, 16
    loop .find
    mov si, msg_noactive
    jmp fail

found:
    mov [entry], si
    mov byte [tries], 3
read:
    ; INT 13h extensions present?
    mov ah, 0x41
    mov bx, 0x55aa
    mov dl, [drive]
    int 0x13
    jc .chs
    cmp bx, 0xaa55
    jne .chs
    test cl, 1
    jz .chs
    ; Read by LBA: a disk address packet for one sector to 0000:7C00.
    mov si, [entry]
    mov eax, [si + 8]
    mov [dap_lba], eax
    mov si, dap
    mov ah, 0x42
    mov dl, [drive]
    int 0x13
    jnc loaded
    jmp .retry
.chs:
    mov si, [entry]
    mov dh, [si + 1]
    mov cx, [si + 2]
    mov bx, LOAD
    mov ax, 0x0201
    mov dl, [drive]
    int 0x13
    jnc loaded
.retry:
    ; Reset the drive and try again, three times in all.
    xor ah, ah
    mov dl, [drive]
    int 0x13
    dec byte [tries]
    jnz read
    mov si, msg_read
    jmp fail

loaded:
    cmp word [LOAD + 510], 0xaa55
    je .go
    mov si, msg_nosig
    jmp fail
.go:
    mov si, [entry]
    mov bp, si
    mov dl, [drive]
    jmp 0:LOAD

; Prints the zero-terminated string at DS:SI and stops, with interrupts
; on so the firmware keeps running (its serial console mirror among it).
fail:
    lodsb
    test al, al
    jz .stop
    mov ah, 0x0e
    mov bx, 0x0007
    int 0x10
    jmp fail
.stop:
    sti
    hlt
    jmp .stop

msg_noactive: db "rehost-mbr: no active partition", 13, 10, 0
msg_read:     db "rehost-mbr: cannot read the active partition", 13, 10, 0
msg_nosig:    db "rehost-mbr: the active partition has no boot sector", 13, 10, 0

align 4
dap:        db 16, 0
            dw 1
            dw LOAD, 0
dap_lba:    dd 0, 0
drive:      db 0
tries:      db 0
entry:      dw 0

    times 440 - ($ - $$) db 0
