; A boot sector for the VNC benchmark (tests/src/bin/bench_vnc.rs): sets
; VGA mode 13h (320x200, 256 colours, chain-4) with INT 10h, says
; "redraw: ready" on COM1, then redraws the whole screen forever with
; interrupts off: in frame f, row y is filled with colour (y + f) & 255
; (the VGA BIOS's default palette), so every frame changes every pixel.
; After each frame it sends one "." to COM1, so the host can count the
; frames the guest drew.
%include "boot.inc"

main:
    mov ax, 0x0013
    int 0x10
    cli
    mov si, ready
    mov dx, 0x3f8
.say:
    lodsb
    test al, al
    jz .draw
    out dx, al
    jmp .say

.draw:
    mov ax, 0xa000
    mov es, ax
    xor bp, bp                  ; frame number
.frame:
    xor di, di
    xor bx, bx                  ; y
.row:
    mov al, bl
    add ax, bp                  ; (y + f) & 255 in al
    mov ah, al
    mov dx, ax
    shl eax, 16
    mov ax, dx                  ; the colour in all four bytes
    mov cx, 320 / 4
    rep stosd
    inc bx
    cmp bx, 200
    jb .row
    mov dx, 0x3f8
    mov al, '.'
    out dx, al
    inc bp
    jmp .frame

ready:  db "redraw: ready", 13, 10, 0

    times 510 - ($ - $$) db 0
    dw 0xaa55
