//! vCPU register state for entering a directly booted kernel in 64-bit
//! mode (the firmware path starts from the reset state KVM provides).

use anyhow::Context;
use kvm_bindings::{kvm_fpu, kvm_segment};
use kvm_ioctls::VcpuFd;
use rehost_boot::linux::{LinuxEntry, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Local APIC LVT registers and delivery modes (Intel SDM vol. 3, 11.5.1).
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn segment(selector: u16, type_: u8, code64: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!code64),
        s: 1,
        l: u8::from(code64),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts the boot vCPU in 64-bit mode at the kernel's entry point, with the
/// local APIC's LINT0 as ExtINT and LINT1 as NMI, as firmware would leave it.
pub fn enter_long_mode(vcpu: &VcpuFd, entry: &LinuxEntry) -> anyhow::Result<()> {
    let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
    sregs.cs = segment(CODE_SELECTOR, 0xb, true);
    let data = segment(DATA_SELECTOR, 0x3, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        s: 0,
        db: 0,
        ..segment(TSS_SELECTOR, 0xb, false)
    };
    sregs.gdt.base = entry.gdt_base;
    sregs.gdt.limit = entry.gdt_limit;
    sregs.idt.base = entry.idt_base;
    sregs.idt.limit = 7;
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
    sregs.cr3 = entry.cr3;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).context("KVM_SET_SREGS")?;

    let mut regs = vcpu.get_regs().context("KVM_GET_REGS")?;
    regs.rflags = 0x2;
    regs.rip = entry.rip;
    regs.rsp = entry.rsp;
    regs.rbp = entry.rsp;
    regs.rsi = entry.rsi;
    vcpu.set_regs(&regs).context("KVM_SET_REGS")?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).context("KVM_SET_FPU")?;

    let mut lapic = vcpu.get_lapic().context("KVM_GET_LAPIC")?;
    for (reg, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let mut v = [0u8; 4];
        for (i, b) in v.iter_mut().enumerate() {
            *b = lapic.regs[reg + i] as u8;
        }
        let value = (u32::from_le_bytes(v) & !0x700) | mode << 8;
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).context("KVM_SET_LAPIC")?;
    Ok(())
}
