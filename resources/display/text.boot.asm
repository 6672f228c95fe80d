; A boot sector for the VGA text-mode comparison: it leaves SeaBIOS's
; banner on the screen, writes one line of its own below it through the
; VGA BIOS (INT 10h AH=09h: a colour per character, the line-drawing
; characters B0h-DFh whose 9th column repeats the 8th, and characters
; below B0h whose 9th column is background), moves the cursor, prints
; "text: ready" on COM1 and halts with interrupts off, so the screen no
; longer changes except for the cursor's blink.
%include "boot.inc"

main:
    ; Row 20, column 0.
    mov ah, 0x02
    xor bh, bh
    mov dx, 0x1400
    int 0x10
    mov si, line
    mov bl, 0x1e                ; yellow on blue, then cycling
.next:
    lodsb
    test al, al
    jz .done
    mov ah, 0x09
    xor bh, bh
    mov cx, 1
    int 0x10
    ; advance the cursor one column
    mov ah, 0x03
    xor bh, bh
    int 0x10
    inc dl
    mov ah, 0x02
    int 0x10
    add bl, 0x11
    jmp .next
.done:
    ; Leave the cursor at row 22, column 5.
    mov ah, 0x02
    xor bh, bh
    mov dx, 0x1605
    int 0x10

    mov si, ready
    jmp ready_and_halt

line:   db "rehost VGA ", 0xb0, 0xb1, 0xb2, 0xc4, 0xc5, 0xcd, 0xdb, 0xdf, " ", 0x01, 0x03, 0x9b, 0xae, " text", 0
ready:  db "text: ready", 13, 10, 0

    times 510 - ($ - $$) db 0
    dw 0xaa55
