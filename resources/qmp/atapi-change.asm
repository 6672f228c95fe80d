; Test option ROM: CD-ROM medium change seen through real ATAPI packets, on
; whichever controller holds the CD: an ICH9 AHCI controller (8086:2922) at
; PCI 00:04.0 with an ATAPI port (PxSIG EB140101) is used first, otherwise
; the PIIX3 IDE secondary master (ports 0x170-0x177 and 0x376).
;
; It takes the machine over during POST and never returns to the firmware:
; interrupts stay off, it switches to 32-bit flat protected mode (its own
; GDT; AHCI's registers are above 1 MiB) and back to real mode only to
; power off through common.inc's acpi_poweroff.
;   IDE:  PACKET (A0h) with PIO data-in, nIEN set, status polled.
;   AHCI: the port is stopped and given a command list, received-FIS area
;         and command table in low memory (0x10000-0x10fff; buffers,
;         variables, GDT and stack take the rest of 0x10000-0x1ffff, which
;         the firmware does not need during POST); each packet is
;         a command header with the A bit, an H2D FIS with command A0h and
;         DMA set in Features, the CDB in ACMD and one PRD for data-in; it
;         is issued through PxCI bit 0 and completes when PxCI clears, or
;         fails with PxIS.TFES (then the port is restarted, as AHCI 1.3.1
;         section 6.2.2 asks). PxTFD gives the status and error registers.
; A CHECK CONDITION (status ERR) is followed by REQUEST SENSE: sense key =
; byte 2 bits 3:0, ASC = byte 12, ASCQ = byte 13. Delays and timeouts use
; the ACPI PM timer (PIIX4 PM base from PCI 00:01.3 config 0x40, + 8).
;
; Sequence: TEST UNIT READY until good (clearing the power-on unit
; attention); READ(10) of block 16 (2048 bytes); then TEST UNIT READY every
; 10 ms until a UNIT ATTENTION (sense key 6) shows the medium was changed,
; NOT READY (key 2, tray open or no medium) meanwhile being reported once
; per distinct sense; TEST UNIT READY until good; READ(10) of block 16
; again; power off.
;
; How the tests drive it: the CD holds medium one when the VM starts; after
; "waiting for medium change" the test swaps it through the monitor (QMP
; blockdev-change-medium {"id": "cd0", "filename": ..., "format": "raw"},
; optionally after an `eject`) and expects medium two's bytes and "done",
; then the VM's exit. COM1 lines, in order (MODE is ide or ahci, KK/AA/QQ
; a sense key, ASC and ASCQ in hex, HEX the block's first 16 bytes as 32
; upper-case hex digits; lines in [] appear zero or more times):
;   atapi-change: option ROM running
;   atapi-change: ahci 8086:2922 at 00:04.0, ATAPI on port NN      (AHCI)
;   atapi-change: ide secondary master is ATAPI, type 05           (IDE)
;   atapi-change: mode MODE
;   [atapi-change: initial sense KK asc AA ascq QQ]
;   atapi-change: initial ready
;   atapi-change: MODE block16 HEX
;   atapi-change: waiting for medium change
;   [atapi-change: not ready sense 02 asc 3A ascq QQ]
;   [atapi-change: unexpected sense KK asc AA ascq QQ]
;   atapi-change: unit attention sense 06 asc 28 ascq 00
;   [atapi-change: after-change sense KK asc AA ascq QQ]
;   atapi-change: after-change ready
;   atapi-change: MODE after-change block16 HEX
;   atapi-change: done
; A failure prints "atapi-change: FAILED <what>" and powers off without
; "done"; "atapi-change: power-off did not happen" follows if that fails.
%define ROM_BLOCKS 7

%include "common.inc"

; Low memory used once the firmware has been left behind (all physical).
AHCI_CLB    equ 0x10000         ; command list (1 KiB aligned), slot 0 only
AHCI_FB     equ 0x10400         ; received FIS area (256-byte aligned)
AHCI_CT     equ 0x10800         ; command table (128-byte aligned)
DATA_BUF    equ 0x11000         ; READ(10) data, 2048 bytes
SENSE_BUF   equ 0x12000         ; REQUEST SENSE data, 18 bytes
IDENT_BUF   equ 0x12200         ; IDENTIFY PACKET DEVICE data, 512 bytes
VARS        equ 0x13000
GDT_ADDR    equ 0x13800
STACK_TOP   equ 0x20000

v_rom_seg   equ VARS + 0x00     ; word: this ROM's real-mode segment
v_pm_base   equ VARS + 0x04     ; word: ACPI PM I/O base
v_mode      equ VARS + 0x08     ; MODE_IDE or MODE_AHCI
v_abar      equ VARS + 0x0c     ; AHCI register base
v_port      equ VARS + 0x10     ; the ATAPI port's registers
v_tstart    equ VARS + 0x14     ; PM timer at timer_start
v_last      equ VARS + 0x18     ; last sense printed (see tur_sense)
v_xfer      equ VARS + 0x1c     ; bytes the last packet command moved
v_room      equ VARS + 0x20     ; IDE: buffer bytes left
v_cdb       equ VARS + 0x40     ; the packet being sent, 12 bytes

MODE_IDE    equ 1
MODE_AHCI   equ 2

SEL_CODE32  equ 0x08            ; base = this ROM, 32-bit
SEL_DATA32  equ 0x10            ; base 0, 4 GiB
SEL_CODE16  equ 0x18            ; base = this ROM, 16-bit, for the way back
SEL_DATA16  equ 0x20            ; base 0, 64 KiB

PM_TMR      equ 8               ; PM timer: PM base + 8, 3.579545 MHz, 24 bits
TICKS_10MS  equ 35795
TICKS_1S    equ 3579545
TICKS_3S    equ 10738635        ; under the timer's 4.7 s wrap

IDE_CMD     equ 0x170           ; secondary channel command block
IDE_CTL     equ 0x376           ; alternate status / device control
ST_BSY      equ 0x80
ST_DRQ      equ 0x08
ST_ERR      equ 0x01            ; CHECK CONDITION for a packet command

AHCI_PCI    equ 0x80000000 | (4 << 11)      ; config address of 00:04.0
ATAPI_SIG   equ 0xeb140101
P_CLB       equ 0x00            ; AHCI port registers
P_FB        equ 0x08
P_IS        equ 0x10
P_IE        equ 0x14
P_CMD       equ 0x18
P_TFD       equ 0x20
P_SIG       equ 0x24
P_SSTS      equ 0x28
P_SERR      equ 0x30
P_CI        equ 0x38
CMD_ST      equ 1 << 0
CMD_FRE     equ 1 << 4
CMD_FR      equ 1 << 14
CMD_CR      equ 1 << 15
CMD_ATAPI   equ 1 << 24
IS_TFES     equ 1 << 30

; say: prints the string at ROM offset %1 (32-bit code).
%macro say 1
    mov esi, %1
    call puts32
%endmacro

; ---------------------------------------------------------------- real mode
rom_init:
    cli
    cld
    mov si, msg_start
    call puts

    ; GDT and its pointer at GDT_ADDR, through ES.
    mov ax, GDT_ADDR >> 4
    mov es, ax
    xor di, di
    xor eax, eax
    stosd
    stosd
    xor ebx, ebx
    mov bx, cs
    shl ebx, 4
    mov ecx, 0xffff
    mov ax, 0x409a              ; D=1, byte granular; code, readable
    call make_desc
    push ebx
    xor ebx, ebx
    mov ecx, 0xfffff
    mov ax, 0xc092              ; D=1, 4 KiB granular; data, writable
    call make_desc
    pop ebx
    mov ecx, 0xffff
    mov ax, 0x009a              ; 16-bit code
    call make_desc
    xor ebx, ebx
    mov ax, 0x0092              ; 16-bit data
    call make_desc
    mov word [es:di], 5 * 8 - 1
    mov dword [es:di + 2], GDT_ADDR
    o32 lgdt [es:di]

    mov ax, VARS >> 4
    mov es, ax
    mov [es:v_rom_seg - VARS], cs

    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp dword SEL_CODE32:pm_entry

; make_desc: writes a GDT entry at ES:DI (DI += 8): EBX = base, ECX = limit
; (20 bits), AL = access byte, AH = flags (G, D/B) in bits 7:4.
make_desc:
    mov [es:di], cx
    mov [es:di + 2], bx
    push ebx
    shr ebx, 16
    mov [es:di + 4], bl
    mov [es:di + 5], al
    push ecx
    shr ecx, 16
    and cl, 0x0f
    or cl, ah
    mov [es:di + 6], cl
    pop ecx
    mov [es:di + 7], bh
    pop ebx
    add di, 8
    ret

; Back from 32-bit protected mode (BX = this ROM's segment): 64 KiB
; segments, PE off, a real-mode stack and CS, then common.inc's power-off.
pm16_entry:
    mov ax, SEL_DATA16
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov eax, cr0
    and al, 0xfe
    mov cr0, eax
    mov ax, (STACK_TOP >> 4) - 0x1000
    mov ss, ax
    mov sp, 0xfff0
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    push bx
    push word rm_poweroff
    retf
rm_poweroff:
    call acpi_poweroff
    ; A VMM may act on the request a little later (QEMU lets the vCPU run
    ; on for a moment): give it a second on the PM timer before saying so.
    mov ax, VARS >> 4
    mov ds, ax
    mov dx, [v_pm_base - VARS]
    add dx, PM_TMR
    in eax, dx
    mov ecx, eax
.wait:
    in eax, dx
    sub eax, ecx
    and eax, 0x00ffffff
    cmp eax, TICKS_1S
    jb .wait
    mov si, msg_still
    call puts
    jmp stop

; ------------------------------------------------------ 32-bit protected mode
    bits 32
pm_entry:
    mov ax, SEL_DATA32
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov esp, STACK_TOP
    cld

    ; PIIX4 PM base, for the PM timer and the power-off.
    mov eax, 0x80000b40
    call pci_read32
    and eax, 0xffc0
    mov [v_pm_base], eax
    jnz .have_pm
    say msg_no_pm
    jmp power_off
.have_pm:

    call ahci_probe
    jc .try_ide
    mov dword [v_mode], MODE_AHCI
    call ahci_port_start
    jnc .have_mode
    mov esi, msg_f_port
    jmp fail
.try_ide:
    call ide_probe
    jnc .ide
    mov esi, msg_f_nodev
    jmp fail
.ide:
    mov dword [v_mode], MODE_IDE
.have_mode:
    say msg_mode
    call print_mode
    call newline32

    ; 1) Ready: a fresh device reports a unit attention (power on, reset
    ; or medium change) first; print each distinct sense on the way.
    mov esi, msg_initial
    call wait_ready
    jc fail

    ; 2) Block 16 of medium one.
    call read_block16
    jc fail
    say msg_prefix
    call print_mode
    say msg_block16
    call print_data16
    call newline32

    ; 3) and 4) Poll until the unit attention that reports the change.
    say msg_waiting
    mov dword [v_last], 0
.poll:
    call tur_sense
    mov esi, msg_f_tur
    jc fail
    test edx, edx
    jz .next                    ; still ready: no change yet
    cmp dl, 6
    je .attention
    cmp edx, [v_last]
    je .next                    ; reported already
    mov [v_last], edx
    mov esi, msg_notready
    cmp dl, 2
    je .report
    mov esi, msg_unexpected
.report:
    call puts32
    call print_sense
    call newline32
.next:
    call delay_10ms
    jmp .poll
.attention:
    say msg_attention
    call print_sense
    call newline32

    ; 5) Ready again, then block 16 of medium two.
    mov esi, msg_after
    call wait_ready
    jc fail
    call read_block16
    jc fail
    say msg_prefix
    call print_mode
    say msg_after_block
    call print_data16
    call newline32

    ; 6)
    say msg_done
    jmp power_off

; fail: prints "atapi-change: FAILED " and the string at ESI, powers off.
fail:
    push esi
    say msg_failed
    pop esi
    call puts32
    call newline32
power_off:
    movzx ebx, word [v_rom_seg]
    jmp SEL_CODE16:pm16_entry

; wait_ready: TEST UNIT READY (and REQUEST SENSE) every 10 ms until good,
; for up to 10 s; ESI = the word the lines start with ("initial"). Prints
; "atapi-change: WORD sense .." per distinct sense, then
; "atapi-change: WORD ready". CF and ESI = reason on failure.
wait_ready:
    push esi
    mov dword [v_last], 0
    mov ecx, 1000
.again:
    push ecx
    call tur_sense
    pop ecx
    jc .fail
    test edx, edx
    jz .ready
    cmp edx, [v_last]
    je .wait
    mov [v_last], edx
    say msg_prefix
    mov esi, [esp]
    call puts32
    say msg_space
    call print_sense
    call newline32
.wait:
    call delay_10ms
    loop .again
    pop esi
    mov esi, msg_f_never
    stc
    ret
.ready:
    say msg_prefix
    mov esi, [esp]
    call puts32
    say msg_ready
    pop esi
    clc
    ret
.fail:
    pop esi
    mov esi, msg_f_tur
    stc
    ret

; tur_sense: TEST UNIT READY; EDX = 0 when it passes. On CHECK CONDITION,
; REQUEST SENSE and EDX = 0x01000000 | ASCQ << 16 | ASC << 8 | key. CF on
; a transport failure.
tur_sense:
    mov esi, cdb_tur
    xor ecx, ecx
    mov edi, DATA_BUF
    call atapi
    jc .out
    xor edx, edx
    test al, ST_ERR
    jz .out
    call request_sense
.out:
    ret

; request_sense: EDX as tur_sense's from 18 bytes of sense data; CF on
; failure (the command itself reporting CHECK CONDITION counts).
request_sense:
    mov edi, SENSE_BUF
    mov ecx, 20
    xor al, al
    rep stosb
    mov esi, cdb_sense
    mov edi, SENSE_BUF
    mov ecx, 18
    call atapi
    jc .out
    test al, ST_ERR
    jnz .bad
    movzx edx, byte [SENSE_BUF + 13]
    or edx, 0x100
    shl edx, 8
    mov dl, [SENSE_BUF + 12]
    shl edx, 8
    mov dl, [SENSE_BUF + 2]
    and dl, 0x0f
    clc
.out:
    ret
.bad:
    stc
    ret

; read_block16: READ(10) of block 16 into DATA_BUF (cleared first); CF and
; ESI = reason unless it passed with 2048 bytes moved.
read_block16:
    mov edi, DATA_BUF
    mov ecx, 2048 / 4
    xor eax, eax
    rep stosd
    mov esi, cdb_read16
    mov edi, DATA_BUF
    mov ecx, 2048
    call atapi
    mov esi, msg_f_read
    jc .bad
    test al, ST_ERR
    jnz .check
    cmp dword [v_xfer], 2048
    mov esi, msg_f_short
    jne .bad
    clc
    ret
.check:
    call request_sense
    mov esi, msg_f_read
    jc .bad
    say msg_prefix
    say msg_readerr
    call print_sense
    call newline32
    mov esi, msg_f_read
.bad:
    stc
    ret

; atapi: sends the 12-byte CDB at ROM offset ESI as a packet command with
; up to ECX bytes of data in to physical EDI. Returns AL = status (ST_ERR
; set on CHECK CONDITION), AH = error register (sense key in bits 7:4),
; [v_xfer] = bytes moved; CF on a timeout or protocol failure.
atapi:
    push edi
    push ecx
    mov edi, v_cdb
    mov ecx, 12
.copy:
    cs lodsb
    stosb
    loop .copy
    pop ecx
    pop edi
    mov dword [v_xfer], 0
    cmp dword [v_mode], MODE_AHCI
    je ahci_packet
    jmp ide_packet

; ------------------------------------------------------------------- IDE
; ide_select: the secondary master, with interrupts off (nIEN).
ide_select:
    mov dx, IDE_CMD + 6
    mov al, 0xa0
    out dx, al
    call ide_delay
    mov dx, IDE_CTL
    mov al, 0x02
    out dx, al
    ret

; ide_delay: 400 ns for the status to become valid (four status reads).
ide_delay:
    push ecx
    mov dx, IDE_CTL
    mov ecx, 4
.read:
    in al, dx
    loop .read
    pop ecx
    ret

; ide_wait: until BSY clears, up to 3 s; AL = status (alternate). CF on
; timeout.
ide_wait:
    call timer_start
.poll:
    mov dx, IDE_CTL
    in al, dx
    test al, ST_BSY
    jz .ok
    call timer_check
    jnc .poll
    ret
.ok:
    clc
    ret

; ide_probe: IDENTIFY PACKET DEVICE on the secondary master; CF unless
; it answers as an ATAPI device (word 0 bits 15:14 = 10b).
ide_probe:
    mov dx, IDE_CMD + 7
    in al, dx
    cmp al, 0xff                ; nothing drives the bus
    je .none
    call ide_select
    call ide_wait
    jc .none
    mov dx, IDE_CMD + 7
    mov al, 0xa1
    out dx, al
    call ide_delay
    call ide_wait
    jc .none
    mov dx, IDE_CMD + 7
    in al, dx
    test al, ST_ERR
    jnz .none
    test al, ST_DRQ
    jz .none
    mov edi, IDENT_BUF
    mov ecx, 256
    mov dx, IDE_CMD
    rep insw
    call ide_delay
    call ide_wait
    mov dx, IDE_CMD + 7
    in al, dx
    mov ax, [IDENT_BUF]
    and ax, 0xc000
    cmp ax, 0x8000
    jne .none
    say msg_ide_found
    mov al, [IDENT_BUF + 1]
    and al, 0x1f
    call print_hex8
    call newline32
    clc
    ret
.none:
    stc
    ret

; ide_packet: atapi's IDE half. PIO data-in, byte count limit 2048.
ide_packet:
    mov [v_room], ecx
    call ide_select
    call ide_wait
    jc .timeout
    mov dx, IDE_CMD + 1         ; Features: PIO, no overlap
    xor al, al
    out dx, al
    mov dx, IDE_CMD + 2
    out dx, al
    mov dx, IDE_CMD + 4         ; byte count limit
    out dx, al
    mov dx, IDE_CMD + 5
    mov al, 0x08
    out dx, al
    mov dx, IDE_CMD + 7
    mov al, 0xa0
    out dx, al
    call ide_delay
    call ide_wait
    jc .timeout
    test al, ST_ERR
    jnz .end
    test al, ST_DRQ
    jz .protocol
    mov esi, v_cdb
    mov ecx, 6
    mov dx, IDE_CMD
    rep outsw
.phase:
    call ide_delay
    call ide_wait
    jc .timeout
    test al, ST_ERR
    jnz .end
    test al, ST_DRQ
    jz .end
    ; A data block: its length is in LBA mid/high. Bytes beyond the
    ; buffer are read and dropped.
    mov dx, IDE_CMD + 5
    in al, dx
    mov ah, al
    dec dx
    in al, dx
    movzx ecx, ax
    inc ecx
    shr ecx, 1
    jz .protocol
    mov dx, IDE_CMD
.word:
    in ax, dx
    cmp dword [v_room], 2
    jb .drop
    stosw
    sub dword [v_room], 2
    add dword [v_xfer], 2
.drop:
    loop .word
    jmp .phase
.end:
    mov dx, IDE_CMD + 1
    in al, dx
    mov ah, al
    mov dx, IDE_CMD + 7         ; the status register, which acknowledges
    in al, dx
    clc
    ret
.protocol:
.timeout:
    stc
    ret

; ------------------------------------------------------------------ AHCI
; ahci_probe: CF unless 8086:2922 sits at 00:04.0 with an ATAPI device on
; one of its implemented ports; then [v_abar], [v_port] are set.
ahci_probe:
    mov eax, AHCI_PCI
    call pci_read32
    cmp eax, 0x29228086
    jne .none
    ; Memory space and bus master on (the firmware normally did this).
    mov eax, AHCI_PCI | 0x04
    call pci_read32
    and eax, 0xffff             ; do not write status bits back
    or eax, 0x06
    mov ebx, eax
    mov eax, AHCI_PCI | 0x04
    call pci_write32
    mov eax, AHCI_PCI | 0x24    ; BAR5: ABAR
    call pci_read32
    and eax, 0xfffffff0
    mov [v_abar], eax
    mov ebx, eax
    ; AHCI mode on, its interrupt off.
    mov eax, [ebx + 0x04]
    or eax, 0x80000000
    and eax, ~2
    mov [ebx + 0x04], eax
    mov esi, [ebx + 0x0c]       ; PI: implemented ports
    xor ecx, ecx
.port:
    bt esi, ecx
    jnc .next
    mov edx, ecx
    shl edx, 7
    lea edx, [ebx + edx + 0x100]
    mov eax, [edx + P_SSTS]
    and eax, 0x0f
    cmp eax, 3                  ; DET: device present, link up
    jne .next
    cmp dword [edx + P_SIG], ATAPI_SIG
    je .found
.next:
    inc ecx
    cmp ecx, 32
    jb .port
    say msg_ahci_noport
.none:
    stc
    ret
.found:
    mov [v_port], edx
    say msg_ahci_found
    mov al, cl
    call print_hex8
    call newline32
    clc
    ret

; ahci_stop: clears PxCMD.ST and waits for CR, then FRE and FR (EBX =
; port registers). CF on timeout.
ahci_stop:
    mov eax, [ebx + P_CMD]
    and eax, ~CMD_ST
    mov [ebx + P_CMD], eax
    mov ecx, CMD_CR
    call ahci_wait_cmd_clear
    jc .out
    mov eax, [ebx + P_CMD]
    and eax, ~CMD_FRE
    mov [ebx + P_CMD], eax
    mov ecx, CMD_FR
    call ahci_wait_cmd_clear
.out:
    ret

; ahci_wait_cmd_clear: until PxCMD & ECX is 0, up to 3 s; CF on timeout.
ahci_wait_cmd_clear:
    call timer_start
.poll:
    test [ebx + P_CMD], ecx
    jz .ok
    call timer_check
    jnc .poll
    ret
.ok:
    clc
    ret

; ahci_port_start: takes the port over from the firmware: stops it, gives
; it our command list and FIS area, clears its errors and starts it
; (FRE, then ST once the device is not busy). CF on failure.
ahci_port_start:
    mov ebx, [v_port]
    call ahci_stop
    jc .out
    mov edi, AHCI_CLB
    mov ecx, 0x1000 / 4
    xor eax, eax
    rep stosd
    mov dword [ebx + P_CLB], AHCI_CLB
    mov dword [ebx + P_CLB + 4], 0
    mov dword [ebx + P_FB], AHCI_FB
    mov dword [ebx + P_FB + 4], 0
    mov dword [ebx + P_IE], 0
    mov eax, [ebx + P_CMD]
    or eax, CMD_FRE
    mov [ebx + P_CMD], eax
    call ahci_start
.out:
    ret

; ahci_start: clears PxSERR and PxIS, waits for BSY and DRQ in PxTFD to
; clear, sets PxCMD.ST (and ATAPI, as drivers do for packet devices).
ahci_start:
    mov dword [ebx + P_SERR], 0xffffffff
    mov dword [ebx + P_IS], 0xffffffff
    call timer_start
.busy:
    mov eax, [ebx + P_TFD]
    test al, ST_BSY | ST_DRQ
    jz .idle
    call timer_check
    jnc .busy
    ret
.idle:
    mov eax, [ebx + P_CMD]
    or eax, CMD_ST | CMD_ATAPI
    mov [ebx + P_CMD], eax
    clc
    ret

; ahci_packet: atapi's AHCI half, in command slot 0 with DMA data-in.
ahci_packet:
    mov ebx, [v_port]
    ; Command header: CFL 5 dwords, A (ATAPI), one PRD if data moves.
    mov eax, 5 | (1 << 5)
    test ecx, ecx
    jz .header
    or eax, 1 << 16
.header:
    mov [AHCI_CLB], eax
    mov dword [AHCI_CLB + 4], 0             ; PRDBC, the HBA counts
    mov dword [AHCI_CLB + 8], AHCI_CT
    mov dword [AHCI_CLB + 12], 0
    push edi
    push ecx
    mov edi, AHCI_CT
    mov ecx, 0x90 / 4
    xor eax, eax
    rep stosd
    pop ecx
    pop edi
    ; H2D register FIS: C bit, PACKET, Features.DMA when data moves, the
    ; byte count limit in LBA mid/high (used by PIO only).
    mov byte [AHCI_CT + 0], 0x27
    mov byte [AHCI_CT + 1], 0x80
    mov byte [AHCI_CT + 2], 0xa0
    test ecx, ecx
    setnz byte [AHCI_CT + 3]
    mov byte [AHCI_CT + 6], 0x08
    ; ACMD: the CDB.
    mov eax, [v_cdb]
    mov [AHCI_CT + 0x40], eax
    mov eax, [v_cdb + 4]
    mov [AHCI_CT + 0x44], eax
    mov eax, [v_cdb + 8]
    mov [AHCI_CT + 0x48], eax
    ; PRD 0: the buffer, byte count - 1.
    mov [AHCI_CT + 0x80], edi
    lea eax, [ecx - 1]
    mov [AHCI_CT + 0x8c], eax

    mov dword [ebx + P_IS], 0xffffffff
    mov dword [ebx + P_CI], 1
    call timer_start
.poll:
    mov eax, [ebx + P_IS]
    test eax, IS_TFES
    jnz .error
    mov eax, [ebx + P_CI]
    test al, 1
    jz .done
    call timer_check
    jnc .poll
    ret
.done:
    mov eax, [AHCI_CLB + 4]
    mov [v_xfer], eax
    mov eax, [ebx + P_TFD]
    clc
    ret
.error:
    ; Task file error (CHECK CONDITION): the HBA stops on it; restart the
    ; port (ST off, wait CR, clear errors, ST on) before the next command.
    mov eax, [ebx + P_TFD]
    push eax
    call ahci_stop_st
    jc .stuck
    call ahci_start
    jc .stuck
    pop eax
    or al, ST_ERR
    clc
    ret
.stuck:
    pop eax
    stc
    ret

; ahci_stop_st: clears PxCMD.ST only and waits for CR.
ahci_stop_st:
    mov eax, [ebx + P_CMD]
    and eax, ~CMD_ST
    mov [ebx + P_CMD], eax
    mov ecx, CMD_CR
    jmp ahci_wait_cmd_clear

; ----------------------------------------------------------------- helpers
; pci_read32: EAX = config mechanism #1 address; returns the dword.
pci_read32:
    push edx
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    pop edx
    ret

; pci_write32: EAX = address, EBX = value.
pci_write32:
    push edx
    mov dx, 0xcf8
    out dx, eax
    mov eax, ebx
    mov dx, 0xcfc
    out dx, eax
    pop edx
    ret

; pm_timer: EAX = the ACPI PM timer (24 bits).
pm_timer:
    push edx
    mov dx, [v_pm_base]
    add dx, PM_TMR
    in eax, dx
    and eax, 0x00ffffff
    pop edx
    ret

timer_start:
    push eax
    call pm_timer
    mov [v_tstart], eax
    pop eax
    ret

; timer_check: CF once 3 s have passed since timer_start. Keeps registers.
timer_check:
    push eax
    call pm_timer
    sub eax, [v_tstart]
    and eax, 0x00ffffff
    cmp eax, TICKS_3S
    cmc
    pop eax
    ret

; delay_10ms: spins on the PM timer. Keeps registers.
delay_10ms:
    push eax
    push ecx
    call pm_timer
    mov ecx, eax
.spin:
    call pm_timer
    sub eax, ecx
    and eax, 0x00ffffff
    cmp eax, TICKS_10MS
    jb .spin
    pop ecx
    pop eax
    ret

; putc32: AL to COM1 once THR is empty.
putc32:
    push edx
    push eax
    mov dx, 0x3fd
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop eax
    mov dx, 0x3f8
    out dx, al
    pop edx
    ret

; puts32: the NUL-terminated string at ROM offset ESI.
puts32:
    push eax
.next:
    cs lodsb
    test al, al
    jz .done
    call putc32
    jmp .next
.done:
    pop eax
    ret

newline32:
    say msg_nl
    ret

; print_hex8: AL as two upper-case hex digits.
print_hex8:
    push eax
    shr al, 4
    call .nibble
    mov eax, [esp]
    call .nibble
    pop eax
    ret
.nibble:
    and al, 0x0f
    add al, '0'
    cmp al, '9'
    jbe .digit
    add al, 'A' - '0' - 10
.digit:
    jmp putc32

; print_mode: "ide" or "ahci".
print_mode:
    mov esi, name_ide
    cmp dword [v_mode], MODE_AHCI
    jne .print
    mov esi, name_ahci
.print:
    jmp puts32

; print_sense: "sense KK asc AA ascq QQ" from EDX as tur_sense returns it.
print_sense:
    say msg_sense
    mov al, dl
    call print_hex8
    say msg_asc
    mov al, dh
    call print_hex8
    say msg_ascq
    mov eax, edx
    shr eax, 16
    call print_hex8
    ret

; print_data16: DATA_BUF's first 16 bytes in hex.
print_data16:
    mov edi, DATA_BUF
    mov ecx, 16
.byte:
    mov al, [edi]
    call print_hex8
    inc edi
    loop .byte
    ret

cdb_tur:    db 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
cdb_sense:  db 0x03, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0
cdb_read16: db 0x28, 0, 0, 0, 0, 16, 0, 0, 1, 0, 0, 0   ; LBA 16, 1 block

msg_start:       db 13, 10, "atapi-change: option ROM running", 13, 10, 0
msg_still:       db "atapi-change: power-off did not happen", 13, 10, 0
msg_no_pm:       db "atapi-change: FAILED no PIIX4 PM base at 00:01.3", 13, 10, 0
msg_ahci_found:  db "atapi-change: ahci 8086:2922 at 00:04.0, ATAPI on port ", 0
msg_ahci_noport: db "atapi-change: ahci 8086:2922 at 00:04.0 has no ATAPI port", 13, 10, 0
msg_ide_found:   db "atapi-change: ide secondary master is ATAPI, type ", 0
msg_mode:        db "atapi-change: mode ", 0
msg_prefix:      db "atapi-change: ", 0
msg_initial:     db "initial", 0
msg_after:       db "after-change", 0
msg_space:       db " ", 0
msg_ready:       db " ready", 13, 10, 0
msg_block16:     db " block16 ", 0
msg_after_block: db " after-change block16 ", 0
msg_waiting:     db "atapi-change: waiting for medium change", 13, 10, 0
msg_notready:    db "atapi-change: not ready ", 0
msg_unexpected:  db "atapi-change: unexpected ", 0
msg_attention:   db "atapi-change: unit attention ", 0
msg_readerr:     db "READ(10) ", 0
msg_sense:       db "sense ", 0
msg_asc:         db " asc ", 0
msg_ascq:        db " ascq ", 0
msg_done:        db "atapi-change: done", 13, 10, 0
msg_failed:      db "atapi-change: FAILED ", 0
msg_f_port:      db "AHCI port did not stop or start", 0
msg_f_nodev:     db "no ATAPI device (AHCI 00:04.0 or IDE secondary master)", 0
msg_f_tur:       db "TEST UNIT READY or REQUEST SENSE did not complete", 0
msg_f_never:     db "the unit did not become ready in 10 s", 0
msg_f_read:      db "READ(10) of block 16", 0
msg_f_short:     db "READ(10) of block 16 moved other than 2048 bytes", 0
msg_nl:          db 13, 10, 0
name_ide:        db "ide", 0
name_ahci:       db "ahci", 0

times ROM_BLOCKS*512-($-$$) db 0
