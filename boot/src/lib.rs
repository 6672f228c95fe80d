//! Firmware, fw_cfg, ACPI and direct Linux boot.
