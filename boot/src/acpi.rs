//! ACPI tables (filled in below).
